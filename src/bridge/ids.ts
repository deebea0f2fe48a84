/**
 * The only place where the bridge mints or parses identifiers:
 * email address ↔ ghost user ID, personal mailbox ↔ local Matrix user, Message-IDs.
 *
 * Ghost localparts use the Matrix spec's "Mapping from other character sets"
 * (Client-Server API, Appendices › Identifier Grammar › User Identifiers):
 * UTF-8 bytes; `A-Z` → `_` + lower case; `_` → `__`; every byte outside
 * `a-z 0-9 - . / +`, and `=` itself, → `=` + two lower-case hex digits.
 * So `bob@example.org` ↔ `email_bob=40example.org`. The mapping is injective,
 * and {@link decodeLocalpart} accepts only the canonical encoding, so no two
 * user IDs map to one address.
 */
import { randomBytes } from "node:crypto";
import { domainToASCII } from "node:url";

/** An address or user ID the bridge cannot map. The message says why. */
export class InvalidAddressError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InvalidAddressError";
  }
}

/** Max length of a full user ID in bytes (Matrix spec, Identifier Grammar). */
export const MAX_USER_ID_BYTES = 255;

const PLAIN = /^[a-z0-9\-./+]$/;

/**
 * Encode a string as a Matrix localpart with the spec's mapping.
 * @param s any string (encoded as UTF-8)
 * @returns the encoded localpart (characters `a-z 0-9 - . / + _ =` only)
 */
export function encodeLocalpart(s: string): string {
  let out = "";
  for (const byte of Buffer.from(s, "utf8")) {
    const ch = String.fromCharCode(byte);
    if (byte >= 0x41 && byte <= 0x5a) out += "_" + ch.toLowerCase();
    else if (ch === "_") out += "__";
    else if (byte < 0x80 && PLAIN.test(ch)) out += ch;
    else out += "=" + byte.toString(16).padStart(2, "0");
  }
  return out;
}

/**
 * Decode a localpart made by {@link encodeLocalpart}.
 * @returns the decoded string, or null when `s` is not a canonical encoding
 *   (stray `_`, upper-case or non-lower-case hex, an escaped byte that must be plain,
 *   invalid UTF-8): such IDs are not ghosts.
 */
export function decodeLocalpart(s: string): string | null {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    if (ch === "_") {
      const next = s[i + 1];
      if (next === "_") bytes.push(0x5f);
      else if (next !== undefined && next >= "a" && next <= "z") bytes.push(next.toUpperCase().charCodeAt(0));
      else return null;
      i++;
    } else if (ch === "=") {
      const hex = s.slice(i + 1, i + 3);
      if (!/^[0-9a-f]{2}$/.test(hex)) return null;
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else if (PLAIN.test(ch)) {
      bytes.push(ch.charCodeAt(0));
    } else {
      return null;
    }
  }
  const buf = Buffer.from(bytes);
  const text = new TextDecoder("utf-8", { fatal: false }).decode(buf);
  // Canonical check: re-encoding must give back the input (rejects "=61" for "a", bad UTF-8, ...).
  return encodeLocalpart(text) === s ? text : null;
}

/** Options for {@link normalizeAddress}. */
export interface NormalizeOptions {
  /** Keep the local part's case (RFC 5321 §2.4); default false: lower-case it. */
  caseSensitiveLocalparts?: boolean;
}

/**
 * Normalise an email address so that one mailbox has one spelling:
 * the domain is lower-cased and IDNs become A-labels (`bücher.example` → `xn--bcher-kva.example`),
 * a quoted local part that needs no quotes loses them (RFC 5321 §4.1.2), and the local part is
 * lower-cased unless `caseSensitiveLocalparts`.
 * @param input an addr-spec such as `Bob@Example.ORG` or `"john doe"@example.org` (no display name, no `<>`)
 * @returns the normalised address
 * @throws InvalidAddressError when the input is not a usable mailbox address
 */
export function normalizeAddress(input: string, opts: NormalizeOptions = {}): string {
  const s = input.trim();
  const at = s.lastIndexOf("@");
  if (at <= 0 || at === s.length - 1) throw new InvalidAddressError(`not an email address: ${JSON.stringify(input)}`);
  let local = s.slice(0, at);
  const rawDomain = s.slice(at + 1);
  if (/[\s<>()\[\]\\,;:@"]/.test(rawDomain)) throw new InvalidAddressError(`bad domain in ${JSON.stringify(input)}`);
  const domain = domainToASCII(rawDomain.toLowerCase());
  if (!domain || !/^[a-z0-9-]+(\.[a-z0-9-]+)+$/.test(domain)) {
    throw new InvalidAddressError(`bad domain in ${JSON.stringify(input)}`);
  }
  if (local.startsWith('"') && local.endsWith('"') && local.length >= 2) {
    const inner = local.slice(1, -1).replace(/\\(.)/g, "$1");
    local = isDotAtom(inner) ? inner : local;
  } else if (!isDotAtom(local) && !/[^\x00-\x7f]/.test(local)) {
    throw new InvalidAddressError(`bad local part in ${JSON.stringify(input)}`);
  }
  if (/[\x00-\x1f\x7f]/.test(local)) throw new InvalidAddressError(`control character in ${JSON.stringify(input)}`);
  if (!opts.caseSensitiveLocalparts) local = local.toLowerCase();
  if (Buffer.byteLength(local) > 64) throw new InvalidAddressError(`local part longer than 64 octets (RFC 5321 §4.5.3.1.1)`);
  return `${local}@${domain}`;
}

function isDotAtom(s: string): boolean {
  return /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/.test(s);
}

/** Everything needed to map between addresses and user IDs. */
export interface IdContext {
  /** Ghost localpart prefix, e.g. `email_`. */
  ghostPrefix: string;
  /** Homeserver server name. */
  serverName: string;
  /** The bridge's mail domain. */
  mailDomain: string;
  /** Bridge bot localpart. */
  botLocalpart: string;
  caseSensitiveLocalparts: boolean;
}

/**
 * The ghost user ID for an email address.
 * @param address any address; it is normalised first
 * @returns e.g. `@email_bob=40example.org:hs.example`
 * @throws InvalidAddressError for unusable addresses, addresses on the bridge's own mail
 *   domain (those are mailboxes, not ghosts), or user IDs over 255 bytes
 */
export function ghostUserId(address: string, ctx: IdContext): string {
  const norm = normalizeAddress(address, { caseSensitiveLocalparts: ctx.caseSensitiveLocalparts });
  if (norm.endsWith("@" + ctx.mailDomain)) throw new InvalidAddressError(`${norm} is a mailbox of this bridge, not a remote address`);
  const userId = `@${ctx.ghostPrefix}${encodeLocalpart(norm)}:${ctx.serverName}`;
  if (Buffer.byteLength(userId) > MAX_USER_ID_BYTES) throw new InvalidAddressError(`address too long for a Matrix user ID: ${norm}`);
  return userId;
}

/**
 * Suffix of the unverified ghost's localpart: `@email_bob=40example.org/unverified:hs`.
 * `/` is a valid localpart character but never valid in a domain, so no canonical verified
 * ghost ends with it and the two namespaces cannot collide.
 */
export const UNVERIFIED_SUFFIX = "/unverified";

/**
 * The unverified ghost of an address: who posts mail that claims to be from `address` but did
 * not authenticate (docs/security.md). A separate user, so the verified ghost speaks only for
 * authenticated mail.
 * @returns e.g. `@email_bob=40example.org/unverified:hs.example`
 * @throws InvalidAddressError as {@link ghostUserId}
 */
export function unverifiedGhostUserId(address: string, ctx: IdContext): string {
  const verified = ghostUserId(address, ctx);
  const userId = verified.replace(/:/, `${UNVERIFIED_SUFFIX}:`);
  if (Buffer.byteLength(userId) > MAX_USER_ID_BYTES) throw new InvalidAddressError(`address too long for a Matrix user ID: ${address}`);
  return userId;
}

/**
 * The address a ghost user ID stands for, and whether it is the verified ghost.
 * @returns null when `userId` is not a (canonical) ghost of this bridge
 */
export function parseGhost(userId: string, ctx: IdContext): { address: string; verified: boolean } | null {
  const m = /^@([^:]+):(.+)$/.exec(userId);
  if (!m || !m[1]!.endsWith(UNVERIFIED_SUFFIX)) {
    const address = ghostAddress(userId, ctx);
    return address ? { address, verified: true } : null;
  }
  const address = ghostAddress(`@${m[1]!.slice(0, -UNVERIFIED_SUFFIX.length)}:${m[2]}`, ctx);
  return address ? { address, verified: false } : null;
}

/**
 * The email address a verified ghost user ID stands for.
 * @returns the normalised address, or null when `userId` is not a (canonical) verified ghost of
 *   this bridge (unverified ghosts included: see {@link parseGhost})
 */
export function ghostAddress(userId: string, ctx: IdContext): string | null {
  const m = /^@([^:]+):(.+)$/.exec(userId);
  if (!m || m[2] !== ctx.serverName || !m[1]!.startsWith(ctx.ghostPrefix)) return null;
  const decoded = decodeLocalpart(m[1]!.slice(ctx.ghostPrefix.length));
  if (decoded === null) return null;
  try {
    const norm = normalizeAddress(decoded, { caseSensitiveLocalparts: ctx.caseSensitiveLocalparts });
    return norm === decoded && !norm.endsWith("@" + ctx.mailDomain) ? norm : null;
  } catch {
    return null;
  }
}

/** Whether `userId` is in the bridge's exclusive namespace (a ghost or the bridge bot). */
export function isBridgeUser(userId: string, ctx: IdContext): boolean {
  return userId === botUserId(ctx) || (userId.startsWith("@" + ctx.ghostPrefix) && userId.endsWith(":" + ctx.serverName));
}

/** The bridge bot's user ID. */
export function botUserId(ctx: IdContext): string {
  return `@${ctx.botLocalpart}:${ctx.serverName}`;
}

/**
 * Localparts that are never anyone's mailbox: not a room mailbox, an alias, nor a local user's
 * personal address: `postmaster` (RFC 5321 §4.5.1), the role addresses of RFC 2142, the
 * bridge's own `unsubscribe+<token>@` and no-reply names.
 */
export const RESERVED_LOCALPARTS: ReadonlySet<string> = new Set(["postmaster", "abuse", "mailer-daemon", "hostmaster", "webmaster", "noreply", "no-reply", "root", "unsubscribe"]);

/**
 * A localpart the bridge hands out: 1-64 of `a-z 0-9 . _ -`, starting with a letter or digit,
 * no `..`, not ending in `.` (a dot-atom, RFC 5322 §3.2.3, within RFC 5321 §4.5.3.1.1's 64
 * octets; no `+`, the subaddress separator).
 */
export function usableLocalpart(localpart: string): boolean {
  return /^[a-z0-9][a-z0-9._-]{0,63}$/.test(localpart) && !localpart.endsWith(".") && !localpart.includes("..");
}

/**
 * Why a local Matrix user has no personal mailbox, or null when they have one (see
 * {@link personalAddress}). Matrix user names allow what mail addresses do not (Client-Server
 * API, "User Identifiers": `+`, `=`, `/`, leading and doubled dots, 255 characters).
 * @returns a sentence for the user (the bot's notice), or null
 */
export function noPersonalMailboxReason(userId: string, ctx: IdContext): string | null {
  const m = /^@([^:]+):(.+)$/.exec(userId);
  if (!m || m[2] !== ctx.serverName) return `only users of ${ctx.serverName} have one`;
  if (isBridgeUser(userId, ctx)) return "it is one of the bridge's own users";
  const localpart = m[1]!;
  if (!usableLocalpart(localpart)) return `the user name "${localpart}" is not usable as an address (1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit; no '+', which marks another user's subaddress)`;
  if (RESERVED_LOCALPARTS.has(localpart)) return `"${localpart}@${ctx.mailDomain}" is reserved for the mail system`;
  return null;
}

/**
 * A local Matrix user's personal mailbox: `@alice:hs` → `alice@<mail domain>`; only for a user
 * name that is a usable, unreserved address ({@link noPersonalMailboxReason}): `@alice+boss`
 * would write as alice's subaddress, `@postmaster` as the mail system.
 * @returns the address, or null for users of other homeservers, the bridge's own users, and
 *   user names that are no usable address
 */
export function personalAddress(userId: string, ctx: IdContext): string | null {
  if (noPersonalMailboxReason(userId, ctx) !== null) return null;
  return `${/^@([^:]+):/.exec(userId)![1]}@${ctx.mailDomain}`;
}

/**
 * The local Matrix user whose personal mailbox is `localpart` (already lower-cased).
 * @returns the user ID, or null when the localpart is no personal address ({@link personalAddress}'s
 *   rules: unusable or reserved) or is a bridge user
 */
export function mailboxUserId(localpart: string, ctx: IdContext): string | null {
  // Only a personal address (personalAddress) leads to a user: the same rules both ways.
  if (!usableLocalpart(localpart) || RESERVED_LOCALPARTS.has(localpart)) return null;
  const userId = `@${localpart}:${ctx.serverName}`;
  return isBridgeUser(userId, ctx) ? null : userId;
}

/**
 * Mint a new Message-ID for mail the bridge sends (RFC 5322 §3.6.4): 128 random bits,
 * base64url (dot-atom-text safe), plus a millisecond timestamp, `@` the mail domain.
 * Never derived from a Matrix event ID, so it reveals nothing and cannot be guessed.
 * @returns the id without angle brackets, e.g. `k3J...Q.lx0a1b2@mail.example`
 */
export function mintMessageId(mailDomain: string, now: number = Date.now()): string {
  return `${randomBytes(16).toString("base64url")}.${now.toString(36)}@${mailDomain}`;
}

/**
 * Strip angle brackets and surrounding white space from a Message-ID.
 * @returns the bare id, or null when empty
 */
export function bareMessageId(id: string | null | undefined): string | null {
  if (!id) return null;
  const s = id.trim().replace(/^</, "").replace(/>$/, "").trim();
  return s.length > 0 ? s : null;
}

