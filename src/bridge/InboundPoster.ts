/**
 * Posts committed inbound mail into Matrix, as the sender's ghost: the inbound queue.
 *
 * RFC 5321 §6.1: once the bridge answered 250 the mail is its responsibility. So:
 * - rows live in the store and are picked up again after a crash or restart;
 * - each post uses transaction IDs derived from the row, so a retry never posts twice;
 * - a failure the homeserver may get over (down, 5xx, 429 with `retry_after_ms`) is retried
 *   with exponential backoff and jitter for `inbound.retry_hours` after arrival; the row waits
 *   in the store, and only its own room waits with it (the store hands out the oldest pending
 *   row of each room), so per-room order is the arrival order and other rooms go on;
 * - a mail the homeserver refuses for its content is first made postable (long text cut at a
 *   marker with the full text attached; names cleaned and cut; an attachment whose upload fails
 *   posted as `application/octet-stream`, or named in a notice);
 * - what truly cannot be posted is given up loudly: a notice in the room when there is one,
 *   the sender hears why (a DSN, through `onUndeliverable`), and the raw mail stays in the
 *   store (`matrix-email-bridge queue show`).
 * A reply is a rich reply in DM and group portals and a thread message in a room mailbox
 * (bridge/threads.ts), its quoted history and signature folded away (mail/inbound/replyFold.ts)
 * with the whole mail attached as message.eml; HTML is cut to the spec's nesting and deceptive
 * links show their target (bridge/format/sanitize.ts); inline `cid:` images are uploaded and shown in
 * place, forwarded messages and calendar invitations are shown as blocks after the text
 * (bridge/format/mailParts.ts); automatic mail (RFC 3834) is an `m.notice` ({@link isAutomatic});
 * attachment names lose control and bidi characters ({@link cleanFilename}).
 * One {@link QueueWorker} runs the passes (the same worker shape as the outbound queue).
 */
import type { AuthFields, BridgeStore, InboundRow, MessageRow, PortalRow, QueuedInbound, StoredRaw } from "../store/Store.ts";
import { attachmentSizes, forEachAttachment, parseMail, type MailAttachment, type MailAttachmentInfo, type ParsedMailSummary, type StreamedAttachment } from "../mail/inbound/parse.ts";
import { MailParseError } from "../mail/inbound/parseThread.ts";
import { RawDecryptError } from "../store/rawCipher.ts";
import { foldReply, type FoldedReply } from "../mail/inbound/replyFold.ts";
import { noParts, prepareParts, replaceImages, type InlineImage, type PreparedParts } from "./format/mailParts.ts";
import type { ParsedMailCache } from "./ParsedMailCache.ts";
import { parseDsn } from "../mail/dsn.ts";
import type { IdContext } from "./ids.ts";
import { AUTH_FIELD, NO_TEXT, RECIPIENT_FIELD, authContent, cutSubjectWarning, cutText, droppedImagesWarning, mailToMatrix, recipientLine, showSubject, unverifiedWarning } from "./format/toMatrix.ts";
import { escapeHtml } from "./format/html.ts";
import { encryptFile } from "./format/encryptedFile.ts";
import { sanitizeHtml, sanitizeMailHtml } from "./format/sanitize.ts";
import { continuableMessages, replyRelation, storedReferences, threadIdsOf, threadRelation, type ThreadRelation } from "./threads.ts";
import { Ghost } from "./Ghost.ts";
import { portalOf } from "./Portal.ts";
import { invitePreview } from "./Contacts.ts";
import type { NoticeService } from "./NoticeService.ts";
import type { HomeserverFailure, MatrixActions, MediaStream } from "./ports.ts";
import { QueueWorker, backoffMs, type PassResult } from "../util/worker.ts";
import { getLogger } from "../util/logger.ts";

const log = getLogger("bridge/inbound");

/**
 * Budget for one event's JSON, in bytes: Synapse refuses events over 65 536 bytes as a whole
 * (Matrix spec, "Size limits"); the rest is left for the event's envelope and signatures.
 */
const EVENT_JSON_BUDGET = 56_000;

/** The `inbound` config section, as the poster takes it. */
export interface InboundQueueSettings {
  /** Retry temporary failures for this long after arrival, in hours. */
  retryHours: number;
  /** First retry delay, in ms (doubles, with jitter). */
  retryBaseMs: number;
  /** Longest retry delay, in ms. */
  retryMaxMs: number;
  /** Rooms posted into at once. */
  concurrency: number;
  /** Longest text in one event, in bytes. */
  maxTextBytes: number;
}

/** Why a mail was given up. */
export interface Undeliverable {
  /** RFC 3463 status for the DSN, e.g. `5.3.4` (too big), `4.4.7` (retries exhausted), `5.2.1`. */
  status: string;
  /** One line: what the homeserver said or what went wrong. */
  diagnostic: string;
}

/** Options for {@link InboundPoster}. */
export interface InboundPosterOptions {
  /**
   * Parse a stored message (attachments only counted) when its DATA-time parse is not at hand (a
   * retry, or a row from before a restart). Default: `parseMail` on the event loop. The bridge
   * parses large messages in a worker thread (mail/inbound/parseThread.ts).
   * @throws MailParseError when the message cannot be parsed; other errors are temporary
   */
  parse?: (raw: Buffer) => Promise<ParsedMailSummary>;
  store: BridgeStore;
  matrix: MatrixActions;
  ids: IdContext;
  /** The bridge bot's display name: no ghost may take it. */
  botDisplayName: string;
  settings: InboundQueueSettings;
  /** Posts the "could not be posted" notice into the room. */
  notices: Pick<NoticeService, "post">;
  /** `permissions.admin_room`: told when a given-up mail's own room cannot be (null: none). */
  adminRoom?: string | null;
  /**
   * Tell the sender a mail cannot be delivered (a DSN). Throwing keeps the row pending (it is
   * tried again later), so a mail is never marked failed without its sender hearing of it.
   */
  onUndeliverable: (row: QueuedInbound, why: Undeliverable) => Promise<void>;
  /** The parses the router made at DATA time (parse once); a row not in it is parsed from the stored message. */
  parsed?: ParsedMailCache;
  /** Safety-net poll interval, in ms (default 10 000). */
  pollMs?: number;
  /** Clock in epoch ms (tests). */
  clock?: () => number;
  /** Told the outcome of every post attempt once it is recorded (metrics). Must not throw. */
  onResult?: (outcome: InboundPostOutcome) => void;
}

/** One post attempt's outcome, for {@link InboundPosterOptions.onResult}. */
export interface InboundPostOutcome {
  /** `posted`; `retry`: a temporary failure, tried again later; `failed`: given up (sender told). */
  result: "posted" | "retry" | "failed";
  /** Which attempt of the row this was, 1 for the first. */
  attempt: number;
  /** Time from the row's `receivedAt` (the SMTP 250) to now, in ms. */
  ageMs: number;
}

/** A failure the poster decided, not the homeserver: the row is given up with this status. */
class PermanentPostError extends Error {
  readonly status: string;
  constructor(status: string, message: string) {
    super(message);
    this.name = "PermanentPostError";
    this.status = status;
  }
}

/** The inbound queue worker. */
export class InboundPoster {
  private readonly opts: InboundPosterOptions;
  private readonly worker: QueueWorker;
  private readonly clock: () => number;

  constructor(opts: InboundPosterOptions) {
    this.opts = opts;
    this.clock = opts.clock ?? Date.now;
    this.worker = new QueueWorker({ name: "inbound", pass: () => this.pass(), pollMs: opts.pollMs ?? 10_000, clock: this.clock });
  }

  /** Start; rows pending from before a restart are posted now. */
  start(): void {
    this.worker.start();
  }

  /** Stop and wait for the pass in flight. */
  async stop(): Promise<void> {
    await this.worker.stop();
  }

  /** Run a pass now (after a commit). */
  kick(): void {
    this.worker.kick();
  }

  /** Resolves when no pass runs and none is pending (tests, shutdown). */
  async idle(): Promise<void> {
    await this.worker.idle();
  }

  /** One pass: the due head row of each room, up to `concurrency` rooms at once. */
  private async pass(): Promise<PassResult> {
    const { store, settings } = this.opts;
    const rows = await store.listDueInbound(this.clock(), settings.concurrency * 4);
    let next = 0;
    const lane = async (): Promise<void> => {
      while (next < rows.length) await this.attempt(rows[next++]!);
    };
    await Promise.all(Array.from({ length: Math.min(settings.concurrency, rows.length) }, lane));
    return { didWork: rows.length > 0, nextDueAt: (await store.nextInboundAttemptAt()) ?? undefined };
  }

  /** Try one row; decide retry or give-up on failure. Never throws for a row's own failure. */
  private async attempt(row: QueuedInbound): Promise<void> {
    const ctx = { inbound: row.id, messageId: row.messageId, roomId: row.roomId ?? undefined, sender: row.sender, attempt: row.attempts + 1 };
    try {
      await this.post(row);
      this.opts.onResult?.({ result: "posted", attempt: row.attempts + 1, ageMs: this.clock() - row.receivedAt });
      return;
    } catch (err) {
      // A stored mail that cannot be decrypted (its key is not configured) is not the
      // homeserver's doing and must never run into a DSN: the pass fails (logged, retried with
      // backoff) and the queue waits until the key is back (docs/security.md, "Stored mail").
      if (err instanceof RawDecryptError) throw err;
      const failure: HomeserverFailure =
        err instanceof PermanentPostError
          ? { temporary: false, retryAfterMs: null, status: null, errcode: null, message: err.message }
          : this.opts.matrix.classifyError(err);
      const deadline = row.receivedAt + this.opts.settings.retryHours * 3_600_000;
      const now = this.clock();
      if (failure.temporary && now < deadline) {
        const wait = Math.max(
          backoffMs(row.attempts + 1, { baseMs: this.opts.settings.retryBaseMs, maxMs: this.opts.settings.retryMaxMs, jitter: 0.2 }),
          failure.retryAfterMs ?? 0,
        );
        log.warn("posting mail into Matrix failed, will retry", { ...ctx, error: failure.message, retryInMs: wait });
        await this.opts.store.markInboundRetry(row.id, failure.message, Math.min(now + wait, deadline));
        this.opts.onResult?.({ result: "retry", attempt: row.attempts + 1, ageMs: this.clock() - row.receivedAt });
        return;
      }
      const why: Undeliverable = failure.temporary
        ? { status: "4.4.7", diagnostic: `the homeserver could not take the message for ${this.opts.settings.retryHours} hours: ${failure.message}` }
        : err instanceof PermanentPostError
          ? { status: err.status, diagnostic: err.message }
          : { status: refusalStatus(failure), diagnostic: `the homeserver refused the message: ${failure.message}` };
      await this.giveUp(row, why, ctx);
    }
  }

  /** Give a row up: notice in its room (best effort), DSN to the sender, then `failed`. */
  private async giveUp(row: QueuedInbound, why: Undeliverable, ctx: Record<string, unknown>): Promise<void> {
    log.error("mail cannot be posted into Matrix, giving up", { ...ctx, status: why.status, error: why.diagnostic });
    // Best effort: the room may be exactly what cannot be reached (the DSN is what counts);
    // then the admin room, when there is one, hears of it.
    const text = `⚠️ A mail from ${row.sender} could not be posted here (${why.diagnostic}). The sender was told; the bridge keeps the mail (queue id ${row.id}).`;
    let told = false;
    if (row.roomId) {
      try {
        await this.opts.notices.post(row.roomId, text, undefined, `meb-in-${row.id}-failed`);
        told = true;
      } catch (err) {
        log.warn("could not post the undeliverable notice in the room", { ...ctx, error: err instanceof Error ? err.message : String(err) });
      }
    }
    if (!told && this.opts.adminRoom) {
      const where = row.roomId ? ` for room ${row.roomId}` : "";
      await this.opts.notices
        .post(this.opts.adminRoom, text.replace("could not be posted here", `could not be posted${where}`), undefined, `meb-in-${row.id}-failed-admin`)
        .catch((err: unknown) => log.warn("could not post the undeliverable notice in the admin room", { ...ctx, error: err instanceof Error ? err.message : String(err) }));
    }
    try {
      await this.opts.onUndeliverable(row, why);
    } catch (err) {
      // The sender must hear of it: keep the row and try the whole thing again later.
      const message = err instanceof Error ? err.message : String(err);
      log.error("could not tell the sender about an undeliverable mail, will retry", { ...ctx, error: message });
      await this.opts.store.markInboundRetry(row.id, `DSN failed: ${message}`, this.clock() + this.opts.settings.retryMaxMs);
      this.opts.onResult?.({ result: "retry", attempt: row.attempts + 1, ageMs: this.clock() - row.receivedAt });
      return;
    }
    await this.opts.store.markInboundFailed(row.id, why.diagnostic);
    this.opts.onResult?.({ result: "failed", attempt: row.attempts + 1, ageMs: this.clock() - row.receivedAt });
  }

  /** Post one row: ghost profile, DM portal if needed, message, attachments, mapping. */
  private async post(queued: QueuedInbound): Promise<void> {
    let row = queued;
    const { store, matrix, ids } = this.opts;
    if (row.kind === "dsn" && row.roomId) {
      await this.postReport(row, row.roomId);
      return;
    }
    // The stored message is read a chunk at a time: a large mail is never whole in memory here.
    const stored = await store.readInboundRaw(row.id);
    if (!stored) throw new Error(`inbound mail ${row.id} is no longer stored`);
    const mail = this.opts.parsed?.take(row.id) ?? (await this.parseStored(stored));
    const ghost = Ghost.of(row.sender, row.senderVerified, ids);
    // Only authenticated mail speaks for the address: the name follows its From header.
    await ghost.ensureProfile({ store, matrix, ids, botDisplayName: this.opts.botDisplayName }, row.senderVerified ? row.senderName : null);

    const roomId = await this.roomFor(row, ghost, mail);
    if (row.replyToEventId === null) {
      const late = await this.lateParent(row, roomId, mail);
      if (late) row = { ...row, replyToEventId: late };
    }
    // In an end-to-end-encrypted room every file is posted as an encrypted attachment; an image
    // cannot be shown inline there (`<img src>` takes only plain mxc:// media), so it follows the
    // message as an encrypted image instead.
    const encrypted = await matrix.isEncrypted(roomId, ghost.userId);
    const verdict = authContent(row.auth);
    const isReply = row.replyToEventId !== null;
    const ctx = { inbound: row.id, roomId };
    // Inline images, forwarded messages and calendars are read before the message that shows them.
    const parts = await prepareParts(stored, mail, { showHtml: !isReply, upload: (image, i) => (encrypted ? Promise.resolve(null) : this.uploadInline(row, ghost, image, i)), ctx });
    const fold: FoldedReply = isReply ? await foldReply(mail.text) : { text: mail.text, folded: false };
    const { content, cut, original, textless } = this.content(row, mail, fold, parts);
    content[AUTH_FIELD] = verdict;
    if (row.deliveredTo) content[RECIPIENT_FIELD] = { address: row.deliveredTo, tag: row.recipientTag };
    // RFC 3834 §2: an automatic mail (auto-reply, bounce, list or bulk mail) is a notice; nothing answers notices.
    const automatic = isAutomatic(row, mail);
    if (automatic) content.msgtype = "m.notice";
    const parent = row.replyToEventId ? await store.getMessageByEvent(roomId, row.replyToEventId) : null;
    const files: { filename: string; contentType: string; content: Buffer }[] = [];
    if (cut) files.push({ filename: "message.txt", contentType: "text/plain; charset=utf-8", content: Buffer.from([mail.text, ...parts.blocks.map((b) => b.text)].join("\n\n"), "utf8") });
    // What did not decode, was folded away or cut from the subject is not lost: the original goes with what is shown.
    if (original) files.push({ filename: "message.eml", contentType: "message/rfc822", content: await stored.whole() });
    // Images the HTML carried (`data:` URLs) that could not be shown inline follow as files, as `cid:` images do.
    files.push(...parts.dataFiles);
    // An inline image the message shows is not posted again; one it does not show is, with its upload.
    const formatted = String(content.formatted_body ?? "");
    const postAsFile = (i: number): boolean => !parts.skip.has(i) && !(parts.inline.has(i) && formatted.includes(parts.inline.get(i)!.url));
    const attached = mail.attachments.some((_a, i) => postAsFile(i));
    // A mail with nothing to show but its files (no subject, no text, no warning line) posts the
    // files alone, the first standing for the mail (its event is the one replies answer; every
    // file carries the verdict). The message event stays, with NO_TEXT, where it carries what no
    // file can: a reply's relation, an automatic mail's m.notice, or a mail without files.
    const filesOnly = textless && !isReply && !automatic && (files.length > 0 || attached);
    const message = filesOnly ? null : await this.sendMessage(row, ghost, roomId, content, parent, mail);
    // A thread message's files go into its thread too, falling back to the message itself.
    const fileRelation: ThreadRelation | null = message?.threadRoot ? { rel_type: "m.thread", event_id: message.threadRoot, is_falling_back: true, "m.in_reply_to": { event_id: message.eventId } } : null;
    const record = (eventId: string): Promise<void> =>
      store.insertMessage({
        roomId,
        eventId,
        messageId: row.messageId,
        references: storedReferences(mail.references, parent),
        direction: "inbound",
        sender: row.sender,
        subject: mail.subject,
        participants: row.participants,
        viaList: false,
      });
    if (message) await record(message.eventId);
    // The first file's event: the mail's own when it posts no message event.
    let firstFile: string | null = null;
    for (const [i, file] of files.entries()) {
      const posted = await this.postFile(row, ghost, roomId, file, i, verdict, fileRelation, encrypted);
      firstFile ??= posted;
    }
    // Attachments are read from the stored message one at a time: only the one being uploaded is in memory.
    if (attached) {
      // A mail stored in chunks, in a room without encryption: a first pass counts its
      // attachments' sizes, so that a large one is uploaded as it is decoded (the homeserver
      // wants its length first) and never held whole.
      const sizes = stored.chunked && !encrypted ? await attachmentSizes(stored) : null;
      await forEachAttachment(
        stored,
        async (att: MailAttachment | StreamedAttachment, i: number) => {
          const posted = await this.postFile(
            row,
            ghost,
            roomId,
            {
              filename: cleanFilename(parts.names.get(i) ?? att.filename, i),
              contentType: att.contentType,
              content: att.content,
              reread: () => readAttachment(stored, i),
            },
            files.length + i,
            verdict,
            fileRelation,
            encrypted,
            parts.inline.get(i),
          );
          firstFile ??= posted;
        },
        { only: (_info: MailAttachmentInfo, i: number) => postAsFile(i), stream: (_info: MailAttachmentInfo, i: number) => (sizes !== null && sizes[i]! >= STREAM_MIN_BYTES ? sizes[i]! : null) },
      );
    }
    const eventId = message?.eventId ?? firstFile;
    // Never: a mail posts its files alone only when it has one.
    if (eventId === null) throw new Error(`inbound mail ${row.id}: neither a message nor a file was posted`);
    if (!message) await record(eventId);
    await store.markInboundPosted(row.id, eventId);
    log.info("mail posted", { inbound: row.id, messageId: row.messageId, roomId, eventId, ghost: ghost.userId, verified: ghost.verified, filesOnly });
  }

  /**
   * Send the message event with its relation: none for a new conversation; a rich reply in DM
   * and group portals; a thread message in a room mailbox (bridge/threads.ts). A thread the
   * homeserver refuses with 400 (Client-Server API, "Threading", "Validation of `m.thread`
   * relationships": the root found has a relation of its own, e.g. a Matrix thread message that
   * was mailed) is logged and the mail posted as a rich reply instead, with its own txn ID.
   * @returns the event ID, and the thread root when it was posted as a thread message (else null)
   * @throws the homeserver's error (the caller retries or gives up)
   */
  private async sendMessage(
    row: QueuedInbound,
    ghost: Ghost,
    roomId: string,
    content: Record<string, unknown>,
    parent: MessageRow | null,
    mail: ParsedMailSummary,
  ): Promise<{ eventId: string; threadRoot: string | null }> {
    const { matrix, store } = this.opts;
    const txnId = `meb-in-${row.id}`;
    if (!row.replyToEventId) return { eventId: await matrix.sendEvent(ghost.userId, roomId, "m.room.message", content, txnId), threadRoot: null };
    const portal = await store.getPortalByRoom(roomId);
    const thread: ThreadRelation | null = portal && portalOf(portal).threadsReplies ? await threadRelation(store, roomId, row.replyToEventId, parent, mail) : null;
    try {
      const eventId = await matrix.sendEvent(ghost.userId, roomId, "m.room.message", { ...content, "m.relates_to": thread ?? replyRelation(row.replyToEventId) }, txnId);
      return { eventId, threadRoot: thread?.event_id ?? null };
    } catch (err) {
      const failure = matrix.classifyError(err);
      if (!thread || failure.temporary || failure.status !== 400) throw err;
      log.warn("the homeserver refused the thread, posting the mail as a plain reply", {
        inbound: row.id,
        roomId,
        threadRoot: thread.event_id,
        replyTo: row.replyToEventId,
        error: failure.message,
      });
      const eventId = await matrix.sendEvent(ghost.userId, roomId, "m.room.message", { ...content, "m.relates_to": replyRelation(row.replyToEventId) }, `${txnId}-reply`);
      return { eventId, threadRoot: null };
    }
  }

  /**
   * Parse the stored message (a row whose DATA-time parse is not at hand: a retry, or a row
   * from before a restart). Attachments are only counted here.
   * @throws PermanentPostError 5.6.0 when it does not parse (it parsed at DATA time; parsing
   *   it again cannot get better)
   */
  private async parseStored(stored: StoredRaw): Promise<ParsedMailSummary> {
    const parse = this.opts.parse ?? ((raw: Buffer) => parseMail(raw, { attachments: "metadata" }));
    try {
      return await parse(await stored.whole());
    } catch (err) {
      // A parse in a worker that died or was stopped for another message is tried again.
      if (this.opts.parse && !(err instanceof MailParseError)) throw err;
      throw new PermanentPostError("5.6.0", `the stored message cannot be parsed: ${(err as Error).message}`);
    }
  }

  /**
   * A delivery report about mail the bridge sent: a notice replying to that message, naming each
   * address and what the reporting server said (RFC 3464 Final-Recipient, Action, Status,
   * Diagnostic-Code).
   */
  private async postReport(row: QueuedInbound, roomId: string): Promise<void> {
    const stored = await this.opts.store.readInboundRaw(row.id);
    if (!stored) throw new Error(`inbound mail ${row.id} is no longer stored`);
    const report = await parseDsn(await stored.whole());
    const lines = (report?.recipients ?? []).map((r) => `• ${r.address}: ${r.action} (${r.status})${r.diagnostic ? `: ${r.diagnostic}` : ""}`);
    const from = report?.reportingMta ? ` from ${report.reportingMta}` : "";
    const text = `⚠️ A delivery report${from} came back for this message:\n${lines.length > 0 ? lines.join("\n") : "(it names no recipient)"}`;
    const eventId = await this.opts.notices.post(roomId, text, row.replyToEventId ?? undefined, `meb-in-${row.id}`);
    await this.opts.store.markInboundPosted(row.id, eventId);
    log.info("delivery report posted", { inbound: row.id, roomId, eventId, replyTo: row.replyToEventId });
  }

  /**
   * The room a row goes to. A new DM portal is made when there is none yet, and again when
   * the local user has left (or was removed from) the one there is: mail never lands in a room
   * its reader left (the new DM invites them again, with `is_direct`).
   */
  private async roomFor(row: QueuedInbound, ghost: Ghost, mail: ParsedMailSummary): Promise<string> {
    const { store, matrix } = this.opts;
    const portal: PortalRow | null = row.roomId ? await store.getPortalByRoom(row.roomId) : null;
    if (row.roomId && (!portal || portalOf(portal).joinsSenders)) {
      if (portal && !portalOf(portal).invitesSenders) await this.stillMember(row.roomId, ghost, portalOf(portal).reader(this.opts.ids));
      await matrix.join(row.roomId, ghost.userId);
      return row.roomId;
    }
    const localUser = portal?.localUserId ?? row.dmLocalUserId;
    if (!localUser) throw new PermanentPostError("5.1.1", "the mail has neither a room nor a DM partner");
    const existing = portal ?? (await store.getDmPortal(localUser, row.sender, ghost.verified));
    if (existing && (await this.stillReads(existing.roomId, localUser, ghost))) {
      if (row.roomId !== existing.roomId) await store.setInboundRoom(row.id, existing.roomId);
      return existing.roomId;
    }
    const topic = ghost.verified ? `Email with ${row.sender}` : `⚠️ Unverified sender: mail claiming to be from ${row.sender} that could not be authenticated`;
    // The invite previews the mail (who, subject, verdict): in `invite` mode it is the contact request.
    const preview = invitePreview(row.sender, row.senderName, mail.subject, ghost.verified);
    const roomId = (await this.orphanDm(ghost, localUser)) ?? (await matrix.createDm(ghost.userId, localUser, topic, preview));
    if (existing) await store.deletePortal(existing.roomId);
    await store.upsertPortal({ roomId, kind: "dm", localUserId: localUser, remoteAddress: row.sender, subject: mail.subject, encrypted: false, remoteVerified: ghost.verified });
    await store.setInboundRoom(row.id, roomId);
    log.info(existing ? "DM portal re-created: the user had left the old one" : "DM portal created", { roomId, oldRoomId: existing?.roomId, user: localUser, address: row.sender, verified: ghost.verified });
    return roomId;
  }

  /**
   * The parent of a reply that reached the queue before its parent was posted (both waited: a
   * homeserver outage, a burst), so routing at DATA time found no posted parent to answer. The
   * rule is routing's (bridge/threads.ts `continuableMessages`), narrowed to the room the row
   * goes to anyway: a message there that the verified sender took part in. The room's rows post
   * in order, so a parent that came first has been posted by now.
   * @param roomId the room the row is being posted to
   * @returns the parent's event ID, or null (an unverified sender, no thread headers, no such message in the room)
   */
  private async lateParent(row: QueuedInbound, roomId: string, mail: ParsedMailSummary): Promise<string | null> {
    if (!row.senderVerified || row.kind === "dsn") return null;
    for await (const known of continuableMessages(this.opts.store, threadIdsOf(mail), row.sender)) {
      if (known.roomId === roomId) return known.eventId;
    }
    return null;
  }

  /**
   * Check that the ghost is still in (or invited to) a group portal before it posts there: the
   * bot never invites a ghost back into a room whose members removed it ({@link Portal}
   * `invitesSenders`). Routing at DATA time sends a reply there only while the ghost is joined;
   * this covers a removal between the 250 and the post.
   * @param reader who reads the room's state (the bridge bot)
   * @throws PermanentPostError 5.7.1 when the ghost was removed or left (the sender gets a DSN
   *   saying so); the homeserver's error when it cannot be asked (the row is retried)
   */
  private async stillMember(roomId: string, ghost: Ghost, reader: string): Promise<void> {
    let member: Record<string, unknown> | null;
    try {
      member = await this.opts.matrix.stateContent(roomId, "m.room.member", ghost.userId, reader);
    } catch (err) {
      if (this.opts.matrix.classifyError(err).temporary) throw err;
      member = null;
    }
    if (member?.membership === "join" || member?.membership === "invite") return;
    throw new PermanentPostError("5.7.1", "the sender is no longer a member of the Matrix room of this conversation (a member removed them); a room member can invite them again");
  }

  /**
   * A DM room this ghost made for `localUser` whose portal row was never written (the bridge
   * died between creating the room and recording it): a room the ghost created (a ghost creates
   * rooms only as DMs), that is no portal, where `localUser` is invited or joined. Adopting it
   * means a retry neither leaves an empty room behind nor invites the user twice.
   * @returns the room ID, or null when there is none
   * @throws the homeserver's error when it cannot be asked (the row is retried)
   */
  private async orphanDm(ghost: Ghost, localUser: string): Promise<string | null> {
    const { matrix, store } = this.opts;
    for (const roomId of await matrix.joinedRooms(ghost.userId)) {
      if (await store.getPortalByRoom(roomId)) continue;
      if ((await matrix.roomCreator(roomId, ghost.userId)) !== ghost.userId) continue;
      const member = await matrix.stateContent(roomId, "m.room.member", localUser, ghost.userId);
      if (member?.membership === "invite" || member?.membership === "join") {
        log.warn("adopting a DM room left without a portal by an earlier crash", { roomId, user: localUser, ghost: ghost.userId });
        return roomId;
      }
    }
    return null;
  }

  /**
   * Whether `localUser` is (or is invited to be) in a DM portal that the ghost is still in.
   * A ghost that was removed from the room cannot read it: the answer is then false.
   * @throws the homeserver's error when it cannot be asked (the row is retried)
   */
  private async stillReads(roomId: string, localUser: string, ghost: Ghost): Promise<boolean> {
    let member: Record<string, unknown> | null;
    try {
      member = await this.opts.matrix.stateContent(roomId, "m.room.member", localUser, ghost.userId);
    } catch (err) {
      if (this.opts.matrix.classifyError(err).temporary) throw err;
      return false; // the ghost is not in the room (any more), or the room is gone
    }
    return member?.membership === "join" || member?.membership === "invite";
  }

  /**
   * The message content: subject, text (a reply's quote and signature folded away), sanitized HTML with inline images pointing at their uploads, the blocks of
   * forwarded messages and calendars after the text, warnings; text longer than `maxTextBytes`,
   * or content over the event budget, is cut at a marker. A subject too long to show whole
   * ({@link showSubject}) gets a line saying the original is attached. Content with nothing to
   * show (no subject shown, no text, no image, no warning line) has {@link NO_TEXT} as its text.
   * @param fold the reply's text after {@link foldReply} (the mail's text for a new conversation)
   * @param parts what {@link prepareParts} read
   * @returns the content; `cut`: whether the text was cut (then the full text is attached as
   *   message.txt); `original`: whether the original mail is to be attached as message.eml (what
   *   did not decode, a folded reply, a cut subject); `textless`: whether it had nothing to show
   */
  private content(
    row: QueuedInbound,
    mail: ParsedMailSummary,
    fold: FoldedReply,
    parts: PreparedParts = noParts(),
  ): { content: Record<string, unknown>; cut: boolean; original: boolean; textless: boolean } {
    const isReply = row.replyToEventId !== null;
    // The folded text is not marked in the message: a Matrix reply to it would quote the mark
    // into the mail it sends. The whole mail follows as message.eml (see post()).
    const own = fold.text.trimEnd();
    const text = [own, ...parts.blocks.map((b) => b.text)].join("\n\n");
    // A reply shows its text only: its HTML would bring the quote back.
    const ownHtml = !isReply && mail.html ? replaceImages(mail.html, parts.cidUrls, parts.dataUrls) : null;
    let html: string | null;
    if (parts.blocks.length === 0) html = ownHtml !== null ? sanitizeMailHtml(ownHtml) || null : null;
    else {
      // The mail's HTML is closed off (sanitized) first, so that none of its open tags takes the blocks in.
      const head = ownHtml !== null ? sanitizeHtml(ownHtml) : escapeHtml(own.trim()).replace(/\n/g, "<br>");
      html = sanitizeMailHtml(head + parts.blocks.map((b) => b.html).join("")) || null;
    }
    const warnings: string[] = [];
    // Which of the bridge's addresses it came to, when not the target's own (a tag, an alias, a catch-all).
    if (row.deliveredTo) warnings.push(recipientLine(row.deliveredTo, row.recipientTag));
    if (!row.senderVerified) warnings.push(unverifiedWarning(row.sender, row.auth));
    if (mail.losses.length > 0) warnings.push(`⚠️ Parts of this mail could not be decoded (${mail.losses.join(", ")}); the original is attached as message.eml.`);
    // The subject is shown on a new conversation only; cut there, it is whole in the original.
    const subject = !isReply && mail.subject !== null ? showSubject(mail.subject) : null;
    if (subject?.cut) warnings.push(cutSubjectWarning(subject.length));
    if (parts.dataDropped > 0) warnings.push(droppedImagesWarning(parts.dataDropped));
    const original = mail.losses.length > 0 || fold.folded || subject?.cut === true || parts.dataDropped > 0;
    if (row.spam && (row.spam.action === "add header" || row.spam.action === "rewrite subject")) {
      warnings.push(`⚠️ Possible spam (rspamd score ${row.spam.score.toFixed(1)} of ${row.spam.requiredScore.toFixed(1)})`);
    }
    let budget = this.opts.settings.maxTextBytes;
    for (let round = 0; ; round++) {
      const piece = cutText(text, budget);
      const marker = piece.cut ? "\n\n✂️ [This mail is longer than fits in one message; the full text is attached as message.txt]" : "";
      // Cut text keeps no HTML: cutting markup could break it, and the whole text is attached.
      const keepHtml = !piece.cut && html !== null && Buffer.byteLength(html) <= budget ? html : null;
      const content = mailToMatrix({ subject: mail.subject, text: piece.text + marker, html: keepHtml }, !isReply);
      for (const warning of [...warnings].reverse()) {
        content.body = `${warning}\n\n${String(content.body)}`;
        content.formatted_body = `<p><em>${escapeHtml(warning)}</em></p>${String(content.formatted_body)}`;
      }
      if (Buffer.byteLength(JSON.stringify(content)) <= EVENT_JSON_BUDGET || round >= 6) {
        // Nothing to show: no blank event (an image-only HTML body still shows its image).
        const textless = String(content.body).trim() === "" && !/<img\b/iu.test(String(content.formatted_body ?? ""));
        if (textless) {
          content.body = NO_TEXT;
          content.formatted_body = `<em>${escapeHtml(NO_TEXT)}</em>`;
        }
        return { content, cut: piece.cut || budget < this.opts.settings.maxTextBytes, original, textless };
      }
      budget = Math.floor(budget / 2); // escaping made it bigger than the text: try smaller
    }
  }

  /**
   * Upload an inline image the message shows, as the ghost. Over the homeserver's upload limit,
   * or refused for its content: null (it is posted as a file after the message, which names it
   * in a notice if need be). Temporary failures throw (the row is retried).
   */
  private async uploadInline(row: QueuedInbound, ghost: Ghost, image: MailAttachment, index: number): Promise<InlineImage | null> {
    const { matrix } = this.opts;
    const limit = await matrix.uploadLimitBytes();
    const filename = cleanFilename(image.filename, index);
    if (limit !== null && image.content.length > limit) {
      log.info("inline image over the upload limit, posted as a file instead", { inbound: row.id, file: filename, size: image.content.length, limit });
      return null;
    }
    const mimetype = safeMimeType(image.contentType);
    try {
      return { url: await matrix.uploadContent(ghost.userId, image.content, mimetype, filename), mimetype };
    } catch (err) {
      const failure = matrix.classifyError(err);
      if (failure.temporary) throw err;
      log.warn("inline image refused by the homeserver, posted as a file instead", { inbound: row.id, file: filename, error: failure.message });
      return null;
    }
  }

  /**
   * Post one file. Files over the homeserver's upload limit, and files the homeserver refuses
   * even as `application/octet-stream`, are named in a notice instead: one bad attachment never
   * stops the others. Temporary failures throw (the row is retried; the sends are idempotent).
   * @param relation the thread the file (or its notice) goes into, or null for the main timeline
   * @param encrypted whether the room is end-to-end encrypted: the file is then encrypted before
   *   it is uploaded and posted as an encrypted attachment (`file` instead of `url`; Client-Server
   *   API › End-to-end encryption › "Sending encrypted attachments")
   * @param uploaded the file's upload when it was uploaded already (an inline image the message
   *   does not show; never in an encrypted room)
   * @returns the ID of the event posted: the file's, or the notice's naming it
   */
  private async postFile(
    row: QueuedInbound,
    ghost: Ghost,
    roomId: string,
    file: PostedFile,
    index: number,
    verdict: AuthFields,
    relation: ThreadRelation | null,
    encrypted: boolean,
    uploaded?: InlineImage,
  ): Promise<string> {
    const { matrix } = this.opts;
    const txnId = `meb-in-${row.id}-att-${index}`;
    const related = relation ? { "m.relates_to": relation } : {};
    const limit = await matrix.uploadLimitBytes();
    const size = Buffer.isBuffer(file.content) ? file.content.length : file.content.bytes;
    const notice = (why: string): Promise<string> =>
      matrix.sendEvent(ghost.userId, roomId, "m.room.message", { msgtype: "m.notice", body: `📎 ${file.filename} (${size} bytes) ${why}`, [AUTH_FIELD]: verdict, ...related }, txnId);
    if (limit !== null && size > limit) return notice(`is larger than this homeserver's upload limit of ${limit} bytes and was not posted.`);
    if (encrypted) {
      // Only the ciphertext reaches the media repository; the key goes in the encrypted event.
      // (Attachments are streamed only into rooms without encryption.)
      if (!Buffer.isBuffer(file.content)) throw new Error(`inbound mail ${row.id}: a streamed attachment cannot be encrypted`);
      const sealed = encryptFile(file.content);
      const stored = await this.uploadFile(row, ghost, roomId, { ...file, contentType: "application/octet-stream", content: sealed.ciphertext });
      if ("refused" in stored) return notice(`could not be posted: the homeserver refused it (${stored.refused}).`);
      const mimetype = safeMimeType(file.contentType);
      const media = { msgtype: msgtypeOf(mimetype), body: file.filename, filename: file.filename, file: { ...sealed.file, url: stored.url }, info: { mimetype, size } };
      return matrix.sendEvent(ghost.userId, roomId, "m.room.message", { ...media, [AUTH_FIELD]: verdict, ...related }, txnId);
    }
    const stored = uploaded ?? (await this.uploadFile(row, ghost, roomId, file));
    if ("refused" in stored) return notice(`could not be posted: the homeserver refused it (${stored.refused}).`);
    const { url, mimetype } = stored;
    return matrix.sendEvent(ghost.userId, roomId, "m.room.message", { msgtype: msgtypeOf(mimetype), body: file.filename, filename: file.filename, url, info: { mimetype, size }, [AUTH_FIELD]: verdict, ...related }, txnId);
  }

  /**
   * Upload a file as the ghost, typed as the mail typed it, else (refused) as
   * `application/octet-stream`; a streamed file is read again whole for that second try
   * (`reread`), its stream being spent.
   * @returns the upload, or what the homeserver said when it refuses it either way
   * @throws the homeserver's error on temporary failures (the row is retried)
   */
  private async uploadFile(row: QueuedInbound, ghost: Ghost, roomId: string, file: PostedFile): Promise<InlineImage | { refused: string }> {
    const { matrix } = this.opts;
    const typed = safeMimeType(file.contentType);
    try {
      return { url: await matrix.uploadContent(ghost.userId, file.content, typed, file.filename), mimetype: typed };
    } catch (err) {
      const failure = matrix.classifyError(err);
      if (failure.temporary) throw err;
    }
    try {
      const content = Buffer.isBuffer(file.content) ? file.content : await (file.reread ?? noReread)();
      return { url: await matrix.uploadContent(ghost.userId, content, "application/octet-stream", file.filename), mimetype: "application/octet-stream" };
    } catch (again) {
      const second = matrix.classifyError(again);
      if (second.temporary) throw again;
      log.warn("attachment refused by the homeserver, named in a notice", { inbound: row.id, roomId, file: file.filename, error: second.message });
      return { refused: second.message };
    }
  }
}

/**
 * A file to post: its content whole, or (a large attachment of a chunked mail) as a stream of
 * known size, with `reread` to read it again whole when the homeserver refused the stream as
 * typed and it is to be tried as `application/octet-stream`.
 */
interface PostedFile {
  filename: string;
  contentType: string;
  content: Buffer | MediaStream;
  reread?: () => Promise<Buffer>;
}

/**
 * Attachments of this size (bytes) or more, of a mail stored in chunks, are uploaded as they are
 * decoded rather than collected first: 1 MiB, the chunk size of the store.
 */
const STREAM_MIN_BYTES = 1024 * 1024;

/**
 * Attachment `index` of a stored mail, decoded whole (one more pass over the message).
 * @throws Error when the message has no such attachment, or what reading it throws
 */
async function readAttachment(stored: StoredRaw, index: number): Promise<Buffer> {
  let content: Buffer | null = null;
  await forEachAttachment(
    stored,
    async (att) => {
      content = att.content;
    },
    { only: (_info, i) => i === index },
  );
  if (content === null) throw new Error(`the stored mail has no attachment ${index}`);
  return content;
}

/** What a streamed file without `reread` is read again with: never, a caller's mistake. */
function noReread(): Promise<Buffer> {
  return Promise.reject(new Error("a streamed attachment cannot be read again"));
}

/** The message type a file of `mimetype` is posted as: `m.image`, `m.audio`, `m.video`, else `m.file`. */
function msgtypeOf(mimetype: string): "m.image" | "m.audio" | "m.video" | "m.file" {
  return mimetype.startsWith("image/") ? "m.image" : mimetype.startsWith("audio/") ? "m.audio" : mimetype.startsWith("video/") ? "m.video" : "m.file";
}

/**
 * Whether a mail was sent by a machine, not a person (RFC 3834 §2, §5): `Auto-Submitted` with
 * any keyword but `no` (auto-replies, `auto-generated` notifications), `Precedence: bulk`,
 * `list` or `junk`, or the null reverse-path `<>` (bounces and other reports, RFC 5321 §4.5.5).
 * Such mail is posted as `m.notice`, which the bridge never mails on nor answers.
 * @param row the inbound row (its envelope sender)
 * @param mail its parse (Auto-Submitted, Precedence)
 */
export function isAutomatic(row: Pick<InboundRow, "envelopeFrom">, mail: Pick<ParsedMailSummary, "autoSubmitted" | "precedence">): boolean {
  if (row.envelopeFrom === null || row.envelopeFrom.trim().replace(/^<(.*)>$/su, "$1").trim() === "") return true;
  if (mail.autoSubmitted !== null && mail.autoSubmitted !== "no") return true;
  return mail.precedence === "bulk" || mail.precedence === "list" || mail.precedence === "junk";
}

/**
 * The RFC 3463 status of a homeserver's refusal, for the DSN: the room cannot be entered or is
 * gone (`M_FORBIDDEN`, `M_NOT_FOUND`): 5.2.1 mailbox not accepting messages; too big
 * (`M_TOO_LARGE`): 5.3.4; anything else about the content: 5.6.0.
 */
function refusalStatus(failure: HomeserverFailure): string {
  if (failure.errcode === "M_FORBIDDEN" || failure.errcode === "M_NOT_FOUND" || failure.status === 403 || failure.status === 404) return "5.2.1";
  if (failure.errcode === "M_TOO_LARGE" || failure.status === 413) return "5.3.4";
  return "5.6.0";
}

/**
 * Characters an attachment's name loses: C0 and C1 controls, DEL, and the bidi controls that
 * can make a name read differently from what it is (`invoice\u202Etxt.exe` shows as
 * `invoiceexe.txt`; CVE-2021-42574 "Trojan Source"): LRM, RLM, ALM, LRE..RLO, LRI..PDI.
 */
const FILENAME_UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/gu;

/**
 * Longest attachment name posted, in characters (code points). RFC 2231 continuations let a
 * mail carry a name of any length; file systems take 255 bytes, and a name shown whole (`body`,
 * `filename`, the upload's query) could make the event larger than the homeserver takes.
 */
const MAX_FILENAME_CHARS = 200;

/**
 * The name an attachment is posted under: its name without control and bidi characters
 * (see {@link FILENAME_UNSAFE}), its last path segment only (a mail's name is a suggestion for
 * the recipient's file, never a path: RFC 2183 §2.3, a receiver SHOULD NOT respect directory
 * path information in it, so `../../.ssh/authorized_keys` and `C:\Windows\x.dll` post as
 * `authorized_keys` and `x.dll`), trimmed; `attachment-N` when nothing, or only dots, is left.
 * A name longer than {@link MAX_FILENAME_CHARS} is cut in its middle (`…`), keeping its
 * extension.
 * @param filename the name from the mail (Content-Disposition / Content-Type), or null/undefined
 * @param index the attachment's 0-based position in the mail (N is index + 1)
 */
export function cleanFilename(filename: string | null | undefined, index: number): string {
  const segments = (filename ?? "").replace(FILENAME_UNSAFE, "").split(/[\\/]/u);
  const cleaned = (segments.findLast((s) => s.trim() !== "") ?? "").trim();
  if (/^\.*$/u.test(cleaned)) return `attachment-${index + 1}`;
  const chars = [...cleaned];
  if (chars.length <= MAX_FILENAME_CHARS) return cleaned;
  const ext = /\.[\p{L}\p{N}]{1,10}$/u.exec(cleaned)?.[0] ?? "";
  return `${chars.slice(0, MAX_FILENAME_CHARS - [...ext].length - 1).join("").trimEnd()}…${ext}`;
}

/**
 * A media type safe to send as an HTTP header and to show: `type/subtype` of RFC 6838 token
 * characters (parameters dropped), else `application/octet-stream`. A mail's Content-Type is
 * untrusted (`application/x-€` made the upload itself throw).
 */
export function safeMimeType(contentType: string): string {
  const base = contentType.split(";")[0]!.trim().toLowerCase();
  return /^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$/.test(base) ? base : "application/octet-stream";
}
