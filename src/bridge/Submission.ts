/**
 * What the bridge does with mail its local users submit on the submission port
 * (`mail/submission/SubmissionListener.ts`, RFC 6409):
 *
 * - login: the user's personal address or Matrix ID, and one of their app passwords
 *   (`password new`; only a scrypt hash is stored, `mail/submission/appPasswords.ts`);
 * - recipients outside the mail domain: the mail is DKIM-signed (d= the mail domain) and queued
 *   on the outbound queue like any mail from Matrix (retries, per-recipient state, failure and
 *   delay notices), then the user's DM portal with each recipient (if there is one) gets a notice
 *   "You sent …", so the conversation in Matrix shows it. The appservice cannot post as the user,
 *   so the notice is the portal's own speaker (the ghost in a DM, see NoticeService);
 * - recipients on the mail domain (a room mailbox or a personal mailbox): the bridge bot posts the
 *   mail into the room (a personal mailbox: the bot's DM with its owner), naming the user who
 *   wrote it. The post is the commit: it happens before the 250, with a transaction ID derived
 *   from the mail, so a client's retry posts once.
 *
 * The 250 is given only after every outbound row is committed and every post is done.
 */
import { createHash } from "node:crypto";
import type { BridgeStore } from "../store/Store.ts";
import type { DkimSigner } from "../mail/outbound/dkim.ts";
import { signWithDkim } from "../mail/outbound/compose.ts";
import { parseMail } from "../mail/inbound/parse.ts";
import { Rejections, SmtpReply } from "../mail/inbound/rejections.ts";
import { MalformedPasswordHashError, hashAppPassword, verifyAppPassword } from "../mail/submission/appPasswords.ts";
import type { SubmissionEnvelope, SubmissionHandler, SubmissionListenerConfig, SubmissionUser } from "../mail/submission/SubmissionListener.ts";
import type { BridgeConfig } from "../config/schema.ts";
import type { Mailbox } from "./InboundRouter.ts";
import { personalAddressTaken } from "./Addressing.ts";
import { InvalidAddressError, mailboxUserId, mintMessageId, normalizeAddress, personalAddress, type IdContext } from "./ids.ts";
import type { NoticeService } from "./NoticeService.ts";
import type { MatrixActions } from "./ports.ts";
import { errorFields, getLogger } from "../util/logger.ts";

const log = getLogger("bridge/submission");

/** The outbound queue's event key of a submitted mail starts with this (no Matrix event carries it). */
export const SUBMISSION_EVENT_PREFIX = "submission:";

/** Whether an outbound row's event key is a submitted mail's. */
export function isSubmissionEvent(eventId: string): boolean {
  return eventId.startsWith(SUBMISSION_EVENT_PREFIX);
}

/** Longest text of a submitted mail posted into a room, in characters; the rest is cut with a note. */
const MAX_POSTED_CHARS = 20_000;

/** Options of {@link Submission}. */
export interface SubmissionOptions {
  store: BridgeStore;
  matrix: Pick<MatrixActions, "botUserId" | "sendEvent" | "botDm" | "classifyError">;
  ids: IdContext;
  /** Whether a Matrix user may use the bridge (`permissions.allowed_users`). */
  mayBridge: (userId: string) => boolean;
  /** Signs outgoing mail (d= the mail domain), or null for none. */
  dkim: DkimSigner | null;
  /** The bridge's mailbox of an address on the mail domain (the inbound router's `resolveMailbox`), or null. */
  resolveMailbox: (address: string) => Promise<Mailbox | null>;
  notices: Pick<NoticeService, "post">;
  /** Wake the outbound queue. */
  onQueued: () => void;
  /**
   * The per-user sending limits of mail from Matrix (`outbound.max_mails_per_user_per_hour`,
   * `…_new_recipients_per_user_per_day`; 0: none), counted together with it.
   */
  limits: { mailsPerHour: number; newRecipientsPerDay: number };
  /** Clock, epoch ms (tests). */
  now?: () => number;
}

/** The bridge's {@link SubmissionHandler}. */
export class Submission implements SubmissionHandler {
  private readonly opts: SubmissionOptions;
  /** A hash no password matches, checked for unknown logins (made on first use). */
  #decoy: Promise<string> | null = null;

  constructor(opts: SubmissionOptions) {
    this.opts = opts;
  }

  /**
   * The local user a login names: `@alice:server`, or `alice@<mail domain>`; null for anything
   * else, or a user not allowed to bridge.
   */
  userOfLogin(login: string): SubmissionUser | null {
    const { ids } = this.opts;
    const name = login.trim();
    let userId: string | null;
    if (name.startsWith("@")) {
      userId = name;
    } else {
      let address: string;
      try {
        address = normalizeAddress(name);
      } catch (err) {
        if (err instanceof InvalidAddressError) return null;
        throw err;
      }
      const at = address.lastIndexOf("@");
      userId = address.slice(at + 1) === ids.mailDomain ? mailboxUserId(address.slice(0, at), ids) : null;
    }
    const address = userId ? personalAddress(userId, ids) : null;
    if (!userId || !address || !this.opts.mayBridge(userId)) return null;
    return { userId, address };
  }

  /**
   * RFC 4954 AUTH: the login's user and one of their app passwords.
   * @returns the user, or null for a wrong login or password
   * @throws the store's error (the listener answers 454 4.7.0)
   */
  async authenticate(login: string, password: string): Promise<SubmissionUser | null> {
    const found = this.userOfLogin(login);
    // An address given out to a room mailbox or an alias is not this user's to send from.
    const user = found && !(await personalAddressTaken(this.opts.store, found.address)) ? found : null;
    const rows = user && password !== "" ? await this.opts.store.listAppPasswords(user.userId) : [];
    if (!user || rows.length === 0) {
      // As slow as a wrong password: the answer's timing does not tell which logins exist.
      this.#decoy ??= hashAppPassword("decoy");
      await verifyAppPassword(password, await this.#decoy);
      return null;
    }
    for (const row of rows) {
      let ok: boolean;
      try {
        ok = await verifyAppPassword(password, row.hash);
      } catch (err) {
        if (!(err instanceof MalformedPasswordHashError)) throw err;
        log.error("stored app password hash is unusable: that password cannot log in", { user: user.userId, label: row.label, ...errorFields(err) });
        continue;
      }
      if (ok) {
        await this.opts.store.markAppPasswordUsed(row.id, this.#now());
        return user;
      }
    }
    return null;
  }

  /**
   * RCPT TO: on the mail domain, a room mailbox or a personal mailbox (else 550 5.1.1);
   * elsewhere, any valid address (553 5.1.3 otherwise).
   * @throws SmtpReply; the homeserver's error when a personal mailbox cannot be checked (451)
   */
  async checkRecipient(address: string, envelope: SubmissionEnvelope): Promise<void> {
    if (this.#isLocal(address)) {
      await this.#localMailbox(address);
      return;
    }
    try {
      normalizeAddress(address);
    } catch (err) {
      if (err instanceof InvalidAddressError) throw new SmtpReply(553, "5.1.3", `<${address}>: ${err.message}`);
      throw err;
    }
    log.debug("submission recipient outside", { session: envelope.sessionId, rcpt: address });
  }

  /**
   * Commit a submitted mail: queue it for the outside recipients (DKIM-signed), post it for the
   * local ones, then tell the DM portals. Resolves only when all of that before the notices is done.
   * @throws SmtpReply 554 5.6.0 for a mail that cannot be read, 451 4.7.1 over a per-user sending
   *   limit, 550 5.2.1 when the homeserver refuses the post into a local mailbox's room; the
   *   store's or homeserver's temporary error (the listener answers 451 4.3.0)
   */
  async deliver(raw: Buffer, envelope: SubmissionEnvelope): Promise<void> {
    const { ids, store } = this.opts;
    const { user } = envelope;
    const prepared = this.#withRequiredHeaders(raw);
    const mail = await parseMail(prepared.raw, { attachments: "metadata" });
    if (mail.unreadable) throw new SmtpReply(554, "5.6.0", `message could not be parsed: ${mail.unreadable}`);
    const subject = mail.subject?.trim() || "(no subject)";
    const outside = envelope.rcptTo.filter((a) => !this.#isLocal(a)).map((a) => normalizeAddress(a, { caseSensitiveLocalparts: ids.caseSensitiveLocalparts }));
    const local = envelope.rcptTo.filter((a) => this.#isLocal(a));

    const portals: string[] = [];
    /** The outbound row's key: the same submission (a client's retry after a lost 250) is queued and noted once. */
    let key = "";
    let messageId = prepared.messageId;
    if (outside.length > 0) {
      for (const address of outside) {
        const dm = await store.getDmPortal(user.userId, address, true);
        if (dm && !portals.includes(dm.roomId)) portals.push(dm.roomId);
      }
      key = createHash("sha256").update(user.userId).update("\0").update(outside.join(",")).update("\0").update(raw).digest("hex").slice(0, 40);
      const eventId = `${SUBMISSION_EVENT_PREFIX}${key}`;
      // A retry of a mail already queued is no new mail for the limits.
      if (!(await store.getOutboundByEvent(eventId))) await this.#checkLimits(user, outside, envelope.sessionId);
      const signed = this.opts.dkim ? await signWithDkim(prepared.raw, this.opts.dkim) : prepared.raw;
      const { duplicate, row } = await store.enqueueOutbound({
        // The first DM portal hears of failures and delays; none: the user's DM with the bot.
        roomId: portals[0] ?? "",
        eventId,
        messageId: prepared.messageId,
        envelopeFrom: user.address,
        recipients: outside,
        raw: signed,
      });
      log.info(duplicate ? "submitted mail already queued (a retry)" : "submitted mail queued", {
        session: envelope.sessionId,
        user: user.userId,
        outboundId: row.id,
        messageId: row.messageId,
        recipients: outside.length,
        signed: this.opts.dkim !== null,
      });
      if (!duplicate) this.opts.onQueued();
      // A retry of a mail without a Message-ID minted another one: the queued mail's counts.
      messageId = row.messageId;
    }

    for (const address of local) {
      const mailbox = await this.#localMailbox(address);
      const roomId = mailbox.kind === "room" ? mailbox.roomId : await this.opts.matrix.botDm(mailbox.userId);
      const body = [`✉️ Mail from ${user.userId} (${user.address}), sent from a mail client:`, `Subject: ${subject}`, "", cut(mail.text.trim())];
      if (mail.attachments.length > 0) body.push("", `📎 ${mail.attachments.length} attachment(s) not shown: attachments of submitted mail are not posted.`);
      const txnId = `meb-sub-${createHash("sha256").update(roomId).update("\0").update(raw).digest("hex").slice(0, 32)}`;
      let eventId: string;
      try {
        eventId = await this.opts.matrix.sendEvent(this.opts.matrix.botUserId, roomId, "m.room.message", { msgtype: "m.text", body: body.join("\n") }, txnId);
      } catch (err) {
        // The homeserver refused the post itself (the bot left the room, …): a retry cannot help.
        if (this.opts.matrix.classifyError(err).temporary) throw err;
        log.warn("submitted mail cannot be posted: the homeserver refused it", { session: envelope.sessionId, user: user.userId, rcpt: address, roomId, ...errorFields(err) });
        throw Rejections.portalGone(address);
      }
      log.info("submitted mail posted", { session: envelope.sessionId, user: user.userId, rcpt: address, roomId, eventId });
    }

    // After the commit: a lost notice loses no mail, so it is logged, not retried.
    for (const roomId of portals) {
      const to = outside.join(", ");
      try {
        const txnId = `meb-subn-${key}-${createHash("sha256").update(roomId).digest("hex").slice(0, 16)}`;
        const eventId = await this.opts.notices.post(roomId, `📤 You sent “${subject}” to ${to} by mail (from a mail client).`, undefined, txnId);
        // Replies to the mail then continue this conversation, as replies to the notice.
        await store.insertMessage({ roomId, eventId, messageId, references: mail.references, direction: "outbound", sender: user.address, subject, participants: outside, viaList: false });
      } catch (err) {
        log.warn("could not note a submitted mail in its portal", { session: envelope.sessionId, user: user.userId, roomId, ...errorFields(err) });
      }
    }
  }

  /**
   * Post a delivery notice (failure, delay) of a submitted mail: in its portal, else in the
   * sender's DM with the bot. Never as a reply (no Matrix event carries the mail).
   * @param envelopeFrom the submitting user's address (the mail's envelope sender)
   * @throws the homeserver's error (the outbound queue retries)
   */
  async notice(roomId: string, envelopeFrom: string, text: string): Promise<void> {
    let room = roomId;
    if (!room) {
      const at = envelopeFrom.lastIndexOf("@");
      const userId = at > 0 && envelopeFrom.slice(at + 1) === this.opts.ids.mailDomain ? mailboxUserId(envelopeFrom.slice(0, at), this.opts.ids) : null;
      if (!userId) {
        log.warn("a notice about submitted mail has nobody to go to", { envelopeFrom, text });
        return;
      }
      room = await this.opts.matrix.botDm(userId);
    }
    await this.opts.notices.post(room, text);
  }

  /**
   * The per-user limits, shared with mail from Matrix (same envelope sender).
   * @throws SmtpReply 451 4.7.1 when over one (the client may try again later)
   */
  async #checkLimits(user: SubmissionUser, recipients: string[], session: string): Promise<void> {
    const { store, limits } = this.opts;
    const now = this.#now();
    const ctx = { session, user: user.userId };
    if (limits.mailsPerHour > 0) {
      const sent = await store.countOutboundSince(user.address, now - 3_600_000);
      if (sent >= limits.mailsPerHour) {
        log.warn("sending limit reached: mails per hour", { ...ctx, sent, limit: limits.mailsPerHour });
        throw new SmtpReply(451, "4.7.1", `you sent ${sent} mails in the last hour, the limit of this bridge (${limits.mailsPerHour}); try again later`);
      }
    }
    if (limits.newRecipientsPerDay > 0) {
      const known = await store.knownOutboundRecipients(user.address, recipients);
      const fresh = recipients.filter((a) => !known.has(a)).length;
      const already = fresh > 0 ? await store.countNewRecipientsSince(user.address, now - 86_400_000) : 0;
      if (fresh > 0 && already + fresh > limits.newRecipientsPerDay) {
        log.warn("sending limit reached: new recipients per day", { ...ctx, already, adding: fresh, limit: limits.newRecipientsPerDay });
        throw new SmtpReply(451, "4.7.1", `this would make ${already + fresh} new addresses for you today, over the limit of this bridge (${limits.newRecipientsPerDay} a day); try again tomorrow`);
      }
    }
  }

  #now(): number {
    return (this.opts.now ?? Date.now)();
  }

  #isLocal(address: string): boolean {
    return address.slice(address.lastIndexOf("@") + 1).toLowerCase() === this.opts.ids.mailDomain;
  }

  /**
   * The room mailbox or personal mailbox of a local address.
   * @throws SmtpReply 550 5.1.1 for anything else (no such mailbox, command and admin addresses)
   */
  async #localMailbox(address: string): Promise<Extract<Mailbox, { kind: "room" } | { kind: "personal" }>> {
    const mailbox = await this.opts.resolveMailbox(address);
    if (mailbox?.kind === "personal" || (mailbox?.kind === "room" && !mailbox.command)) return mailbox;
    throw new SmtpReply(550, "5.1.1", `<${address}>: no such mailbox here`);
  }

  /**
   * RFC 6409 §8.3, §8.4: an MSA may add a missing Date and Message-ID. Both are needed here (the
   * queue keys mail by Message-ID; RFC 5322 §3.6 requires Date). Any `Bcc:` field is removed
   * (RFC 5322 §3.6.3, the first method): blind recipients must not be shown to the others.
   */
  #withRequiredHeaders(original: Buffer): { raw: Buffer; messageId: string } {
    const raw = withoutBcc(original);
    const end = raw.indexOf("\r\n\r\n");
    const head = raw.subarray(0, end >= 0 ? end : raw.length).toString("latin1");
    const existing = /^message-id:[ \t]*<([^<>\s]+@[^<>\s]+)>/im.exec(head)?.[1];
    const added: string[] = [];
    const messageId = existing ?? mintMessageId(this.opts.ids.mailDomain);
    if (!existing) added.push(`Message-ID: <${messageId}>`);
    if (!/^date:/im.test(head)) added.push(`Date: ${new Date(this.#now()).toUTCString().replace("GMT", "+0000")}`);
    if (added.length === 0) return { raw, messageId };
    return { raw: Buffer.concat([Buffer.from(added.join("\r\n") + "\r\n", "latin1"), raw]), messageId };
  }
}

/**
 * The message without its `Bcc:` header fields (with their folded continuation lines).
 * @param raw an RFC 5322 message with CRLF line ends
 * @returns `raw` itself when it has none
 */
export function withoutBcc(raw: Buffer): Buffer {
  const end = raw.indexOf("\r\n\r\n");
  const headEnd = end >= 0 ? end + 2 : raw.length;
  const head = raw.subarray(0, headEnd).toString("latin1");
  if (!/^bcc[ \t]*:/im.test(head)) return raw;
  const kept = head.replace(/^bcc[ \t]*:.*\r\n(?:[ \t].*\r\n)*/gim, "");
  return Buffer.concat([Buffer.from(kept, "latin1"), raw.subarray(headEnd)]);
}

function cut(text: string): string {
  return text.length > MAX_POSTED_CHARS ? `${text.slice(0, MAX_POSTED_CHARS)}\n… (cut: the mail is longer)` : text;
}

/**
 * The submission listener's settings from the config: the `submission` section, its TLS files
 * (else smtp's) and the MX listener's size and structure limits (`smtp.*`).
 * @throws Error naming `submission.tls_cert_file` when neither section has TLS files (the config
 *   loader refuses that already)
 */
export function submissionListenerConfig(config: BridgeConfig): SubmissionListenerConfig {
  const sub = config.submission;
  const smtp = config.smtp;
  const cert = sub.tls_cert_file ?? smtp.tls_cert_file;
  const key = sub.tls_cert_file ? sub.tls_key_file : smtp.tls_key_file;
  if (!cert || !key) throw new Error("submission.tls_cert_file (or smtp.tls_cert_file) is required when submission.enabled is true");
  return {
    bind_address: sub.bind_address,
    port: sub.port,
    hostname: smtp.hostname,
    tls_cert_file: cert,
    tls_key_file: key,
    max_auth_failures_per_ip: sub.max_auth_failures_per_ip,
    max_message_bytes: smtp.max_message_bytes,
    max_clients: smtp.max_clients,
    max_recipients: smtp.max_recipients,
    max_header_bytes: smtp.max_header_bytes,
    max_mime_parts: smtp.max_mime_parts,
    max_mime_depth: smtp.max_mime_depth,
    max_received_headers: smtp.max_received_headers,
  };
}
