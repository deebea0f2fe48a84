/**
 * DKIM key handling (RFC 6376): key generation for `dkim-keygen`, the DNS TXT record
 * that publishes a key, and loading the signing key at start-up.
 *
 * Signing itself is done by nodemailer's DKIM signer (see compose.ts). That signer
 * only produces `a=rsa-sha256` signatures, so {@link loadDkimSigner} accepts RSA keys
 * only; {@link dkimTxtRecord} also understands Ed25519 keys (RFC 8463) so a key made
 * elsewhere can still be published.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";

/**
 * What nodemailer's DKIM signer needs for one signature (the `dkim` option shape).
 * `domainName` becomes `d=`, `keySelector` becomes `s=` (RFC 6376 §3.5).
 */
export interface DkimSigner {
  /** Signing domain (`d=`), normally `mail.domain`. */
  domainName: string;
  /** Selector (`s=`): the key is published at `<keySelector>._domainkey.<domainName>`. */
  keySelector: string;
  /** PEM (PKCS#8) RSA private key. Never log it. */
  privateKey: string;
}

/** Smallest RSA key accepted for signing, in bits (RFC 8301 §3.2: signers MUST use at least 1024; 2048 recommended). */
export const MIN_RSA_BITS = 1024;

/**
 * Generate a fresh RSA 2048-bit DKIM key pair (RFC 8301 §3.2 recommends 2048 bits).
 * @returns PKCS#8 private key PEM and SPKI public key PEM.
 */
export function generateDkimKey(): { privateKeyPem: string; publicKeyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", {
    modulusLength: 2048,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

/**
 * The DKIM key record to publish as TXT at `<selector>._domainkey.<domain>` (RFC 6376 §3.6.1).
 *
 * - RSA: `v=DKIM1; k=rsa; p=<base64 of the SubjectPublicKeyInfo DER>`.
 * - Ed25519: `v=DKIM1; k=ed25519; p=<base64 of the raw 32-byte public key>` (RFC 8463 §4.2).
 *
 * @param publicKeyPemOrPrivateKeyPem a PEM public key (SPKI or PKCS#1) or private key (PKCS#8/PKCS#1/SEC1).
 * @returns the TXT record value (may exceed 255 bytes; see dnsRecords.formatZone for splitting).
 * @throws Error if the text is not a PEM key, or the key type is neither RSA nor Ed25519.
 */
export function dkimTxtRecord(publicKeyPemOrPrivateKeyPem: string): string {
  const pub = toPublicKey(publicKeyPemOrPrivateKeyPem);
  switch (pub.asymmetricKeyType) {
    case "rsa": {
      const der = pub.export({ type: "spki", format: "der" });
      return `v=DKIM1; k=rsa; p=${der.toString("base64")}`;
    }
    case "ed25519": {
      const jwk = pub.export({ format: "jwk" });
      if (typeof jwk.x !== "string") throw new Error("Ed25519 public key has no x coordinate");
      const raw = Buffer.from(jwk.x, "base64url");
      return `v=DKIM1; k=ed25519; p=${raw.toString("base64")}`;
    }
    default:
      throw new Error(`DKIM keys must be RSA or Ed25519, got ${String(pub.asymmetricKeyType)}`);
  }
}

/**
 * Read the DKIM private key file and build the signer for `domain`/`selector`.
 *
 * @param file path of a PEM private key file (RSA, at least {@link MIN_RSA_BITS} bits).
 * @param domain signing domain (`d=`), normally `mail.domain`.
 * @param selector DKIM selector (`s=`).
 * @returns the signer, with the key re-encoded as PKCS#8 PEM.
 * @throws Error naming `file` when it is missing or unreadable, is not a PEM private key
 *   (e.g. a public key, a certificate or an encrypted key), is not RSA (nodemailer signs
 *   rsa-sha256 only), or is an RSA key shorter than {@link MIN_RSA_BITS} bits (RFC 8301 §3.2).
 */
export function loadDkimSigner(file: string, domain: string, selector: string): DkimSigner {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    throw new Error(`DKIM private key file ${file} cannot be read (${typeof code === "string" ? code : "error"}); create it with \`matrix-email-bridge dkim-keygen\``, { cause: err });
  }
  if (!/-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----/.test(text)) {
    throw new Error(`DKIM private key file ${file} does not hold a PEM private key`);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: text, format: "pem" });
  } catch (err) {
    throw new Error(`DKIM private key file ${file} does not hold a usable PEM private key (encrypted keys are not supported)`, { cause: err });
  }
  if (key.asymmetricKeyType !== "rsa") {
    throw new Error(`DKIM private key file ${file} holds a ${String(key.asymmetricKeyType)} key; only RSA keys can be used for signing (rsa-sha256)`);
  }
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (bits < MIN_RSA_BITS) {
    throw new Error(`DKIM private key file ${file} holds a ${bits}-bit RSA key; at least ${MIN_RSA_BITS} bits are required (RFC 8301)`);
  }
  const privateKey = key.export({ type: "pkcs8", format: "pem" }).toString();
  return { domainName: domain, keySelector: selector, privateKey };
}

/** Public KeyObject from a PEM public or private key. */
function toPublicKey(pem: string): KeyObject {
  try {
    if (/PRIVATE KEY-----/.test(pem)) return createPublicKey(createPrivateKey(pem));
    return createPublicKey(pem);
  } catch (err) {
    throw new Error("not a PEM public or private key", { cause: err });
  }
}
