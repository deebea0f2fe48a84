/**
 * App passwords for SMTP submission: minting a random password, and keeping only a salted
 * slow hash of it (scrypt, RFC 7914, through node:crypto), compared in constant time.
 *
 * Stored form: `scrypt$<N>$<r>$<p>$<salt, base64>$<derived key, base64>`; the cost parameters
 * travel with the hash, so raising them later keeps older hashes verifiable.
 */
import { randomBytes, randomInt, scrypt, timingSafeEqual, type ScryptOptions } from "node:crypto";

/** scrypt cost parameters: N = 2^14, r = 8, p = 1 (16 MiB, tens of ms per try). */
const COST = { N: 16_384, r: 8, p: 1 } as const;
/** Salt length, in bytes (RFC 8018 §4.1 asks for at least 8; 16 is usual). */
const SALT_BYTES = 16;
/** Derived key length, in bytes. */
const KEY_BYTES = 32;
/** Largest N a stored hash may ask for: bounds the memory an edited row could make us spend. */
const MAX_N = 1 << 20;

/** Letters and digits that cannot be mistaken for each other when read aloud or copied. */
const ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789";

/**
 * A new random app password: 20 characters in 4 groups of 5 (`abcde-fghjk-...`), about 99
 * bits of entropy from the CSPRNG.
 * @returns the password, to be shown once and then forgotten
 */
export function generateAppPassword(): string {
  const groups: string[] = [];
  for (let g = 0; g < 4; g++) {
    let group = "";
    for (let i = 0; i < 5; i++) group += ALPHABET[randomInt(ALPHABET.length)];
    groups.push(group);
  }
  return groups.join("-");
}

function derive(password: string, salt: Buffer, keyBytes: number, cost: { N: number; r: number; p: number }): Promise<Buffer> {
  const options: ScryptOptions = { N: cost.N, r: cost.r, p: cost.p, maxmem: 256 * cost.N * cost.r + 1024 * 1024 };
  return new Promise((resolve, reject) => {
    scrypt(password.normalize("NFC"), salt, keyBytes, options, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/**
 * Hash an app password for storage, with a fresh random salt.
 * @param password the password (any string; NFC-normalised before hashing)
 * @returns the stored form, `scrypt$N$r$p$salt$key`
 * @throws Error from node:crypto when scrypt cannot run (memory)
 */
export async function hashAppPassword(password: string): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const key = await derive(password, salt, KEY_BYTES, COST);
  return ["scrypt", COST.N, COST.r, COST.p, salt.toString("base64"), key.toString("base64")].join("$");
}

/** Thrown for a stored hash that is not of the form {@link hashAppPassword} writes. */
export class MalformedPasswordHashError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MalformedPasswordHashError";
  }
}

/**
 * Whether `password` is the one `stored` was made from, compared with `timingSafeEqual`.
 * @param stored a hash from {@link hashAppPassword}
 * @throws MalformedPasswordHashError when `stored` is not such a hash (a damaged row: the
 *   caller logs it, the login fails)
 */
export async function verifyAppPassword(password: string, stored: string): Promise<boolean> {
  const parts = stored.split("$");
  if (parts.length !== 6 || parts[0] !== "scrypt") throw new MalformedPasswordHashError("not an scrypt app password hash");
  const [N, r, p] = parts.slice(1, 4).map((x) => Number(x)) as [number, number, number];
  if (![N, r, p].every((x) => Number.isInteger(x) && x > 0) || N > MAX_N || (N & (N - 1)) !== 0 || r > 32 || p > 16) {
    throw new MalformedPasswordHashError("app password hash has unusable scrypt parameters");
  }
  const salt = Buffer.from(parts[4]!, "base64");
  const expected = Buffer.from(parts[5]!, "base64");
  if (salt.length < 8 || expected.length < 16) throw new MalformedPasswordHashError("app password hash has a short salt or key");
  const actual = await derive(password, salt, expected.length, { N, r, p });
  return timingSafeEqual(actual, expected);
}
