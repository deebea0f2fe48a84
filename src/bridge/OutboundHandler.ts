/**
 * Matrix → mail: turns a room message in a portal into a DKIM-signed mail to the
 * email participants (the ghosts joined to the room) and queues it for delivery.
 * The mail and its Message-ID mapping are committed before this returns.
 */
import { randomBytes } from "node:crypto";
import type { BatchPart, BatchState, BridgeStore, MessageRow, PortalRow } from "../store/Store.ts";
import { portalOf, type Portal, type PortalContext, type RecipientPlan } from "./Portal.ts";
import { composeMail, type MailFile, type OutgoingMail } from "../mail/outbound/compose.ts";
import type { DkimSigner } from "../mail/outbound/dkim.ts";
import { mintMessageId, noPersonalMailboxReason, personalAddress, type IdContext } from "./ids.ts";
import { cleanDisplayName, nameHasAtSign } from "./Ghost.ts";
import { personalAddressTaken } from "./Addressing.ts";
import { matrixToMail, messageContentOf, stripReplyFallback, type MessageContent, type QuotedMessage } from "./format/toMail.ts";
import { escapeHtml } from "./format/html.ts";
import type { MatrixActions } from "./ports.ts";
import { getLogger } from "../util/logger.ts";
import { decryptFile, encryptedFileOf, EncryptedFileError, type EncryptedFile } from "./format/encryptedFile.ts";
import type { MediaLinks } from "./mediaLinks.ts";

const log = getLogger("bridge/outbound");

/** A room message event, as far as outbound needs it. */
export interface RoomMessageEvent {
  room_id: string;
  event_id: string;
  sender: string;
  origin_server_ts: number;
  content: MessageContent;
}

/** Options for {@link OutboundHandler}. */
export interface OutboundHandlerOptions {
  store: BridgeStore;
  matrix: MatrixActions;
  ids: IdContext;
  dkim: DkimSigner | null;
  /** Called after a mail was queued, to wake the delivery queue. */
  onQueued: () => void;
  /** Per-user sending limits (`outbound.max_mails_per_user_per_hour`, `…_new_recipients_per_user_per_day`; 0: none). */
  limits: { mailsPerHour: number; newRecipientsPerDay: number };
  /** `outbound.max_attachment_bytes`: larger Matrix files go as a link, in bytes. */
  maxAttachmentBytes: number;
  /**
   * Links served by the bridge for files over `maxAttachmentBytes` (./mediaLinks.ts), when
   * `appservice.public_url` is set; absent or null: such a file links to its Matrix event.
   */
  mediaLinks?: Pick<MediaLinks, "linkFor"> | null;
  /** `outbound.mail_notices`: whether `m.notice` messages are mailed. */
  mailNotices: boolean;
  /** `outbound.batch_delay_ms`: messages of one person in one portal thread within this many ms go as one mail; 0: off. */
  batchDelayMs: number;
  /** Clock in epoch ms (tests). */
  clock?: () => number;
}

/** Why a room message was not sent by mail; the text is posted as a notice. */
export class NotSentError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NotSentError";
  }
}

const TEXT_TYPES = new Set(["m.text", "m.notice", "m.emote"]);
/** File messages sent as attachments (Client-Server API, "m.room.message msgtypes"). */
const FILE_TYPES = new Set(["m.image", "m.file", "m.audio", "m.video"]);

/**
 * A batched mail is held open at most this many batch delays after its first message, however
 * many messages keep coming.
 */
const MAX_BATCH_WINDOWS = 6;

/**
 * The display name a Matrix user's mail carries (From, and the footer's "… wrote this"): their
 * name cleaned as a ghost's is (bridge/Ghost.ts `cleanDisplayName`: no controls or bidi
 * controls, at most 100 characters); a name that reads as an address (an `@` in any NFKC
 * spelling: `"ceo@bank.test" <ceo@bank.test>`), or none left, gives way to the localpart of
 * their user ID. Many mail clients show only the display name: it must not claim an address the
 * mail is not from (the inbound side's rule for ghosts, the same way round).
 * @param name the `personal name` setting, else the room display name
 * @param userId the sender's Matrix user ID (`@alice:hs` → `alice`)
 */
export function mailSenderName(name: string, userId: string): string {
  const cleaned = cleanDisplayName(name, MAIL_NAME_MAX);
  if (cleaned !== null && !nameHasAtSign(cleaned)) return cleaned;
  return userId.replace(/^@/, "").replace(/:.*$/s, "");
}

/** An `mxc://<server-name>/<media-id>` URI (Client-Server API, "Matrix Content (mxc://) URIs"). */
const MXC_URI = /^mxc:\/\/[^/\s]+\/[A-Za-z0-9_-]+$/;

/** Longest display name on a mail, in characters (the `personal name` command's limit). */
const MAIL_NAME_MAX = 100;

/** Longest subject made from a message's first line, in characters (RFC 5322 §2.1.1 suggests 78 per line). */
const SUBJECT_MAX = 78;

/** A room message on its way to becoming mail. */
interface PendingMail {
  event: RoomMessageEvent;
  portal: Portal;
  from: string;
  senderName: string;
  subject: string;
  parent: MessageRow | null;
  plan: RecipientPlan;
  body: { text: string; html: string | null; attachments: MailFile[] };
  /** Subject kept in the mapping (what replies continue), when not `subject`. */
  threadSubject?: string | null;
}

/** Which messages may share a batched mail: same room, same sender, same thread (parent Message-ID). */
function batchKey(roomId: string, sender: string, parentMessageId: string | null): string {
  return `${roomId}\n${sender}\n${parentMessageId ?? ""}`;
}

/** What a batched mail is composed from besides its messages, as stored (dates as ISO strings). */
function mailContext(mail: OutgoingMail): Record<string, unknown> {
  const { text: _text, html: _html, attachments: _files, date, ...rest } = mail;
  return { ...rest, date: date.toISOString() };
}

/**
 * A batched mail: its stored context with the messages joined, in order: text by blank
 * lines; HTML (when any message has some) by paragraph breaks, text-only messages escaped.
 */
function batchMail(context: Record<string, unknown>, parts: BatchPart[]): OutgoingMail {
  const text = parts.map((p) => p.text).join("\n\n");
  const html = parts.some((p) => p.html !== null) ? parts.map((p) => p.html ?? escapeHtml(p.text).replace(/\n/g, "<br>")).join("<br><br>") : null;
  return { ...(context as unknown as Omit<OutgoingMail, "text" | "html" | "date">), date: new Date(String(context.date)), text, html, attachments: [] };
}

/** Handles room messages from Matrix users in portals. */
export class OutboundHandler {
  private readonly opts: OutboundHandlerOptions;

  constructor(opts: OutboundHandlerOptions) {
    this.opts = opts;
  }

  /** What the portal (./Portal.ts) needs to plan recipients, parents and names. */
  #portalContext(): PortalContext {
    return { store: this.opts.store, matrix: this.opts.matrix, ids: this.opts.ids };
  }

  /**
   * Drop the addresses that unsubscribed from the room's mail (store `portal_optouts`).
   * @throws NotSentError when every recipient unsubscribed (the bot says so in the room)
   */
  private async withoutOptOuts(roomId: string, plan: RecipientPlan): Promise<RecipientPlan> {
    if (plan.envelope.length === 0) return plan;
    const out = await this.opts.store.listOptOuts(roomId);
    if (out.size === 0) return plan;
    const envelope = plan.envelope.filter((a) => !out.has(a));
    if (envelope.length === 0) throw new NotSentError(`Not sent by email: ${plan.envelope.join(", ")} unsubscribed from this room's mail.`);
    return { ...plan, envelope, to: plan.to.filter((a) => !out.has(a)) };
  }

  /**
   * Send a room message by mail.
   *
   * - `m.text`, `m.emote`, and `m.notice` when `outbound.mail_notices` is on: the text and HTML.
   * - `m.image`, `m.file`, `m.audio`, `m.video`: the file attached, downloaded through the
   *   authenticated media API; a caption (`body` differing from `filename`, Client-Server API
   *   "m.file"/"m.image") is the mail's text, its `formatted_body` the HTML. A file over
   *   `outbound.max_attachment_bytes` is not attached: a line says why and links it
   *   ({@link fileBody}).
   * - an edit (`m.replace`) of a message that went by mail: a short "Correction:" mail in the
   *   same thread, to the same recipients ({@link correction}).
   * - `m.notice` (by default): nothing; it stays in Matrix.
   * @returns the Message-ID queued, or null when nothing is mailed (no email participants, a
   *   notice, an edit of a message that was never mailed, a replayed event)
   * @throws NotSentError with a user-facing reason (unsupported message type, sender without a mailbox, limits)
   * @throws the homeserver's error when a file cannot be downloaded now (the event is retried)
   */
  async handle(event: RoomMessageEvent, row: PortalRow): Promise<string | null> {
    const { store, matrix, ids } = this.opts;
    const portal = portalOf(row);
    const rel = event.content["m.relates_to"];
    if (rel?.rel_type === "m.replace") return this.correction(event, portal, rel.event_id ?? null);
    const msgtype = event.content.msgtype ?? "";
    if (msgtype === "m.notice" && !this.opts.mailNotices) return null; // what bots say stays in Matrix
    const isFile = FILE_TYPES.has(msgtype);
    if (!TEXT_TYPES.has(msgtype) && !isFile) {
      throw new NotSentError(`Messages of type ${msgtype || "(none)"} are not sent by email; text, emotes, images, files, audio and video are.`);
    }
    if (await store.getOutboundByEvent(event.event_id)) return null; // replayed transaction
    const from = await this.senderAddress(event.sender);
    // The parent: the message replied to, else the thread's root (Client-Server API, "Threading").
    const parentId = rel?.["m.in_reply_to"]?.event_id ?? (rel?.rel_type === "m.thread" ? rel.event_id : undefined);
    // In a DM, a message that answers nothing in particular continues the conversation: it
    // answers the other side's latest mail (as a mail client's "Reply" would).
    const parent = parentId ? await store.getMessageByEvent(portal.roomId, parentId) : await portal.implicitParent(this.#portalContext());
    const plan = await this.withoutOptOuts(portal.roomId, await portal.recipients(parent, this.#portalContext()));
    if (plan.envelope.length === 0) return null;
    if (!isFile) {
      // Only white space, or only a reply fallback (an API client can send it; Element cannot): no empty mail.
      const own = matrixToMail({ ...event.content, msgtype: "m.text" }, "");
      if (own.text.trim() === "" && !/<img\b/iu.test(own.html ?? "")) throw new NotSentError("This message has no text, so nothing was sent by email.");
    }
    await this.checkLimits(from, plan.envelope, event);

    const senderName = await matrix.displayName(portal.roomId, event.sender, portal.reader(ids));
    const subject = await this.subjectFor(portal, parent?.subject ?? null, senderName, event.content.body ?? "");
    // A thread message's `m.in_reply_to` with `is_falling_back: true` only serves clients without
    // threads (Client-Server API, "Threading": fallback for unthreaded clients): it is not
    // something the sender answered, so it is not quoted, and the message may be batched.
    const fallback = rel?.rel_type === "m.thread" && rel.is_falling_back === true;
    const replyTo = fallback ? undefined : rel?.["m.in_reply_to"]?.event_id;
    const quote = replyTo ? await this.quoteOf(portal, replyTo) : null;
    const body = isFile ? await this.fileBody(event) : { ...matrixToMail(event.content, senderName, quote), attachments: [] };
    const mail = { event, portal, from, senderName, subject, parent, plan, body };
    // Text that is not an explicit reply waits for more from the same person (the "email delay").
    if (this.opts.batchDelayMs > 0 && !isFile && !replyTo) return this.batch(mail, batchKey(portal.roomId, event.sender, parent?.messageId ?? null));
    return this.queueMail(mail);
  }

  /**
   * Batching (`outbound.batch_delay_ms`): the message joins the open mail of its sender in this
   * portal thread, or opens one, held back until `batch_delay_ms` after its last message (at
   * most {@link MAX_BATCH_WINDOWS} delays after the first). The store changes an open mail only
   * while the queue has not taken it, so a message is never lost between the two.
   * @returns the Message-ID of the mail it went into
   */
  private async batch(m: PendingMail, key: string): Promise<string> {
    const { store } = this.opts;
    const { roomId } = m.portal;
    const eventId = m.event.event_id;
    // A replayed event (after a crash) that is already in its mail is not added again; a mapping
    // whose mail does not hold it (the crash came before the mail changed) is dropped and the
    // message handled anew.
    const known = await store.getMessageByEvent(roomId, eventId);
    if (known) {
      if (await store.outboundIncludes(known.messageId, eventId)) return known.messageId;
      await store.deleteMessage(roomId, eventId);
    }
    const part: BatchPart = { eventId, text: m.body.text, html: m.body.html };
    const now = this.#now();
    const open = await store.openBatch(key, now);
    if (open) {
      const state: BatchState = { ...open.state, parts: [...open.state.parts, part] };
      const closesAt = Math.max(now + 1, Math.min(now + this.opts.batchDelayMs, open.openedAt + MAX_BATCH_WINDOWS * this.opts.batchDelayMs));
      const raw = await composeMail(batchMail(open.state.mail, state.parts), this.opts.dkim);
      await this.mapEvent(m, open.messageId, typeof open.state.mail.subject === "string" ? open.state.mail.subject : m.subject, m.plan);
      if (await store.updateBatch(open.outboundId, raw, state, closesAt, now)) {
        log.info("message added to a batched mail", { roomId, eventId, messageId: open.messageId, parts: state.parts.length, closesAt });
        return open.messageId;
      }
      // The queue took it meanwhile: this message opens the next one.
      await store.deleteMessage(roomId, eventId);
    }
    return this.queueMail(m, { key, part, closesAt: now + this.opts.batchDelayMs });
  }

  /**
   * A redaction (Client-Server API, "Redactions") of a message still waiting in an open batched
   * mail takes it out (the mail is dropped when nothing is left). A message already mailed
   * stays mailed: nothing is sent, and nobody is told.
   */
  async redact(roomId: string, redactedEventId: string): Promise<void> {
    const { store } = this.opts;
    const message = await store.getMessageByEvent(roomId, redactedEventId);
    if (!message || message.direction !== "outbound") return;
    const now = this.#now();
    const open = await store.openBatchByMessageId(message.messageId, now);
    if (!open || !open.state.parts.some((p) => p.eventId === redactedEventId)) return;
    const parts = open.state.parts.filter((p) => p.eventId !== redactedEventId);
    const done =
      parts.length === 0
        ? await store.cancelBatch(open.outboundId, now)
        : await store.updateBatch(open.outboundId, await composeMail(batchMail(open.state.mail, parts), this.opts.dkim), { ...open.state, parts }, open.closesAt, now);
    if (!done) return; // the queue took it meanwhile: it is mailed as it was
    await store.deleteMessage(roomId, redactedEventId);
    log.info(parts.length === 0 ? "redacted the only message of a batched mail: mail dropped" : "redacted message taken out of a batched mail", { roomId, eventId: redactedEventId, messageId: open.messageId });
  }

  /**
   * An edit (`m.replace`, Client-Server API "Event replacements") of a message that went by
   * mail: a "Correction:" mail with the new text, In-Reply-To the edited message's mail, to the
   * recipients that mail had. An edit of a message that was never mailed (or by someone else
   * than its sender, which the spec makes invalid) mails nothing.
   * @returns the Message-ID queued, or null when nothing is mailed
   */
  private async correction(event: RoomMessageEvent, portal: Portal, originalId: string | null): Promise<string | null> {
    const { store, matrix, ids } = this.opts;
    if (await store.getOutboundByEvent(event.event_id)) return null; // replayed transaction
    const original = originalId ? await store.getMessageByEvent(portal.roomId, originalId) : null;
    const from = personalAddress(event.sender, ids);
    if (!original || original.direction !== "outbound" || original.sender !== from) {
      log.info("edit of a message that was not mailed by its sender: nothing sent", { roomId: portal.roomId, eventId: event.event_id, edited: originalId });
      return null;
    }
    const newContent = event.content["m.new_content"] ?? event.content;
    const senderName = await matrix.displayName(portal.roomId, event.sender, portal.reader(ids));
    // Edited while its batched mail still waits: the mail changes, nothing extra is sent.
    const now = this.#now();
    const open = await store.openBatchByMessageId(original.messageId, now);
    if (open && open.state.parts.some((p) => p.eventId === originalId)) {
      const edited = matrixToMail({ ...newContent, msgtype: newContent.msgtype ?? "m.text" }, senderName);
      const parts = open.state.parts.map((p) => (p.eventId === originalId ? { ...p, text: edited.text, html: edited.html } : p));
      const raw = await composeMail(batchMail(open.state.mail, parts), this.opts.dkim);
      if (await store.updateBatch(open.outboundId, raw, { ...open.state, parts }, open.closesAt, now)) {
        log.info("edit folded into a batched mail", { roomId: portal.roomId, eventId: event.event_id, edited: originalId, messageId: open.messageId });
        return open.messageId;
      }
    }
    const plan = await this.withoutOptOuts(portal.roomId, { envelope: original.participants, to: original.viaList ? [] : original.participants, list: original.viaList });
    if (plan.envelope.length === 0) return null;
    await this.checkLimits(from, plan.envelope, event);
    const subject = `Correction: ${(original.subject ?? "").replace(/^(?:(?:re|correction):\s*)+/i, "")}`.trim();
    const body = { ...matrixToMail({ ...newContent, msgtype: newContent.msgtype ?? "m.text" }, senderName), attachments: [] };
    return this.queueMail({ event, portal, from, senderName, subject, parent: original, plan, body, threadSubject: original.subject });
  }

  /**
   * The message a Matrix reply answers, for the mail quote: its author's display name, time and
   * text (its own reply fallback removed). Null when the homeserver does not show it any more
   * (redacted or gone): the mail goes without a quote, the thread headers still link it.
   * @throws the homeserver's error when it cannot answer now (the event is retried)
   */
  private async quoteOf(portal: Portal, eventId: string): Promise<QuotedMessage | null> {
    const { matrix, ids } = this.opts;
    const reader = portal.reader(ids);
    const ev = await matrix.roomEvent(portal.roomId, eventId, reader);
    if (!ev || typeof ev.content.body !== "string") {
      log.info("the message replied to is not readable: mailed without a quote", { roomId: portal.roomId, eventId });
      return null;
    }
    const { body } = stripReplyFallback(messageContentOf(ev.content));
    return { name: await matrix.displayName(portal.roomId, ev.sender, reader), date: new Date(ev.originServerTs), text: body.trim() };
  }

  /**
   * A file message's body: the file attached, the caption as the text (and its
   * `formatted_body`, when it has one, as the HTML, made like a text message's,
   * format/toMail.ts).
   * Over `max_attachment_bytes` (by `info.size` or while downloading), nothing is attached; a
   * line gives the file's name, its size (when known) and the limit, and links:
   * - `<public_url>/media/<token>/<name>` (./mediaLinks.ts), served by the bridge for
   *   `outbound.media_link_days`, when `appservice.public_url` is set: the homeserver's media
   *   needs an access token (Client-Server API v1.11, authenticated media) a mail reader lacks;
   * - else, and always for an encrypted file, the event on matrix.to: the homeserver holds only
   *   an encrypted file's ciphertext, and the bridge does not serve it decrypted over a bearer
   *   link (that would take the room's plaintext out of its encryption).
   * A file sent in an encrypted room (`file`: the ciphertext's URL, key, IV and hash) is
   * downloaded, checked against its hash and decrypted (format/encryptedFile.ts).
   * @throws NotSentError for a file without a URL, or an encrypted one that does not decrypt
   * @throws the homeserver's error when the download fails
   */
  private async fileBody(event: RoomMessageEvent): Promise<{ text: string; html: string | null; attachments: MailFile[] }> {
    const c = event.content;
    let encrypted: EncryptedFile | null;
    try {
      encrypted = encryptedFileOf(c as Record<string, unknown>);
    } catch (err) {
      if (err instanceof EncryptedFileError) throw new NotSentError(`This file cannot be sent by email: ${err.message}.`);
      throw err;
    }
    const url = encrypted?.url ?? c.url;
    if (typeof url !== "string") throw new NotSentError("This file cannot be sent by email: it has no media URL.");
    // Client-Server API, "Content repository": media is an mxc:// URI; anything else is never fetched.
    if (!MXC_URI.test(url)) throw new NotSentError("This file cannot be sent by email: its media URL is not an mxc:// URI.");
    const filename = (typeof c.filename === "string" && c.filename.trim()) || (c.body ?? "").trim() || "file";
    const caption = typeof c.filename === "string" && c.body !== undefined && c.body !== c.filename ? c.body : null;
    // The caption's formatting (Client-Server API, "m.file": `format`/`formatted_body` go with a caption).
    const captioned = caption !== null ? matrixToMail({ body: caption, format: c.format, formatted_body: c.formatted_body, "m.relates_to": c["m.relates_to"] }, "") : null;
    const limit = this.opts.maxAttachmentBytes;
    const declared = typeof c.info?.size === "number" ? c.info.size : null;
    const download = declared !== null && declared > limit ? ({ tooLarge: true } as const) : await this.download(url, limit, event);
    if (download.tooLarge) {
      const size = declared !== null ? ` (${declared} bytes)` : "";
      const served = !encrypted && this.opts.mediaLinks ? this.servedLink(this.opts.mediaLinks, url, event, filename) : null;
      const link = served?.url ?? `https://matrix.to/#/${encodeURIComponent(event.room_id)}/${encodeURIComponent(event.event_id)}`;
      const until = served?.expiresAt ? ` (the link works until ${new Date(served.expiresAt).toISOString().slice(0, 10)})` : "";
      const why = `📎 ${filename}${size} is larger than this bridge sends by email (${limit} bytes)`;
      const where = served ? `, so it is not attached. Download it here${until}:` : ". It is in the Matrix room:";
      const line = `${why}${where} ${link}`;
      log.info("file too large for mail, sent as a link", { roomId: event.room_id, eventId: event.event_id, size: declared, limit, served: served !== null });
      const text = captioned ? `${captioned.text}\n\n${line}` : line;
      const html = captioned?.html ? `${captioned.html}<p>${escapeHtml(`${why}${where}`)} <a href="${escapeHtml(link)}">${escapeHtml(link)}</a></p>` : null;
      return { text, html, attachments: [] };
    }
    const mimetype = typeof c.info?.mimetype === "string" && c.info.mimetype ? c.info.mimetype : (download.contentType ?? "application/octet-stream");
    let content = download.data;
    if (encrypted) {
      try {
        content = decryptFile(download.data, encrypted);
      } catch (err) {
        if (!(err instanceof EncryptedFileError)) throw err;
        log.warn("encrypted file not sent: it does not decrypt", { roomId: event.room_id, eventId: event.event_id, error: err.message });
        throw new NotSentError(`This file cannot be sent by email: ${err.message}.`);
      }
    }
    return { text: captioned?.text ?? "", html: captioned?.html ?? null, attachments: [{ filename, contentType: mimetype, content }] };
  }

  /**
   * The address a local user's mail comes from: their personal mailbox (`ids.ts`
   * personalAddress: a usable, unreserved user name), unless a room mailbox or an alias has that
   * address (a user registered after it was given out): mail from it would speak for the room
   * or the alias's owners, and their replies would go there.
   * @throws NotSentError saying why the user has no address to send from
   */
  private async senderAddress(userId: string): Promise<string> {
    const { store, ids } = this.opts;
    const why = noPersonalMailboxReason(userId, ids);
    if (why !== null) throw new NotSentError(`${userId} has no personal mailbox on this bridge: ${why}; this message was not sent by email.`);
    const address = personalAddress(userId, ids)!;
    if (await personalAddressTaken(store, address)) throw new NotSentError(`${address} is the address of a room mailbox or an alias on this bridge, so ${userId} cannot send from it; this message was not sent by email.`);
    return address;
  }

  /**
   * Download a file's media for its mail. A refusal (4xx: the media does not exist, is
   * quarantined or not readable) will not change on a retry: the message is not sent, and the
   * room is told why. A homeserver that cannot answer now (5xx, 429, network, a remote server's
   * media that cannot be fetched yet) is thrown, and the event is tried again.
   * @throws NotSentError for a refusal; the homeserver's temporary failure
   */
  private async download(url: string, limit: number, event: RoomMessageEvent): ReturnType<MatrixActions["downloadContent"]> {
    try {
      return await this.opts.matrix.downloadContent(url, limit);
    } catch (err) {
      const failure = this.opts.matrix.classifyError(err);
      if (failure.temporary) throw err;
      log.info("file not sent: the homeserver refused its media", { roomId: event.room_id, eventId: event.event_id, error: failure.message });
      throw new NotSentError(`This file cannot be sent by email: the homeserver could not provide it (${failure.message}).`);
    }
  }

  /**
   * The bridge-served link of an oversized file (./mediaLinks.ts), or null (the event's
   * matrix.to link is used) when its media URL is not a well-formed `mxc://` URI.
   */
  private servedLink(links: Pick<MediaLinks, "linkFor">, mxc: string, event: RoomMessageEvent, filename: string): { url: string; expiresAt: number | null } | null {
    try {
      return links.linkFor(mxc, event.room_id, filename);
    } catch (err) {
      if (!(err instanceof TypeError)) throw err;
      log.warn("oversized file not linkable through the bridge: linked to its event", { roomId: event.room_id, eventId: event.event_id, error: err.message });
      return null;
    }
  }

  /**
   * Compose, sign and commit one mail (its Message-ID mapping and its queue row), then wake the
   * queue. Idempotent on the event: a replay finds the mapping and queues nothing new. With
   * `batch`, the mail is held open for more messages until `closesAt`.
   * @returns the Message-ID
   */
  private async queueMail(m: PendingMail, batch?: { key: string; part: BatchPart; closesAt: number }): Promise<string> {
    const { store, ids } = this.opts;
    const { event, portal, from, subject, plan, body } = m;
    const existing = await store.getMessageByEvent(portal.roomId, event.event_id);
    const messageId = existing?.messageId ?? mintMessageId(ids.mailDomain);
    const outgoing = await this.outgoing(m, messageId);
    const raw = await composeMail(outgoing, this.opts.dkim);
    await this.mapEvent(m, messageId, m.threadSubject !== undefined ? m.threadSubject : subject, plan);
    const row = { roomId: portal.roomId, eventId: event.event_id, messageId, envelopeFrom: from, recipients: plan.envelope, raw };
    const { duplicate } = batch
      ? await store.enqueueOutboundBatch(row, { key: batch.key, state: { parts: [batch.part], mail: mailContext(outgoing) }, closesAt: batch.closesAt })
      : await store.enqueueOutbound(row);
    if (!duplicate) {
      log.info(batch ? "mail queued, open for more messages" : "mail queued", { roomId: portal.roomId, eventId: event.event_id, messageId, recipients: plan.envelope.length, list: plan.list, attachments: body.attachments.length, ...(batch ? { closesAt: batch.closesAt } : {}) });
      this.opts.onQueued();
    }
    return messageId;
  }

  /** The event → Message-ID mapping (what replies, edits and bounces find the mail by). */
  private async mapEvent(m: PendingMail, messageId: string, subject: string | null, plan: RecipientPlan): Promise<void> {
    await this.opts.store.insertMessage({
      roomId: m.portal.roomId,
      eventId: m.event.event_id,
      messageId,
      references: m.parent ? [...m.parent.references, m.parent.messageId] : [],
      direction: "outbound",
      sender: m.from,
      subject,
      participants: plan.envelope,
      viaList: plan.list,
    });
  }

  /** The mail for `m`: From, To (names of known ghosts), thread headers, list headers, body. */
  private async outgoing(m: PendingMail, messageId: string): Promise<OutgoingMail> {
    const { store, ids } = this.opts;
    const { event, portal, from, senderName, subject, parent, plan, body } = m;
    const references = parent ? [...parent.references, parent.messageId] : [];
    const names = await Promise.all(plan.to.map(async (address) => (await store.getGhostByAddress(address))?.displayName ?? null));
    const mailbox = portal.kind === "mailbox" ? await store.getRoomMailboxByRoom(portal.roomId) : null;
    const list = mailbox ? `${mailbox.localpart}@${ids.mailDomain}` : null;
    // RFC 2369 §3.2: every mail says how to stop it. A room mailbox has its list address; any
    // other portal a random per-room token address (migration 7).
    const unsubscribe = mailbox
      ? `${mailbox.localpart}+unsubscribe@${ids.mailDomain}`
      : `unsubscribe+${await store.unsubscribeToken(portal.roomId, randomBytes(12).toString("hex"))}@${ids.mailDomain}`;
    const listHeaders: Record<string, string> = mailbox
      ? {
          // RFC 2919 list identifier and RFC 2369 list commands, so mail clients can filter,
          // thread, post and unsubscribe.
          "List-Id": `<${mailbox.localpart}.${ids.mailDomain}>`,
          "List-Post": `<mailto:${list}>`,
          "List-Unsubscribe": `<mailto:${unsubscribe}>`,
        }
      : { "List-Unsubscribe": `<mailto:${unsubscribe}?subject=unsubscribe>` };
    const { label: where } = await portal.describe(this.#portalContext());
    // The user's own name for their mail (`personal name`), else their name in the room.
    const name = mailSenderName((await store.getUserSettings(event.sender)).displayName ?? senderName, event.sender);
    const notice = `${name} wrote this ${where} on Matrix. To get no more mail from there, write to ${unsubscribe}.`;
    return {
      // The room's signature line (`mailbox signature`) opens the footer.
      footer: mailbox?.signature ? `${mailbox.signature}\n${notice}` : notice,
      from: { name, address: from },
      to: plan.list && list ? [{ name: null, address: list }] : plan.to.map((address, i) => ({ name: names[i] ?? null, address })),
      subject,
      text: body.text,
      html: body.html,
      attachments: body.attachments,
      messageId,
      inReplyTo: parent?.messageId ?? null,
      references,
      date: new Date(event.origin_server_ts),
      replyTo: list ? { name: null, address: list } : null,
      headers: listHeaders,
    };
  }

  #now(): number {
    return (this.opts.clock ?? Date.now)();
  }

  /**
   * The per-user abuse limits: mails per hour and first-time recipients per day.
   * @throws NotSentError (the bot says so in the room) when over a limit; admins get a log line
   */
  private async checkLimits(from: string, recipients: string[], event: RoomMessageEvent): Promise<void> {
    const { store, limits } = this.opts;
    const now = Date.now();
    const ctx = { roomId: event.room_id, eventId: event.event_id, user: event.sender };
    if (limits.mailsPerHour > 0) {
      const sent = await store.countOutboundSince(from, now - 3_600_000);
      if (sent >= limits.mailsPerHour) {
        log.warn("sending limit reached: mails per hour", { ...ctx, sent, limit: limits.mailsPerHour });
        throw new NotSentError(`Not sent by email: ${event.sender} has sent ${sent} mails in the last hour, the limit of this bridge (${limits.mailsPerHour}). Try again later.`);
      }
    }
    if (limits.newRecipientsPerDay > 0) {
      const known = await store.knownOutboundRecipients(from, recipients);
      const fresh = recipients.filter((a) => !known.has(a));
      if (fresh.length > 0) {
        const already = await store.countNewRecipientsSince(from, now - 86_400_000);
        if (already + fresh.length > limits.newRecipientsPerDay) {
          log.warn("sending limit reached: new recipients per day", { ...ctx, already, adding: fresh.length, limit: limits.newRecipientsPerDay });
          throw new NotSentError(
            `Not sent by email: this would make ${already + fresh.length} new addresses for ${event.sender} today, over the limit of this bridge (${limits.newRecipientsPerDay} a day). Try again tomorrow.`,
          );
        }
      }
    }
  }

  /**
   * Subject: `Re:` the parent's (a reply continues its thread); else, for a new topic, the
   * room's name, else the message's first line (at most {@link SUBJECT_MAX} characters), else
   * `Message from <name>`.
   * @throws the homeserver's error when the room name cannot be read (the event is retried)
   */
  private async subjectFor(portal: Portal, parentSubject: string | null, senderName: string, text: string): Promise<string> {
    if (parentSubject) return /^re:/i.test(parentSubject) ? parentSubject : `Re: ${parentSubject}`;
    const { name } = await portal.describe(this.#portalContext());
    // A room name is anyone's text (a moderator's): cleaned as a display name is; compose.ts cuts it.
    const roomName = cleanDisplayName(name);
    if (roomName) return roomName;
    const first = text.split("\n").map((l) => l.trim()).find((l) => l !== "" && !l.startsWith(">"));
    if (first) return first.length > SUBJECT_MAX ? `${first.slice(0, SUBJECT_MAX - 1).trimEnd()}…` : first;
    return `Message from ${senderName}`;
  }
}
