/**
 * One-click unsubscribe links (RFC 8058) for mail from a room, next to the mailto address of
 * RFC 2369 `List-Unsubscribe`.
 *
 * The mailto address (`unsubscribe+<room token>@…`, `<mailbox>+unsubscribe@…`) names only the
 * room: the unsubscriber is the mail's authenticated sender. An https link is fetched with no
 * sender at all, so it must name the recipient too, and nobody else may make one: its token is
 * the room ID and the address, with an HMAC-SHA-256 of both under a key only the bridge holds
 * (derived from the registration's `as_token`, the way the crypto store key is when none is
 * configured; rotating the `as_token` ends the links in mail sent before, the mailto addresses
 * keep working). Each recipient therefore gets a copy of its own ({@link OneClickUnsubscribe.copyFor}).
 *
 * The link is `<appservice.public_url>/unsubscribe/<token>`; the appservice listener serves it
 * (src/matrix/appserviceHttp.ts): a POST with `List-Unsubscribe=One-Click` unsubscribes, a GET
 * only shows a page with a button (link scanners fetch URLs).
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import type { BridgeStore } from "../store/Store.ts";
import type { DkimSigner } from "../mail/outbound/dkim.ts";
import { withOneClickUnsubscribe } from "../mail/outbound/compose.ts";
import type { Subscriptions } from "./Subscriptions.ts";
import { isSubmissionEvent } from "./Submission.ts";
import { getLogger } from "../util/logger.ts";

const log = getLogger("bridge/unsubscribe");

/** What the MAC covers before the token's payload, so that no other HMAC under the key can pass for one. */
const MAC_CONTEXT = "matrix-email-bridge list-unsubscribe v1\n";

/** Longest token read, in characters (a room ID of 255 and an address of 254, base64url, plus the MAC). */
const MAX_TOKEN_LENGTH = 800;

/** A token: base64url payload, a dot, the base64url HMAC-SHA-256 (32 bytes, 43 characters). */
const TOKEN = /^([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{43})$/;

/** Whom a token unsubscribes from where. */
export interface UnsubscribeTarget {
  roomId: string;
  /** The recipient's normalised address. */
  address: string;
}

function mac(key: Buffer, payload: string): Buffer {
  return createHmac("sha256", key).update(MAC_CONTEXT).update(payload, "utf8").digest();
}

/**
 * The token of an unsubscribe link: `base64url(roomId LF address) "." base64url(HMAC-SHA-256)`.
 * @param key the bridge's secret key (32 bytes; see the module header)
 * @throws TypeError when the room ID or the address is empty or holds a line break
 */
export function makeUnsubscribeToken(key: Buffer, roomId: string, address: string): string {
  if (!roomId || !address || /[\r\n]/.test(roomId) || /[\r\n]/.test(address)) throw new TypeError("makeUnsubscribeToken: invalid room ID or address");
  const payload = `${roomId}\n${address}`;
  return `${Buffer.from(payload, "utf8").toString("base64url")}.${mac(key, payload).toString("base64url")}`;
}

/**
 * Read an unsubscribe token, checking its HMAC in constant time.
 * @returns the room and address it names, or null for anything the bridge did not make with
 *   `key` (malformed, too long, tampered, another key)
 */
export function readUnsubscribeToken(key: Buffer, token: string): UnsubscribeTarget | null {
  if (token.length > MAX_TOKEN_LENGTH) return null;
  const m = TOKEN.exec(token);
  if (!m) return null;
  const payload = Buffer.from(m[1]!, "base64url").toString("utf8");
  const given = Buffer.from(m[2]!, "base64url");
  const expected = mac(key, payload);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
  const [roomId, address, ...rest] = payload.split("\n");
  if (!roomId || !address || rest.length > 0) return null;
  return { roomId, address };
}

/**
 * The one-click link for a token.
 * @param publicUrl `appservice.public_url`, without a trailing slash (config load strips it)
 */
export function unsubscribeUrl(publicUrl: string, token: string): string {
  return `${publicUrl}/unsubscribe/${token}`;
}

/** The secret key of the links, derived from the registration's `as_token` (HMAC-SHA-256). */
export function unsubscribeKey(asToken: string): Buffer {
  if (!asToken) throw new Error("unsubscribeKey: the as_token is empty");
  return createHmac("sha256", asToken).update("matrix-email-bridge list-unsubscribe key").digest();
}

/** Options of {@link OneClickUnsubscribe}. */
export interface OneClickUnsubscribeOptions {
  /** {@link unsubscribeKey}. */
  key: Buffer;
  /** `appservice.public_url` (no trailing slash). */
  publicUrl: string;
  /** The signer the queued mail was signed with; copies are signed anew with it. */
  dkim: DkimSigner | null;
  store: Pick<BridgeStore, "getPortalByRoom">;
  subscriptions: Pick<Subscriptions, "optOut" | "unsubscribe">;
}

/** Makes the per-recipient copies with their link, and carries out a click. */
export class OneClickUnsubscribe {
  readonly #opts: OneClickUnsubscribeOptions;

  constructor(opts: OneClickUnsubscribeOptions) {
    this.#opts = opts;
  }

  /** The link that unsubscribes `address` from the mail of `roomId`. */
  linkFor(roomId: string, address: string): string {
    return unsubscribeUrl(this.#opts.publicUrl, makeUnsubscribeToken(this.#opts.key, roomId, address));
  }

  /**
   * The copy of a queued mail for one recipient: its `List-Unsubscribe` gains the recipient's
   * link, `List-Unsubscribe-Post` is added, and it is DKIM-signed anew (mail/outbound/compose.ts
   * `withOneClickUnsubscribe`). Null (the mail goes as it is) for mail from no room (DSNs,
   * subscription confirmations), mail a user submitted from a mail client (its headers are
   * theirs), and mail without a `List-Unsubscribe`.
   * @throws Error when DKIM signing fails (the attempt is retried)
   */
  async copyFor(mail: { roomId: string; eventId: string; raw: Buffer }, address: string): Promise<Buffer | null> {
    if (!mail.roomId || isSubmissionEvent(mail.eventId) || mail.raw.length === 0) return null;
    return withOneClickUnsubscribe(mail.raw, this.linkFor(mail.roomId, address), this.#opts.dkim);
  }

  /** Whether `token` is one of the bridge's links (the GET page; nothing changes). */
  verify(token: string): boolean {
    return readUnsubscribeToken(this.#opts.key, token) !== null;
  }

  /**
   * A one-click unsubscribe (RFC 8058 §3.2): what the room's mailto address does for an
   * authenticated sender. In a DM or group portal (`unsubscribe+<token>@`) the address is opted
   * out of the room's mail (Subscriptions.optOut: its ghost leaves, the room is told, the room
   * mails it nothing more). In a room mailbox (`<mailbox>+unsubscribe@`) its subscription ends
   * (Subscriptions.unsubscribe), and it may subscribe again later. Idempotent.
   * @returns false for a token the bridge did not make, or a room that is no portal any more
   * @throws the store's or homeserver's error (the caller answers 503; the click may be repeated)
   */
  async unsubscribe(token: string): Promise<boolean> {
    const target = readUnsubscribeToken(this.#opts.key, token);
    if (!target) return false;
    const portal = await this.#opts.store.getPortalByRoom(target.roomId);
    if (!portal) {
      log.info("one-click unsubscribe for a room that is no portal", { roomId: target.roomId, address: target.address });
      return false;
    }
    if (portal.kind === "mailbox") await this.#opts.subscriptions.unsubscribe(target.roomId, target.address);
    else await this.#opts.subscriptions.optOut(target.roomId, target.address);
    log.info("one-click unsubscribe", { roomId: target.roomId, address: target.address, kind: portal.kind });
    return true;
  }
}
