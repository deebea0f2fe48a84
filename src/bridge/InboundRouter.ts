/**
 * Inbound routing: decides, during the SMTP transaction, which recipients the bridge
 * accepts and which portal each received mail goes to, and commits the mail with its
 * routing to the store before the SMTP listener answers 250.
 *
 * Routing order for each recipient mailbox:
 * 1. thread: In-Reply-To, then References (newest first), to a portal and event that a
 *    known Message-ID belongs to — if that portal belongs to the recipient mailbox
 *    (the room's mailbox, or a room the mailbox's owner is joined to);
 * 2. a room mailbox → its room;
 * 3. a personal mailbox → the DM portal of its owner with the sender (made on first mail).
 */
import type { BridgeStore, NewInbound } from "../store/Store.ts";
import type { InboundEnvelope, InboundHandler } from "../mail/inbound/SmtpListener.ts";
import { SmtpReply } from "../mail/inbound/rejections.ts";
import { spamHeader, verdictReply, type SpamVerdict } from "../mail/inbound/rspamd.ts";
import { parseMail } from "../mail/inbound/parse.ts";
import { ghostUserId, mailboxUserId, mintMessageId, normalizeAddress, InvalidAddressError, portalReader, type IdContext } from "./ids.ts";
import type { MatrixActions } from "./ports.ts";
import { getLogger } from "../util/logger.ts";

const log = getLogger("bridge/inbound");

/** A mailbox of the bridge, as resolved from a recipient address. */
export type Mailbox =
  | { kind: "room"; localpart: string; roomId: string }
  | { kind: "personal"; localpart: string; userId: string };

/** Options for {@link InboundRouter}. */
export interface InboundRouterOptions {
  store: BridgeStore;
  matrix: Pick<MatrixActions, "userExists" | "joinedMembers">;
  ids: IdContext;
  /** Whether a Matrix user may use the bridge (`permissions.allowed_users`). */
  mayBridge: (userId: string) => boolean;
  /** Called after a mail was committed, to wake the poster. */
  onCommitted: () => void;
  /** This host's name for the Received header (smtp.hostname). */
  hostname: string;
  /** Spam check (rspamd), or null for none. */
  spam?: SpamCheck | null;
}

/** How inbound mail is checked for spam. */
export interface SpamCheck {
  /** Ask for a verdict; throws when the checker cannot be asked. */
  check(raw: Buffer, envelope: InboundEnvelope): Promise<SpamVerdict>;
  /** When `check` throws: `defer` (451 4.3.0, the sender retries) or `accept` unchecked. */
  onError: "defer" | "accept";
}

/**
 * The trace header an SMTP server adds when it accepts a message (RFC 5321 §4.4):
 * `Received: from <helo> (<client name> [<ip>]) by <host> with ESMTP[S] id <session>; <date>`.
 */
export function receivedHeader(envelope: InboundEnvelope, hostname: string, rcpt: string | null, now = new Date()): string {
  const clean = (s: string) => s.replace(/[^\x21-\x7e]/g, "");
  const date = now.toUTCString().replace("GMT", "+0000");
  const client = `${clean(envelope.heloName) || "unknown"} (${clean(envelope.clientHostname) || "unknown"} [${clean(envelope.remoteAddress)}])`;
  const forPart = rcpt ? `\r\n\tfor <${clean(rcpt)}>` : "";
  return `Received: from ${client}\r\n\tby ${hostname} with ${envelope.secure ? "ESMTPS" : "ESMTP"} id ${clean(envelope.sessionId)}${forPart};\r\n\t${date}\r\n`;
}

/** The bridge's {@link InboundHandler}: recipient checks and routing. */
export class InboundRouter implements InboundHandler {
  private readonly opts: InboundRouterOptions;

  constructor(opts: InboundRouterOptions) {
    this.opts = opts;
  }

  /**
   * Resolve a recipient address (already on the mail domain, domain lower-cased) to a mailbox.
   * @returns the mailbox, or null when there is none
   * @throws Error when the homeserver cannot be asked (the listener answers 451)
   */
  async resolveMailbox(address: string): Promise<Mailbox | null> {
    const localpart = address.slice(0, address.lastIndexOf("@")).toLowerCase();
    const room = await this.opts.store.getRoomMailboxByLocalpart(localpart);
    if (room) return { kind: "room", localpart, roomId: room.roomId };
    const userId = mailboxUserId(localpart, this.opts.ids);
    if (!userId || !this.opts.mayBridge(userId)) return null;
    if (!(await this.opts.matrix.userExists(userId))) return null;
    return { kind: "personal", localpart, userId };
  }

  /** RCPT TO: accept only the bridge's own mailboxes (RFC 5321 §3.6.2: never an open relay). */
  async checkRecipient(address: string, envelope: InboundEnvelope): Promise<void> {
    const mailbox = await this.resolveMailbox(address);
    if (!mailbox) {
      log.info("recipient rejected: no such mailbox", { session: envelope.sessionId, rcpt: address });
      throw new SmtpReply(550, "5.1.1", `<${address}>: no such mailbox here`);
    }
  }

  /**
   * DATA: parse, route every recipient, and commit one inbound row per target portal.
   * Resolves only after the rows are committed (the listener then answers 250).
   * @throws SmtpReply for mail that must be refused (5xx) or retried (4xx)
   */
  async deliver(raw: Buffer, envelope: InboundEnvelope): Promise<void> {
    const mail = await parseMail(raw);
    const senderText = mail.from?.address ?? envelope.mailFrom;
    if (!senderText) throw new SmtpReply(550, "5.1.7", "mail without a sender address is not accepted");
    let sender: string;
    try {
      sender = normalizeAddress(senderText, { caseSensitiveLocalparts: this.opts.ids.caseSensitiveLocalparts });
    } catch {
      throw new SmtpReply(553, "5.1.7", `sender address ${JSON.stringify(senderText)} is not usable`);
    }
    if (sender.endsWith("@" + this.opts.ids.mailDomain)) {
      throw new SmtpReply(550, "5.7.1", "sender address on this bridge's own domain is not accepted from outside");
    }
    try {
      ghostUserId(sender, this.opts.ids);
    } catch (err) {
      throw new SmtpReply(553, "5.1.7", err instanceof InvalidAddressError ? err.message : "sender address is not usable");
    }
    const verdictLine = await this.spamVerdict(raw, envelope, sender);
    const messageId = mail.messageId ?? mintMessageId(this.opts.ids.mailDomain);
    const threadIds = [mail.inReplyTo, ...[...mail.references].reverse()].filter((x): x is string => Boolean(x));
    const targets = new Map<string, NewInbound>();
    const members = new Map<string, Promise<string[]>>();
    for (const rcpt of envelope.rcptTo) {
      const mailbox = await this.resolveMailbox(rcpt);
      if (!mailbox) continue; // refused at RCPT time; mailbox removed since
      const target = await this.route(mailbox, sender, threadIds, members);
      const key = target.roomId ?? `dm:${target.dmLocalUserId}`;
      const known = targets.get(key);
      if (!known || (!known.replyToEventId && target.replyToEventId)) {
        targets.set(key, { ...target, messageId, sender, raw });
      }
    }
    if (targets.size === 0) throw new SmtpReply(550, "5.1.1", "no valid recipients");
    const trace = Buffer.from(receivedHeader(envelope, this.opts.hostname, envelope.rcptTo.length === 1 ? envelope.rcptTo[0]! : null));
    // Stored as: [spam verdict line] Received: ... original message. The verdict line, when a
    // check ran, is always first, so a forged copy inside the message is never read as ours.
    for (const target of targets.values()) target.raw = Buffer.concat([Buffer.from(verdictLine), trace, raw]);
    for (const mailRow of targets.values()) {
      const { row, duplicate } = await this.opts.store.insertInbound(mailRow);
      log.info(duplicate ? "duplicate mail ignored" : "mail accepted", {
        session: envelope.sessionId,
        messageId,
        sender,
        roomId: row.roomId ?? undefined,
        dmFor: row.dmLocalUserId ?? undefined,
        inbound: row.id,
      });
    }
    this.opts.onCommitted();
  }

  /**
   * Run the spam check, if configured.
   * @returns the verdict header line to store ("" when no check ran)
   * @throws SmtpReply 550 5.7.1 / 451 4.7.1 from the verdict, or 451 4.3.0 when the check failed and `onError` is `defer`
   */
  private async spamVerdict(raw: Buffer, envelope: InboundEnvelope, sender: string): Promise<string> {
    const spam = this.opts.spam;
    if (!spam) return "";
    let verdict: SpamVerdict;
    try {
      verdict = await spam.check(raw, envelope);
    } catch (err) {
      if (spam.onError === "defer") {
        log.warn("spam check failed, deferring the mail", { session: envelope.sessionId, sender, error: (err as Error).message });
        throw new SmtpReply(451, "4.3.0", "spam check unavailable, try again later");
      }
      log.warn("spam check failed, accepting the mail unchecked", { session: envelope.sessionId, sender, error: (err as Error).message });
      return "";
    }
    const reply = verdictReply(verdict);
    if (reply) {
      log.debug("spam verdict refuses the mail", { session: envelope.sessionId, sender, action: verdict.action, score: verdict.score });
      throw reply;
    }
    return spamHeader(verdict);
  }

  private async route(
    mailbox: Mailbox,
    sender: string,
    threadIds: string[],
    members: Map<string, Promise<string[]>>,
  ): Promise<Pick<NewInbound, "roomId" | "dmLocalUserId" | "replyToEventId">> {
    for (const id of threadIds) {
      for (const known of await this.opts.store.getMessagesByMessageId(id)) {
        if (mailbox.kind === "room" && known.roomId === mailbox.roomId) {
          return { roomId: known.roomId, dmLocalUserId: null, replyToEventId: known.eventId };
        }
        if (mailbox.kind === "personal") {
          let list = members.get(known.roomId);
          if (!list) {
            list = this.membersOf(known.roomId);
            members.set(known.roomId, list);
          }
          if ((await list).includes(mailbox.userId)) {
            return { roomId: known.roomId, dmLocalUserId: null, replyToEventId: known.eventId };
          }
        }
      }
    }
    if (mailbox.kind === "room") return { roomId: mailbox.roomId, dmLocalUserId: null, replyToEventId: null };
    const dm = await this.opts.store.getDmPortal(mailbox.userId, sender);
    if (dm) return { roomId: dm.roomId, dmLocalUserId: null, replyToEventId: null };
    return { roomId: null, dmLocalUserId: mailbox.userId, replyToEventId: null };
  }

  /** Joined members of a portal, read by a bridge user that is in it. */
  private async membersOf(roomId: string): Promise<string[]> {
    const portal = await this.opts.store.getPortalByRoom(roomId);
    if (!portal) return [];
    try {
      return await this.opts.matrix.joinedMembers(roomId, portalReader(portal, this.opts.ids));
    } catch {
      return [];
    }
  }
}
