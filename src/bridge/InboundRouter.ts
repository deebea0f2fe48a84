/**
 * Inbound routing: decides, during the SMTP transaction, which recipients the bridge
 * accepts and which portal each received mail goes to, and commits the mail with its
 * routing and verdicts to the store before the SMTP listener answers 250.
 *
 * At DATA, in order:
 * 1. the author: the one From mailbox, read strictly (header tricks get 550 5.7.1);
 * 2. sender authentication (SPF, DKIM, DMARC, ARC; `mail/inbound/auth.ts`) and its policy:
 *    DMARC p=reject fail → 550 5.7.1, DNS trouble → 451 4.4.3, else verified or unverified;
 * 3. the spam check (rspamd), when configured;
 * 4. for each recipient mailbox:
 *    a. thread: In-Reply-To, then References (newest first), to a known message of a portal
 *       of that mailbox (the room's mailbox, or a room the mailbox's owner is joined to), but
 *       only for a VERIFIED sender who took part in that message (as its sender or one of its
 *       participants) and, through a personal mailbox, whose ghost is still joined to that room:
 *       knowing a Message-ID grants no membership, and a removed ghost does not come back by
 *       replying (its mail goes where mail without thread headers goes);
 *    b. a room mailbox → its room;
 *    c. a personal mailbox → the DM portal of its owner with the sender's ghost (verified and
 *       unverified ghosts have separate DM portals; made on first mail);
 *    d. for a personal mailbox, the user's contact rules and mode (`Contacts.gate`): a blocked
 *       sender gets 550 5.7.1; mail from a stranger that would open a new DM is a contact
 *       request, held with 451 4.7.1 in `hold` mode (unless the mail also goes elsewhere: then
 *       it opens a DM invite, as in `invite` mode).
 */
import { createHash } from "node:crypto";
import type { AuthFields, BridgeStore, InboundRow, NewInbound, SpamFields } from "../store/Store.ts";
import { withTrace, type InboundEnvelope, type InboundHandler } from "../mail/inbound/SmtpListener.ts";
import { SmtpReply } from "../mail/inbound/rejections.ts";
import { verdictReply, type SpamVerdict } from "../mail/inbound/rspamd.ts";
import { parseMail, type ParsedMailSummary } from "../mail/inbound/parse.ts";
import { MailParseError } from "../mail/inbound/parseThread.ts";
import type { ParsedMailCache } from "./ParsedMailCache.ts";
import { parseDsn } from "../mail/dsn.ts";
import { authDecision, authenticateMessage, readAuthor, type AuthPolicy, type AuthVerdict } from "../mail/inbound/auth.ts";
import type { DnsLookup } from "../mail/dns.ts";
import { mailboxUserId, normalizeAddress, type IdContext } from "./ids.ts";
import { portalOf } from "./Portal.ts";
import type { MailboxPolicy } from "../store/Store.ts";
import { parseMailboxCommand, type MailboxCommand, type Subscriptions } from "./Subscriptions.ts";
import { Ghost } from "./Ghost.ts";
import type { Contacts } from "./Contacts.ts";
import type { MatrixActions } from "./ports.ts";
import { continuableMessages, threadIdsOf } from "./threads.ts";
import { getLogger } from "../util/logger.ts";

const log = getLogger("bridge/inbound");

/**
 * The address a mail reached a room or personal mailbox through, when it is not the mailbox's
 * own address on the primary domain: `bob+shop@` (RFC 5233 subaddress), an alias, a
 * catch-all, or the mailbox on another of the bridge's domains. Shown above the posted mail.
 */
export interface ReachedVia {
  /** The recipient address, lower-cased. */
  address: string;
  /** Its `+tag` without the `+`, or null. */
  tag: string | null;
}

/**
 * A mailbox of the bridge, as resolved from a recipient address at RCPT time, on any of the
 * bridge's mail domains (`Addressing`):
 * - `room`: a room mailbox (`team@`), or one of its command addresses (`team+subscribe@`,
 *   `team+unsubscribe@`, `team+confirm-<token>@`, RFC 5233 subaddressing); any other `+tag` is
 *   delivered, with the tag shown;
 * - `personal`: a local user's personal mailbox (`alice@`, `alice+tag@`);
 * - `admin`: `postmaster` (RFC 5321 §4.5.1) or `abuse` (RFC 2142), delivered to the admin room
 *   or to each bridge admin's DM;
 * - `alias`: an alias or a domain's catch-all (migration 10), with its targets resolved (each
 *   a room or a personal mailbox): the mail goes to each (1:N).
 * `via` is set when the address is not the mailbox's own (see {@link ReachedVia}).
 */
export type Mailbox =
  | { kind: "room"; localpart: string; roomId: string; policy: MailboxPolicy; command: MailboxCommand | null; via?: ReachedVia }
  | { kind: "personal"; localpart: string; userId: string; via?: ReachedVia }
  | { kind: "admin"; localpart: string }
  /** `unsubscribe+<token>@`: the List-Unsubscribe address of a DM or group portal (migration 7). */
  | { kind: "unsubscribe"; localpart: string; roomId: string }
  | { kind: "alias"; address: string; tag: string | null; targets: AliasTarget[] };

/** A target of an alias: the room or personal mailbox it delivers to, with the alias as `via`. */
export type AliasTarget = Extract<Mailbox, { kind: "room" } | { kind: "personal" }>;

/** Where one recipient's copy of a mail goes, with the address it came through. */
type RoutedTarget = Pick<NewInbound, "roomId" | "dmLocalUserId" | "replyToEventId" | "deliveredTo" | "recipientTag">;

/** A mailbox a mail is delivered to, aliases expanded. */
export type TargetMailbox = Exclude<Mailbox, { kind: "alias" }>;

/** Each mailbox, with every alias replaced by its targets (1:N). */
export function expandAliases(mailboxes: Iterable<Mailbox>): TargetMailbox[] {
  return [...mailboxes].flatMap((m) => (m.kind === "alias" ? m.targets : [m]));
}

/** The routing's recipient fields of an inbound row for a mailbox (see {@link ReachedVia}). */
function reachedFields(mailbox: TargetMailbox): Pick<NewInbound, "deliveredTo" | "recipientTag"> {
  const via = mailbox.kind === "room" || mailbox.kind === "personal" ? mailbox.via : undefined;
  return { deliveredTo: via?.address ?? null, recipientTag: via?.tag ?? null };
}

/** Where mail to `postmaster` and `abuse` goes (`permissions.admin_room`, `permissions.admins`). */
export interface AdminDelivery {
  /** A room the bot is in; null: each admin's DM instead. */
  roomId: string | null;
  /** Matrix users who get it by DM when there is no admin room. */
  users: readonly string[];
}

/** How inbound mail is authenticated (the `auth` and `dns` config sections). */
export interface SenderAuth {
  /** The bridge's one DNS lookup. */
  lookup: DnsLookup;
  policy: AuthPolicy;
  /** ARC sealers trusted to vouch for a DMARC pass (lower-case domains). */
  trustedArcSealers: readonly string[];
  /** Smallest DKIM RSA key accepted, in bits. */
  minKeyBits: number;
}

/** Options for {@link InboundRouter}. */
export interface InboundRouterOptions {
  /**
   * The DATA-time parse (attachments only counted): the message and the listener's skeleton of
   * it (null when none could be made). Default: `parseMail` on the event loop. The bridge runs
   * it in a worker thread with a deadline (mail/inbound/parseThread.ts).
   * @throws MailParseError when the message cannot be parsed (554 5.6.0); other errors are
   *   temporary (the sender retries)
   */
  parse?: (raw: Buffer, skeleton: Buffer | null) => Promise<ParsedMailSummary>;
  store: BridgeStore;
  matrix: Pick<MatrixActions, "userExists" | "joinedMembers">;
  ids: IdContext;
  /** Whether a Matrix user may use the bridge (`permissions.allowed_users`). */
  mayBridge: (userId: string) => boolean;
  /** Called after a mail was committed, to wake the poster. */
  onCommitted: () => void;
  /** Where the DATA-time parse of each committed row is left for the poster (parse once); omitted: not kept. */
  parsed?: ParsedMailCache;
  /** This host's name for the Received header and the authserv-id (smtp.hostname). */
  hostname: string;
  /** Sender authentication. */
  auth: SenderAuth;
  /** Spam check (rspamd), or null for none. */
  spam?: SpamCheck | null;
  /**
   * Whether a domain is one of the bridge's further mail domains (bridge/Addressing.ts): mail
   * whose From is on one is refused like mail from the primary domain. Omitted: only the primary.
   */
  isLocalDomain?: (domain: string) => Promise<boolean>;
  /** Contact rules, modes and requests of personal mailboxes. */
  contacts: Pick<Contacts, "gate" | "hold">;
  /** Room mailbox subscriptions (plus-address commands). */
  subscriptions: Pick<Subscriptions, "request" | "confirm" | "unsubscribe" | "optOut">;
  /** Where `postmaster` and `abuse` go; null users and room: they are refused (550 5.1.1). */
  admins: AdminDelivery;
  /** Homeserver lookups of personal mailboxes (cached results excluded) allowed per 10 s; more answer 451 4.7.1. Default 100. */
  userLookupsPer10s?: number;
}

/** How inbound mail is checked for spam. */
export interface SpamCheck {
  /** Ask for a verdict; throws when the checker cannot be asked. */
  check(raw: Buffer, envelope: InboundEnvelope): Promise<SpamVerdict>;
  /** When `check` throws: `defer` (451 4.3.0, the sender retries) or `accept` unchecked. */
  onError: "defer" | "accept";
}

/**
 * The DATA-time parse on the event loop (without {@link InboundRouterOptions.parse}): the
 * skeleton stands in for the message's attachments.
 * @throws MailParseError when mailparser refuses the message
 */
async function parseOnLoop(raw: Buffer, skeleton: Buffer | null): Promise<ParsedMailSummary> {
  try {
    return await parseMail(raw, { attachments: "metadata", skeleton });
  } catch (err) {
    throw new MailParseError(err instanceof Error ? err.message : String(err));
  }
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

/**
 * The dedupe hash of a mail: SHA-256 over the envelope sender and the message as received.
 * With the Message-ID it is the dedupe key, so only a true retransmission is deduplicated.
 * @returns lower-case hex
 */
export function contentHash(mailFrom: string | null, raw: Buffer): string {
  return createHash("sha256").update(mailFrom ?? "").update("\0").update(raw).digest("hex");
}

/** The verdict fields shown on posted events (docs/formats.md). */
export function authFields(v: AuthVerdict): AuthFields {
  return { spf: v.spf, dkim: v.dkim, dmarc: v.dmarc, arc: v.arc, verified: v.verified };
}

/**
 * A mail injected by the admin API (src/admin/inject.ts) rather than received over SMTP. The
 * admin vouches for it, but nothing authenticates its author: no SPF/DKIM/DMARC/ARC check runs
 * (the verdict stored and shown is `none` for each, unverified), no spam check runs, the
 * `auth.unverified: reject` policy does not refuse it, and it is posted by the sender's
 * unverified ghost like any unauthenticated mail. Routing, room mailbox policies, contact
 * rules and dedupe are those of SMTP mail.
 */
export interface Injection {
  /** The trace header stored on top of the message instead of the SMTP Received header (CRLF-terminated). */
  received: string;
  /** Called with each committed row (`duplicate`: the same mail was committed to that target before). */
  onRow(row: InboundRow, duplicate: boolean): void;
}

/** The verdict of an injected mail: nothing was checked, nothing is verified. */
const INJECTED_VERDICT: AuthVerdict = {
  spf: "none", dkim: "none", dmarc: "none", arc: "none", verified: false, alignedBy: null, policy: null,
  dkimDomains: [], spfDomain: null, arcSealer: null, dnsTemporaryError: false,
};

/** The bridge's {@link InboundHandler}: recipient checks and routing. */
export class InboundRouter implements InboundHandler<Mailbox> {
  private readonly opts: InboundRouterOptions;

  constructor(opts: InboundRouterOptions) {
    this.opts = opts;
  }

  /**
   * Resolve a recipient address (already on one of the bridge's mail domains, domain
   * lower-cased) to a mailbox. `name+tag@` is read as `name@` with a tag (RFC 5233). In order:
   * a room mailbox (on every domain; a command tag is a command), `unsubscribe+<token>`,
   * `postmaster`/`abuse`, an alias of that domain, a personal mailbox (on every domain), and
   * last the domain's catch-all.
   * @returns the mailbox, or null when there is none
   * @throws Error when the homeserver cannot be asked (the listener answers 451)
   */
  async resolveMailbox(address: string): Promise<Mailbox | null> {
    const at = address.lastIndexOf("@");
    const full = address.slice(0, at).toLowerCase();
    const domain = address.slice(at + 1).toLowerCase();
    const plus = full.indexOf("+");
    const localpart = plus > 0 ? full.slice(0, plus) : full;
    const tag = plus > 0 ? full.slice(plus + 1) : null;
    // The address as reached, when it is not the mailbox's own one (another domain, a tag).
    const via = domain !== this.opts.ids.mailDomain || tag !== null ? { via: { address: `${full}@${domain}`, tag } } : {};
    const room = await this.opts.store.getRoomMailboxByLocalpart(localpart);
    if (room) {
      const command = tag !== null ? parseMailboxCommand(tag) : null;
      // A mistyped confirmation address is refused rather than posted.
      if (tag !== null && !command && tag.startsWith("confirm-")) return null;
      return { kind: "room", localpart, roomId: room.roomId, policy: room.policy, command, ...(command ? {} : via) };
    }
    if (localpart === "unsubscribe") {
      const roomId = tag ? await this.opts.store.roomOfUnsubscribeToken(tag) : null;
      return roomId ? { kind: "unsubscribe", localpart, roomId } : null;
    }
    if (localpart === "postmaster" || localpart === "abuse") {
      const { roomId, users } = this.opts.admins;
      return tag === null && (roomId || users.length > 0) ? { kind: "admin", localpart } : null;
    }
    const alias = await this.aliasMailbox(`${localpart}@${domain}`, `${full}@${domain}`, tag);
    if (alias) return alias;
    const userId = mailboxUserId(localpart, this.opts.ids);
    if (userId && this.opts.mayBridge(userId) && (await this.userExists(userId))) return { kind: "personal", localpart, userId, ...via };
    // The catch-all takes only what nothing else on its domain takes.
    return this.aliasMailbox(`*@${domain}`, `${full}@${domain}`, tag);
  }

  /**
   * An alias (or catch-all) with its targets: each room target that still has a room mailbox
   * (its policy applies), each user target still allowed to bridge; the rest are skipped.
   * @param alias the stored address (`local@domain` or `*@domain`)
   * @param address the recipient address as reached (with its tag)
   * @returns null when it is no alias or none of its targets can take mail
   */
  private async aliasMailbox(alias: string, address: string, tag: string | null): Promise<Mailbox | null> {
    const rows = await this.opts.store.listMailAliases({ address: alias });
    if (rows.length === 0) return null;
    const via = { address, tag };
    const targets: AliasTarget[] = [];
    for (const { target } of rows) {
      if (target.startsWith("!")) {
        const room = await this.opts.store.getRoomMailboxByRoom(target);
        if (room) targets.push({ kind: "room", localpart: room.localpart, roomId: target, policy: room.policy, command: null, via });
        else log.warn("alias target has no room mailbox any more, skipped", { alias, target });
      } else {
        const localpart = /^@([^:]+):/.exec(target)?.[1];
        if (localpart && this.opts.mayBridge(target)) targets.push({ kind: "personal", localpart, userId: target, via });
        else log.warn("alias target may not use the bridge, skipped", { alias, target });
      }
    }
    return targets.length > 0 ? { kind: "alias", address, tag, targets } : null;
  }

  /** Known answers of `userExists`, with when they expire (epoch ms). */
  private readonly userCache = new Map<string, { exists: boolean; until: number }>();
  /** Start (epoch ms) and count of the current 10 s lookup window. */
  private lookupWindow = { start: 0, count: 0 };

  /**
   * Whether a local user exists, asked of the homeserver at most once a minute per user (a
   * missing one: every 10 s), and at most `userLookupsPer10s` uncached times per 10 s overall.
   * @throws SmtpReply 451 4.7.1 over the rate; the homeserver's error when it cannot be asked
   */
  private async userExists(userId: string): Promise<boolean> {
    const now = Date.now();
    const hit = this.userCache.get(userId);
    if (hit && hit.until > now) return hit.exists;
    if (now - this.lookupWindow.start >= 10_000) this.lookupWindow = { start: now, count: 0 };
    if (++this.lookupWindow.count > (this.opts.userLookupsPer10s ?? 100)) {
      throw new SmtpReply(451, "4.7.1", "too many recipient lookups, try again later");
    }
    const exists = await this.opts.matrix.userExists(userId);
    if (this.userCache.size >= 10_000) this.userCache.clear();
    this.userCache.set(userId, { exists, until: now + (exists ? 60_000 : 10_000) });
    return exists;
  }

  /** RCPT TO: accept only the bridge's own mailboxes (RFC 5321 §3.6.2: never an open relay). */
  async checkRecipient(address: string, envelope: InboundEnvelope): Promise<Mailbox> {
    const mailbox = await this.resolveMailbox(address);
    if (!mailbox) {
      log.info("recipient rejected: no such mailbox", { session: envelope.sessionId, rcpt: address });
      throw new SmtpReply(550, "5.1.1", `<${address}>: no such mailbox here`);
    }
    return mailbox;
  }

  /**
   * DATA: authenticate, check for spam, route every recipient, and commit one inbound row per
   * target portal. Resolves only after the rows are committed (the listener then answers 250).
   * @param injection set for a mail the admin API injects (see {@link Injection}): no sender
   *   authentication or spam check, its own trace header, each committed row reported
   * @throws SmtpReply for mail that must be refused (5xx) or retried (4xx)
   */
  async deliver(raw: Buffer, envelope: InboundEnvelope<Mailbox>, injection?: Injection): Promise<void> {
    const { ids } = this.opts;
    const author = readAuthor(raw, [ids.mailDomain, this.opts.hostname.toLowerCase()]);
    // Every domain of the bridge is its own: no outsider speaks for its addresses (readAuthor
    // refuses the primary one).
    if (await this.opts.isLocalDomain?.(author.domain)) {
      throw new SmtpReply(550, "5.7.1", `mail from ${author.domain}, one of this bridge's own domains, is not accepted from outside`);
    }
    let sender: string;
    try {
      sender = normalizeAddress(author.address, { caseSensitiveLocalparts: ids.caseSensitiveLocalparts });
      Ghost.of(sender, true, ids);
    } catch (err) {
      throw new SmtpReply(550, "5.7.1", `the From address cannot be bridged: ${(err as Error).message}`);
    }
    let mail: ParsedMailSummary;
    try {
      // The listener's skeleton parses like the message without decoding any attachment.
      mail = await (this.opts.parse ?? parseOnLoop)(raw, envelope.skeleton ?? null);
    } catch (err) {
      if (!(err instanceof MailParseError)) throw err;
      log.info("mail could not be parsed", { session: envelope.sessionId, sender, error: err.message });
      throw new SmtpReply(554, "5.6.0", err.timedOut ? `message could not be parsed: ${err.message}` : "message could not be parsed");
    }
    if (mail.unreadable) {
      log.info("mail cannot be read", { session: envelope.sessionId, sender, problem: mail.unreadable });
      throw new SmtpReply(554, "5.6.0", `message could not be parsed: ${mail.unreadable}`);
    }
    const parsedFrom = mail.from ? safeNormalize(mail.from.address, ids) : null;
    if (parsedFrom !== sender) throw new SmtpReply(550, "5.7.1", "the From header field is ambiguous");

    const verdict = injection ? INJECTED_VERDICT : await authenticateMessage(
      { raw, mailFrom: envelope.mailFrom, remoteAddress: envelope.remoteAddress, heloName: envelope.heloName },
      author,
      { lookup: this.opts.auth.lookup, hostname: this.opts.hostname, minKeyBits: this.opts.auth.minKeyBits, trustedArcSealers: this.opts.auth.trustedArcSealers },
    );
    const decision: ReturnType<typeof authDecision> = injection ? { accept: true, verified: false } : authDecision(verdict, author, this.opts.auth.policy);
    const authLog = { session: envelope.sessionId, sender, spf: verdict.spf, dkim: verdict.dkim, dmarc: verdict.dmarc, arc: verdict.arc, policy: verdict.policy, verified: verdict.verified };
    if (!decision.accept) {
      log.info("mail refused by sender authentication", { ...authLog, reply: decision.reply.line });
      throw decision.reply;
    }
    log.debug("sender authentication", authLog);
    const spam = injection ? null : await this.spamVerdict(raw, envelope, sender);

    const hash = contentHash(envelope.mailFrom, raw);
    // A mail without a Message-ID gets one derived from its content: a retry posts once.
    const messageId = mail.messageId ?? `${hash.slice(0, 32)}.derived@${ids.mailDomain}`;
    const participants = [...new Set([...mail.to, ...mail.cc].map((a) => safeNormalize(a.address, ids)).filter((a): a is string => a !== null))];
    const threadIds = threadIdsOf(mail);
    const targets = new Map<string, NewInbound>();
    const members = new Map<string, Promise<string[]>>();
    const base = {
      messageId,
      sender,
      senderVerified: decision.verified,
      senderName: mail.from?.name ?? null,
      auth: authFields(verdict),
      spam,
      participants,
      contentHash: hash,
      envelopeFrom: envelope.mailFrom,
    };
    // A delivery report about mail the bridge sent goes to that message, as a reply.
    const bounce = await this.bounceTarget(raw, envelope, decision.verified);
    if (bounce) {
      const stored = withTrace(Buffer.from(receivedHeader(envelope, this.opts.hostname, null)), raw, envelope.traceHeadroom ?? 0);
      const { row, duplicate } = await this.opts.store.insertInbound({ ...base, kind: "dsn", ...bounce, raw: stored });
      log.info(duplicate ? "duplicate delivery report ignored" : "delivery report accepted", { session: envelope.sessionId, messageId, roomId: row.roomId ?? undefined, replyTo: row.replyToEventId ?? undefined, inbound: row.id });
      this.opts.onCommitted();
      return;
    }
    // Each recipient was resolved once, at RCPT time; the decision travels with the envelope.
    const commands: (() => Promise<void>)[] = [];
    /** Refusals by personal mailboxes whose user blocked this sender (or switched the mailbox off). */
    const refused: SmtpReply[] = [];
    /** Personal mailboxes in `hold` mode for which this mail is a contact request. */
    const held: { userId: string; address: string; target: Pick<NewInbound, "roomId" | "dmLocalUserId" | "replyToEventId"> }[] = [];
    const heldInfo = { sender, senderName: mail.from?.name || null, verified: decision.verified, subject: mail.subject, text: mail.text };
    const addTarget = (target: RoutedTarget) => {
      const key = target.roomId ?? `dm:${target.dmLocalUserId}`;
      const known = targets.get(key);
      if (!known || (!known.replyToEventId && target.replyToEventId)) targets.set(key, { ...base, ...target, raw });
    };
    // An alias stands for its targets: each target room gets the mail once (1:N, deduped in `targets`).
    for (const mailbox of expandAliases(envelope.recipients.values())) {
      if (mailbox.kind === "room" && mailbox.command) {
        commands.push(this.command(mailbox, mailbox.command, sender, decision.verified, envelope));
        continue;
      }
      if (mailbox.kind === "unsubscribe") {
        // Only the address itself may stop its mail: a forged From must not cut someone off.
        if (!decision.verified) throw new SmtpReply(550, "5.7.1", "unsubscribing needs an authenticated sender (SPF or DKIM aligned with the From address)");
        commands.push(async () => {
          await this.opts.subscriptions.optOut(mailbox.roomId, sender);
          log.info("unsubscribe by mail", { session: envelope.sessionId, roomId: mailbox.roomId, sender });
        });
        continue;
      }
      if (mailbox.kind === "room") await this.checkPolicy(mailbox, sender, decision.verified);
      for (const target of await this.route(mailbox, sender, decision.verified, threadIds, members)) {
        if (mailbox.kind === "personal") {
          // The user's contact rules and mode (`block`, `allow`, `contacts hold`): only mail that
          // would open a new DM can be a contact request.
          const address = `${mailbox.localpart}@${ids.mailDomain}`;
          const gate = await this.opts.contacts.gate(mailbox.userId, address, heldInfo, target.dmLocalUserId !== null);
          if (gate.kind === "refuse") {
            refused.push(gate.reply);
            continue;
          }
          if (gate.kind === "hold") {
            held.push({ userId: mailbox.userId, address, target });
            continue;
          }
        }
        addTarget(target);
      }
    }
    if (held.length > 0 && (targets.size > 0 || commands.length > 0)) {
      // One DATA reply covers every recipient: the others are not kept waiting for this user's
      // decision. The held copy opens a DM invite instead, which the user can still reject.
      log.info("contact request delivered as a DM invite: the mail has other recipients", { session: envelope.sessionId, sender, recipients: held.map((h) => h.address) });
      for (const h of held) addTarget(h.target);
    } else if (held.length > 0) {
      let reply: SmtpReply | null = null;
      for (const h of held) reply = await this.opts.contacts.hold(h.userId, h.address, heldInfo);
      throw reply!;
    }
    if (targets.size === 0 && commands.length === 0 && refused.length > 0) {
      log.info("mail refused: the recipient blocked the sender", { session: envelope.sessionId, sender, replies: refused.map((r) => r.text) });
      throw refused.length === 1 ? refused[0]! : new SmtpReply(550, "5.7.1", refused.map((r) => r.text).join("; "));
    }
    if (refused.length > 0) log.info("blocked sender: not delivered to some recipients", { session: envelope.sessionId, sender, replies: refused.map((r) => r.text) });
    if (targets.size === 0 && commands.length === 0) throw new SmtpReply(550, "5.1.1", "no valid recipients");
    for (const run of commands) await run();
    if (targets.size === 0) return;
    const trace = Buffer.from(injection?.received ?? receivedHeader(envelope, this.opts.hostname, envelope.rcptTo.length === 1 ? envelope.rcptTo[0]! : null));
    const stored = withTrace(trace, raw, envelope.traceHeadroom ?? 0);
    for (const mailRow of targets.values()) {
      const { row, duplicate } = await this.opts.store.insertInbound({ ...mailRow, raw: stored });
      // Parse once: the poster posts this parse rather than parsing the stored message again.
      if (!duplicate) this.opts.parsed?.put(row.id, mail);
      injection?.onRow(row, duplicate);
      log.info(duplicate ? "duplicate mail ignored" : "mail accepted", {
        session: envelope.sessionId,
        messageId,
        sender,
        verified: decision.verified,
        roomId: row.roomId ?? undefined,
        dmFor: row.dmLocalUserId ?? undefined,
        inbound: row.id,
      });
    }
    this.opts.onCommitted();
  }

  /**
   * Run the spam check, if configured.
   * @returns the verdict to store, or null when no check ran
   * @throws SmtpReply 550 5.7.1 / 451 4.7.1 from the verdict, or 451 4.3.0 when the check failed and `onError` is `defer`
   */
  private async spamVerdict(raw: Buffer, envelope: InboundEnvelope, sender: string): Promise<SpamFields | null> {
    const spam = this.opts.spam;
    if (!spam) return null;
    let verdict: SpamVerdict;
    try {
      verdict = await spam.check(raw, envelope);
    } catch (err) {
      if (spam.onError === "defer") {
        log.warn("spam check failed, deferring the mail", { session: envelope.sessionId, sender, error: (err as Error).message });
        throw new SmtpReply(451, "4.3.0", "spam check unavailable, try again later");
      }
      log.warn("spam check failed, accepting the mail unchecked", { session: envelope.sessionId, sender, error: (err as Error).message });
      return null;
    }
    const reply = verdictReply(verdict);
    if (reply) {
      log.debug("spam verdict refuses the mail", { session: envelope.sessionId, sender, action: verdict.action, score: verdict.score });
      throw reply;
    }
    return { action: verdict.action, score: verdict.score, requiredScore: verdict.requiredScore };
  }

  /**
   * Where a delivery report (RFC 3464) about mail the bridge sent goes: the room of the original
   * message, as a reply to it. Only an authenticated report (its reporting domain passes SPF or
   * DKIM aligned with its From) from the null reverse-path is matched, and only to a message
   * whose sender's personal mailbox it was mailed to; anything else is ordinary mail.
   * @returns the target, or null when the mail is not such a report
   */
  private async bounceTarget(raw: Buffer, envelope: InboundEnvelope<Mailbox>, verified: boolean): Promise<Pick<NewInbound, "roomId" | "dmLocalUserId" | "replyToEventId"> | null> {
    if (!verified || envelope.mailFrom) return null;
    const report = await parseDsn(raw);
    if (!report?.originalMessageId) return null;
    const owners = new Set([...envelope.recipients.values()].flatMap((m) => (m.kind === "personal" ? [`${m.localpart}@${this.opts.ids.mailDomain}`] : [])));
    for (const known of await this.opts.store.getMessagesByMessageId(report.originalMessageId)) {
      if (known.direction === "outbound" && owners.has(known.sender)) return { roomId: known.roomId, dmLocalUserId: null, replyToEventId: known.eventId };
    }
    return null;
  }

  /**
   * A plus-address command to a room mailbox. Refusals are thrown at once (before anything is
   * committed); the returned function carries it out after every recipient was checked.
   * Subscribing and unsubscribing need an authenticated sender: a forged From must neither mail
   * a confirmation to a stranger nor remove a subscriber.
   * @throws SmtpReply 550 5.7.1 for an unauthenticated (un)subscribe
   */
  private command(mailbox: Extract<Mailbox, { kind: "room" }>, command: MailboxCommand, sender: string, verified: boolean, envelope: InboundEnvelope): () => Promise<void> {
    const ctx = { session: envelope.sessionId, roomId: mailbox.roomId, sender, command: command.kind };
    if (command.kind !== "confirm" && !verified) {
      throw new SmtpReply(550, "5.7.1", `${command.kind} requests to ${mailbox.localpart}@${this.opts.ids.mailDomain} need an authenticated sender`);
    }
    return async () => {
      if (command.kind === "subscribe") await this.opts.subscriptions.request(mailbox.roomId, mailbox.localpart, sender);
      else if (command.kind === "unsubscribe") await this.opts.subscriptions.unsubscribe(mailbox.roomId, sender);
      else await this.opts.subscriptions.confirm(command.token, sender);
      log.info("room mailbox command", ctx);
    };
  }

  /**
   * A room mailbox's posting policy: `verified` takes authenticated senders only, `members`
   * only senders whose (verified) ghost is already in the room.
   * @throws SmtpReply 550 5.7.1 when the sender may not post; the homeserver's error when the
   *   member list cannot be read (the listener answers 451)
   */
  private async checkPolicy(mailbox: Extract<Mailbox, { kind: "room" }>, sender: string, verified: boolean): Promise<void> {
    if (mailbox.policy === "open") return;
    const address = `${mailbox.localpart}@${this.opts.ids.mailDomain}`;
    if (!verified) throw new SmtpReply(550, "5.7.1", `${address} accepts mail from authenticated senders only`);
    if (mailbox.policy === "members") {
      const members = await this.opts.matrix.joinedMembers(mailbox.roomId);
      if (!members.includes(Ghost.of(sender, true, this.opts.ids).userId)) throw new SmtpReply(550, "5.7.1", `${address} accepts mail from its members only`);
    }
  }

  /**
   * Where a mail for `mailbox` goes (one target, or one per admin). A thread is joined only by a
   * verified sender who took part in the referenced message (and, through a personal mailbox,
   * whose ghost is still joined to the room); otherwise the mail is routed as if it had no
   * thread headers.
   */
  private async route(
    mailbox: TargetMailbox,
    sender: string,
    verified: boolean,
    threadIds: string[],
    members: Map<string, Promise<string[]>>,
  ): Promise<RoutedTarget[]> {
    if (mailbox.kind === "admin") {
      const { roomId, users } = this.opts.admins;
      return roomId ? [{ roomId, dmLocalUserId: null, replyToEventId: null }] : users.map((u) => ({ roomId: null, dmLocalUserId: u, replyToEventId: null }));
    }
    if (mailbox.kind === "unsubscribe") return []; // handled as a command, never posted
    return [{ ...(await this.routeOne(mailbox, sender, verified, threadIds, members)), ...reachedFields(mailbox) }];
  }

  private async routeOne(
    mailbox: Exclude<TargetMailbox, { kind: "admin" } | { kind: "unsubscribe" }>,
    sender: string,
    verified: boolean,
    threadIds: string[],
    members: Map<string, Promise<string[]>>,
  ): Promise<Pick<NewInbound, "roomId" | "dmLocalUserId" | "replyToEventId">> {
    if (verified) {
      for await (const known of continuableMessages(this.opts.store, threadIds, sender)) {
        if (mailbox.kind === "room" && known.roomId === mailbox.roomId) {
          return { roomId: known.roomId, dmLocalUserId: null, replyToEventId: known.eventId };
        }
        if (mailbox.kind === "personal") {
          let list = members.get(known.roomId);
          if (!list) {
            list = this.membersOf(known.roomId);
            members.set(known.roomId, list);
          }
          // The mailbox's owner reads the room, and the sender's ghost is still in it: a ghost a
          // member removed (a kick), or one that left, does not come back by replying.
          const joined = await list;
          if (joined.includes(mailbox.userId) && joined.includes(Ghost.of(sender, true, this.opts.ids).userId)) {
            return { roomId: known.roomId, dmLocalUserId: null, replyToEventId: known.eventId };
          }
        }
      }
    }
    if (mailbox.kind === "room") return { roomId: mailbox.roomId, dmLocalUserId: null, replyToEventId: null };
    const dm = await this.opts.store.getDmPortal(mailbox.userId, sender, verified);
    if (dm) return { roomId: dm.roomId, dmLocalUserId: null, replyToEventId: null };
    return { roomId: null, dmLocalUserId: mailbox.userId, replyToEventId: null };
  }

  /**
   * Joined members of a portal, read by a bridge user that is in it.
   * @returns [] when the room is not a portal
   * @throws the homeserver's error: the listener answers 451 and the sender retries, rather
   *   than the reply silently landing in the wrong room
   */
  private async membersOf(roomId: string): Promise<string[]> {
    const portal = await this.opts.store.getPortalByRoom(roomId);
    if (!portal) return [];
    return this.opts.matrix.joinedMembers(roomId, portalOf(portal).reader(this.opts.ids));
  }
}

/** Normalise an address from a header; null when it cannot be a mailbox address. */
function safeNormalize(address: string, ids: IdContext): string | null {
  try {
    return normalizeAddress(address, { caseSensitiveLocalparts: ids.caseSensitiveLocalparts });
  } catch {
    return null; // an unusable To/Cc entry simply names no participant
  }
}
