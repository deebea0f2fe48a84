/**
 * Posts committed inbound mail into Matrix, as the sender's ghost.
 *
 * Works from the store's inbound queue, so mail answered with 250 is posted even
 * after a crash: pending rows are picked up again at start. Each post uses a
 * transaction ID derived from the row, so a retry does not post twice.
 */
import type { BridgeStore, InboundRow } from "../store/Store.ts";
import { parseMail, stripQuotedReply } from "../mail/inbound/parse.ts";
import type { IdContext } from "./ids.ts";
import { AUTH_FIELD, authContent, mailToMatrix, unverifiedWarning } from "./format.ts";
import { sanitizeHtml } from "./sanitize.ts";
import { Ghost } from "./Ghost.ts";
import type { MatrixActions } from "./ports.ts";
import { getLogger, errorFields } from "../util/logger.ts";

const log = getLogger("bridge/inbound");

/** Options for {@link InboundPoster}. */
export interface InboundPosterOptions {
  store: BridgeStore;
  matrix: MatrixActions;
  ids: IdContext;
  /** The bridge bot's display name: no ghost may take it. */
  botDisplayName: string;
  /** Interval between passes when idle, in ms (default 5000). */
  pollMs?: number;
  /** Attempts before a row is given up as `failed` (default 20). */
  maxAttempts?: number;
}

/** The inbound queue worker. One pass at a time; rows in arrival order. */
export class InboundPoster {
  private readonly opts: InboundPosterOptions;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = true;

  constructor(opts: InboundPosterOptions) {
    this.opts = opts;
  }

  /** Start polling; pending rows from before a restart are posted now. */
  start(): void {
    this.stopped = false;
    this.kick();
  }

  /** Stop polling and wait for the current pass. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.running;
  }

  /** Run a pass now (after a commit); a pass in progress is followed by another. */
  kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.running = this.pass()
      .catch((err: unknown) => log.error("inbound pass failed", errorFields(err)))
      .finally(() => {
        this.running = null;
        if (this.stopped) return;
        if (this.again) {
          this.again = false;
          this.kick();
        } else {
          this.timer = setTimeout(() => this.kick(), this.opts.pollMs ?? 5000);
        }
      });
  }

  /** Wait until the queue is drained (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  private async pass(): Promise<void> {
    const rows = await this.opts.store.listPendingInbound(50);
    for (const row of rows) {
      if (this.stopped) return;
      try {
        await this.post(row);
      } catch (err) {
        const final = row.attempts + 1 >= (this.opts.maxAttempts ?? 20);
        const fields = { inbound: row.id, messageId: row.messageId, roomId: row.roomId ?? undefined, sender: row.sender, attempt: row.attempts + 1, ...errorFields(err) };
        if (final) log.error("giving up posting mail into Matrix", fields);
        else log.warn("posting mail into Matrix failed, will retry", fields);
        await this.opts.store.markInboundAttempt(row.id, errorFields(err).error as string, final);
      }
    }
  }

  /** Post one row: ghost profile, DM portal if needed, message, attachments, mapping. */
  private async post(row: InboundRow): Promise<void> {
    const { store, matrix, ids } = this.opts;
    const mail = await parseMail(row.raw);
    const ghost = Ghost.of(row.sender, row.senderVerified, ids);
    // Only authenticated mail speaks for the address: the name follows its From header.
    await ghost.ensureProfile({ store, matrix, ids, botDisplayName: this.opts.botDisplayName }, row.senderVerified ? row.senderName : null);

    let roomId = row.roomId;
    if (!roomId) {
      const localUser = row.dmLocalUserId;
      if (!localUser) throw new Error("inbound row has neither a room nor a DM target");
      const existing = await store.getDmPortal(localUser, row.sender, ghost.verified);
      if (existing) {
        roomId = existing.roomId;
      } else {
        const topic = ghost.verified ? `Email with ${row.sender}` : `⚠️ Unverified sender: mail claiming to be from ${row.sender} that could not be authenticated`;
        roomId = await matrix.createDm(ghost.userId, localUser, topic);
        await store.upsertPortal({ roomId, kind: "dm", localUserId: localUser, remoteAddress: row.sender, subject: mail.subject, encrypted: false, remoteVerified: ghost.verified });
        log.info("DM portal created", { roomId, user: localUser, address: row.sender, verified: ghost.verified });
      }
      await store.setInboundRoom(row.id, roomId);
    } else {
      await matrix.join(roomId, ghost.userId);
    }

    const isReply = row.replyToEventId !== null;
    const html = !isReply && mail.html ? sanitizeHtml(mail.html) || null : null;
    const content = mailToMatrix({ subject: mail.subject, text: isReply ? stripQuotedReply(mail.text) : mail.text, html }, !isReply);
    const warnings: string[] = [];
    if (!row.senderVerified) warnings.push(unverifiedWarning(row.sender, row.auth));
    if (row.spam && (row.spam.action === "add header" || row.spam.action === "rewrite subject")) {
      warnings.push(`⚠️ Possible spam (rspamd score ${row.spam.score.toFixed(1)} of ${row.spam.requiredScore.toFixed(1)})`);
    }
    for (const warning of warnings.reverse()) {
      content.body = `${warning}\n\n${String(content.body)}`;
      content.formatted_body = `<p><em>${escapeHtml(warning)}</em></p>${String(content.formatted_body)}`;
    }
    const verdict = authContent(row.auth);
    content[AUTH_FIELD] = verdict;
    if (row.replyToEventId) content["m.relates_to"] = { "m.in_reply_to": { event_id: row.replyToEventId } };
    const eventId = await matrix.sendEvent(ghost.userId, roomId, "m.room.message", content, `meb-in-${row.id}`);
    await store.insertMessage({
      roomId,
      eventId,
      messageId: row.messageId,
      references: mail.references,
      direction: "inbound",
      sender: row.sender,
      subject: mail.subject,
      participants: row.participants,
    });
    for (const [i, att] of mail.attachments.entries()) {
      const filename = att.filename ?? `attachment-${i + 1}`;
      const url = await matrix.uploadContent(ghost.userId, att.content, att.contentType, filename);
      const msgtype = att.contentType.startsWith("image/") ? "m.image" : att.contentType.startsWith("audio/") ? "m.audio" : att.contentType.startsWith("video/") ? "m.video" : "m.file";
      await matrix.sendEvent(
        ghost.userId,
        roomId,
        "m.room.message",
        { msgtype, body: filename, url, info: { mimetype: att.contentType, size: att.size }, [AUTH_FIELD]: verdict },
        `meb-in-${row.id}-att-${i}`,
      );
    }
    await store.markInboundPosted(row.id, eventId);
    log.info("mail posted", { inbound: row.id, messageId: row.messageId, roomId, eventId, ghost: ghost.userId });
  }
}

function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}
