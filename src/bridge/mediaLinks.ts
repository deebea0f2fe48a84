/**
 * Links to Matrix files too large to attach to a mail (`outbound.max_attachment_bytes`), served
 * by the bridge when it has a public URL (`appservice.public_url`).
 *
 * Why the bridge serves them: since Matrix 1.11 (Client-Server API, "Content repository",
 * `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`) media downloads need an
 * access token, which a mail reader does not have. The link is
 * `<public_url>/media/<token>/<url-encoded filename>`; the appservice listener
 * (src/matrix/appserviceHttp.ts) checks the token and streams the file from the homeserver as the
 * bridge bot.
 *
 * The token is `base64url(mxc LF roomId LF expiry) "." base64url(HMAC-SHA-256)`, the MAC taken
 * over a context string, that payload and the filename, under the key of the one-click
 * unsubscribe links ({@link unsubscribeKey}: derived from the registration's `as_token`;
 * rotating the `as_token` ends every link). The context string keeps a media MAC from ever
 * passing for an unsubscribe MAC and back. The filename is covered but not carried in the
 * token (it is in the path): a link cannot be renamed (to `.html`, `.exe`) without a 404.
 * The room ID is carried for the logs. `expiry` is in seconds since the epoch; `0` means a link
 * that never expires (`outbound.media_link_days: 0`), for archives that should keep working.
 *
 * Encrypted files (`file` instead of `url`) never get such a link: the homeserver holds only
 * their ciphertext, and serving them decrypted would put the room's plaintext behind a bearer
 * URL outside the room's encryption; they keep the matrix.to link to their event.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { unsubscribeKey } from "./unsubscribeLinks.ts";

/** What the MAC covers before the payload (distinct from the unsubscribe links' context). */
const MAC_CONTEXT = "matrix-email-bridge media link v1\n";

/** Longest token read, in characters (an mxc URI and a room ID of 255 each, base64url, plus the MAC). */
const MAX_TOKEN_LENGTH = 1024;

/** A token: base64url payload, a dot, the base64url HMAC-SHA-256 (32 bytes, 43 characters). */
const TOKEN = /^([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{43})$/;

/** An `mxc://<server name>/<media ID>` URI (Client-Server API, "Matrix Content (mxc://) URIs"). */
const MXC = /^mxc:\/\/[^/\s]+\/[A-Za-z0-9_-]+$/;

/**
 * Characters a linked file's name loses: C0 and C1 controls, DEL, the bidi controls that make
 * a name read differently from what it is (CVE-2021-42574), and path separators.
 */
const NAME_UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\]/gu;

/** Longest linked file name kept, in characters (most file systems allow 255 bytes). */
const MAX_NAME_LENGTH = 200;

/** Seconds per day. */
const DAY_SECONDS = 86_400;

/** The file a media link names. */
export interface MediaLinkTarget {
  /** The media's `mxc://` URI. */
  mxc: string;
  /** The room the file was sent in. */
  roomId: string;
  /** When the link stops working, in ms since the epoch; null: never. */
  expiresAt: number | null;
}

/**
 * The name a file is linked and served under: its name without control, bidi and path-separator
 * characters, at most {@link MAX_NAME_LENGTH} characters; `file` when nothing is left.
 */
export function mediaLinkName(filename: string): string {
  const cleaned = [...filename.replace(NAME_UNSAFE, "").trim()].slice(0, MAX_NAME_LENGTH).join("").trim();
  return cleaned || "file";
}

function mac(key: Buffer, payload: string, name: string): Buffer {
  return createHmac("sha256", key).update(MAC_CONTEXT).update(payload, "utf8").update("\n").update(name, "utf8").digest();
}

/**
 * The token of a media link.
 * @param key {@link unsubscribeKey} (the bridge's secret, derived from the `as_token`)
 * @param target the file; `expiresAt` in ms since the epoch (rounded up to whole seconds), null for never
 * @param name the name it is linked under ({@link mediaLinkName}); covered by the MAC
 * @throws TypeError for a malformed mxc URI, an empty room ID or one with a line break, or an
 *   expiry that is not a positive finite number
 */
export function makeMediaToken(key: Buffer, target: MediaLinkTarget, name: string): string {
  if (!MXC.test(target.mxc)) throw new TypeError("makeMediaToken: not an mxc:// URI");
  if (!target.roomId || /[\r\n]/.test(target.roomId)) throw new TypeError("makeMediaToken: invalid room ID");
  if (target.expiresAt !== null && !(Number.isFinite(target.expiresAt) && target.expiresAt > 0)) throw new TypeError("makeMediaToken: invalid expiry");
  const expiry = target.expiresAt === null ? 0 : Math.ceil(target.expiresAt / 1000);
  const payload = `${target.mxc}\n${target.roomId}\n${expiry}`;
  return `${Buffer.from(payload, "utf8").toString("base64url")}.${mac(key, payload, name).toString("base64url")}`;
}

/**
 * Read a media token, checking its HMAC (in constant time) against the name in the link, and
 * its expiry.
 * @param name the file name from the link's path, percent-decoded
 * @param nowMs the current time, in ms since the epoch
 * @returns the file, or null for anything the bridge did not make with `key` for this name
 *   (malformed, too long, tampered, renamed, another key) and for an expired link
 */
export function readMediaToken(key: Buffer, token: string, name: string, nowMs: number): MediaLinkTarget | null {
  if (token.length > MAX_TOKEN_LENGTH) return null;
  const m = TOKEN.exec(token);
  if (!m) return null;
  const payload = Buffer.from(m[1]!, "base64url").toString("utf8");
  const given = Buffer.from(m[2]!, "base64url");
  const expected = mac(key, payload, name);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
  const [mxc, roomId, expiry, ...rest] = payload.split("\n");
  if (!mxc || !roomId || expiry === undefined || rest.length > 0 || !MXC.test(mxc) || !/^\d{1,15}$/.test(expiry)) return null;
  const seconds = Number(expiry);
  if (seconds !== 0 && seconds * 1000 <= nowMs) return null;
  return { mxc, roomId, expiresAt: seconds === 0 ? null : seconds * 1000 };
}

/**
 * The link of a token: `<public_url>/media/<token>/<name>`, the name percent-encoded (RFC 3986 §2.1).
 * @param publicUrl `appservice.public_url`, without a trailing slash (config load strips it)
 */
export function mediaUrl(publicUrl: string, token: string, name: string): string {
  return `${publicUrl}/media/${token}/${encodeURIComponent(name)}`;
}

/** Options of {@link MediaLinks}. */
export interface MediaLinksOptions {
  /** The registration's `as_token`; the key is {@link unsubscribeKey} of it. */
  asToken: string;
  /** `appservice.public_url` (no trailing slash). */
  publicUrl: string;
  /** `outbound.media_link_days`: how long a link works, in days; 0: forever. */
  days: number;
  /** Clock in ms since the epoch (tests). */
  clock?: () => number;
}

/** Makes and checks the links of oversized files. */
export class MediaLinks {
  readonly #key: Buffer;
  readonly #publicUrl: string;
  readonly #days: number;
  readonly #clock: () => number;

  /** @throws Error when the `as_token` is empty; RangeError for negative or non-finite `days` */
  constructor(opts: MediaLinksOptions) {
    if (!(Number.isFinite(opts.days) && opts.days >= 0)) throw new RangeError("MediaLinks: days must be 0 or more");
    this.#key = unsubscribeKey(opts.asToken);
    this.#publicUrl = opts.publicUrl;
    this.#days = opts.days;
    this.#clock = opts.clock ?? Date.now;
  }

  /**
   * The link to a file sent in `roomId`, valid for `media_link_days` from now.
   * @returns the URL and when it expires (ms since the epoch; null: never)
   * @throws TypeError for a malformed mxc URI or room ID
   */
  linkFor(mxc: string, roomId: string, filename: string): { url: string; expiresAt: number | null } {
    const name = mediaLinkName(filename);
    const expiresAt = this.#days === 0 ? null : Math.ceil((this.#clock() + this.#days * DAY_SECONDS * 1000) / 1000) * 1000;
    return { url: mediaUrl(this.#publicUrl, makeMediaToken(this.#key, { mxc, roomId, expiresAt }, name), name), expiresAt };
  }

  /**
   * Check a link's token against the name in its path.
   * @returns the file, or null for a forged, tampered, renamed or expired link
   */
  read(token: string, name: string): MediaLinkTarget | null {
    return readMediaToken(this.#key, token, name, this.#clock());
  }
}
