/**
 * Posts committed inbound mail into Matrix, as the sender's ghost.
 *
 * Works from the store's inbound queue, so mail answered with 250 is posted even
 * after a crash: pending rows are picked up again at start. Each post uses a
 * transaction ID derived from the row, so a retry does not post twice.
 */
import type { BridgeStore, InboundRow } from "../store/Store.ts";
import { parseMail, stripQuotedReply } from "../mail/inbound/parse.ts";
import { parseSpamHeader } from "../mail/inbound/rspamd.ts";
import { ghostUserId, type IdContext } from "./ids.ts";
import { mailToMatrix } from "./format.ts";
import type { MatrixActions } from "./ports.ts";
import { getLogger, errorFields } from "../util/logger.ts";

const log = getLogger("bridge/inbound");

/** Options for {@link InboundPoster}. */
export interface InboundPosterOptions {
  store: BridgeStore;
  matrix: MatrixActions;
  ids: IdContext;
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
    const ghostId = ghostUserId(row.sender, ids);
    const ghost = await store.getGhostByAddress(row.sender);
    const fromName = mail.from?.name?.trim() || null;
    const displayName = fromName ?? ghost?.displayName ?? row.sender;
    await matrix.ensureGhost(ghostId, displayName, ghost?.displayName ?? null);
    if (!ghost || ghost.displayName !== displayName) await store.upsertGhost({ address: row.sender, userId: ghostId, displayName });

    let roomId = row.roomId;
    if (!roomId) {
      const localUser = row.dmLocalUserId;
      if (!localUser) throw new Error("inbound row has neither a room nor a DM target");
      const existing = await store.getDmPortal(localUser, row.sender);
      if (existing) {
        roomId = existing.roomId;
      } else {
        roomId = await matrix.createDm(ghostId, localUser, `Email with ${row.sender}`);
        await store.upsertPortal({ roomId, kind: "dm", localUserId: localUser, remoteAddress: row.sender, subject: mail.subject, encrypted: false });
        log.info("DM portal created", { roomId, user: localUser, address: row.sender });
      }
      await store.setInboundRoom(row.id, roomId);
    } else {
      await matrix.join(roomId, ghostId);
    }

    const isReply = row.replyToEventId !== null;
    const content = mailToMatrix(
      { subject: mail.subject, text: isReply ? stripQuotedReply(mail.text) : mail.text, html: isReply ? null : mail.html },
      !isReply,
    );
    const spam = parseSpamHeader(row.raw);
    if (spam && (spam.action === "add header" || spam.action === "rewrite subject")) {
      const warning = `⚠️ Possible spam (rspamd score ${spam.score.toFixed(1)} of ${spam.requiredScore.toFixed(1)})`;
      content.body = `${warning}\n\n${String(content.body)}`;
      content.formatted_body = `<p><em>${warning}</em></p>${String(content.formatted_body)}`;
    }
    if (row.replyToEventId) content["m.relates_to"] = { "m.in_reply_to": { event_id: row.replyToEventId } };
    const eventId = await matrix.sendEvent(ghostId, roomId, "m.room.message", content, `meb-in-${row.id}`);
    await store.insertMessage({
      roomId,
      eventId,
      messageId: row.messageId,
      references: mail.references,
      direction: "inbound",
      sender: row.sender,
      subject: mail.subject,
    });
    for (const [i, att] of mail.attachments.entries()) {
      const filename = att.filename ?? `attachment-${i + 1}`;
      const url = await matrix.uploadContent(ghostId, att.content, att.contentType, filename);
      const msgtype = att.contentType.startsWith("image/") ? "m.image" : att.contentType.startsWith("audio/") ? "m.audio" : att.contentType.startsWith("video/") ? "m.video" : "m.file";
      await matrix.sendEvent(
        ghostId,
        roomId,
        "m.room.message",
        { msgtype, body: filename, url, info: { mimetype: att.contentType, size: att.size } },
        `meb-in-${row.id}-att-${i}`,
      );
    }
    await store.markInboundPosted(row.id, eventId);
    log.info("mail posted", { inbound: row.id, messageId: row.messageId, roomId, eventId, ghost: ghostId });
  }
}
