/**
 * Who may reach a user's personal mailbox: contact rules (`block`, `allow`), the contact mode
 * (`invite` or `hold`) and contact requests. One owner for the concept: the inbound router asks
 * it at DATA time, the bot commands and the Matrix handler tell it the user's decisions.
 *
 * A sender is a *stranger* to a user until the user has accepted them: an `allow` rule (set by
 * `accept`/`allow`, by joining a DM invite from their ghost, by `start`, or by inviting their
 * ghost; migration 9 made one for every existing DM). Mail from a stranger that would open a new
 * DM is a contact request:
 * - `invite` mode: the DM invite from the ghost, whose reason previews the mail;
 * - `hold` mode: 451 4.7.1 (RFC 3463: 4.7.1 "delivery not authorized", temporary) until the
 *   user decides, with one bot message per request; the sending MTA's own retry then delivers
 *   (accepted) or gets 550 5.7.1 (refused).
 * Replies in an existing conversation and mail into an existing DM are never held.
 */
import type { BridgeStore, ContactMode, ContactRequestRow, ContactRuleRow } from "../store/Store.ts";
import { SmtpReply } from "../mail/inbound/rejections.ts";
import type { MatrixActions } from "./ports.ts";
import { MAX_SHOWN_SUBJECT_CHARS } from "./format/toMatrix.ts";
import { cleanDisplayName, nameHasAtSign } from "./Ghost.ts";
import { getLogger, errorFields } from "../util/logger.ts";

const log = getLogger("bridge/contacts");

/**
 * Most bot messages about new contact requests per user per hour: a flood of strangers (or of
 * forged senders) cannot flood the user's chat. Requests past it are still recorded (`contacts`
 * lists them) and told on a later attempt of their MTA, once the hour has room again.
 */
export const MAX_REQUEST_NOTICES_PER_HOUR = 10;

/** Longest preview of a held mail's text, in characters; also the longest DM invite preview. */
export const PREVIEW_CHARS = 300;

/** Longest (verified) sender name in a DM invite preview or a contact request, in UTF-16 code units. */
export const PREVIEW_NAME_CHARS = 64;

/** Longest subject in a DM invite preview, in UTF-16 code units (less when the address is long). */
export const PREVIEW_SUBJECT_CHARS = 120;

/** What the router knows of one mail when it asks {@link Contacts.gate}. */
export interface HeldMailInfo {
  sender: string;
  senderName: string | null;
  verified: boolean;
  subject: string | null;
  /** The mail's plain text. */
  text: string;
}

/**
 * The decision for one personal-mailbox recipient:
 * - `deliver`: route the mail as usual;
 * - `refuse`: the user blocked the sender (`reply` says how);
 * - `hold`: a contact request in `hold` mode; the mail waits for the user (451 4.7.1).
 */
export type ContactGate = { kind: "deliver" } | { kind: "refuse"; reply: SmtpReply } | { kind: "hold"; mailbox: string };

/** Options of {@link Contacts}. */
export interface ContactsOptions {
  store: BridgeStore;
  matrix: Pick<MatrixActions, "botDm" | "botNotice">;
}

/** Contact rules, modes and requests of local users (see the module comment). */
export class Contacts {
  private readonly opts: ContactsOptions;

  constructor(opts: ContactsOptions) {
    this.opts = opts;
  }

  /**
   * The reply that refuses a blocked sender (RFC 3463 5.7.1): names the mailbox, the sender and
   * the user's reason; a quiet refusal names nothing.
   */
  static refusal(rule: ContactRuleRow, mailbox: string, sender: string): SmtpReply {
    if (rule.quiet) return new SmtpReply(550, "5.7.1", "message refused");
    return new SmtpReply(550, "5.7.1", `${mailbox} does not accept mail from ${sender}${rule.reason ? `: ${rule.reason}` : ""}`);
  }

  /**
   * Decide mail from `mail.sender` to `userId`'s personal mailbox.
   * @param mailbox the recipient address, for replies
   * @param opensDm whether the mail would open a new DM (not a reply in a conversation the user
   *   is in, not mail into an existing DM portal): only such mail can be a contact request
   * @throws the store's error
   */
  async gate(userId: string, mailbox: string, mail: HeldMailInfo, opensDm: boolean): Promise<ContactGate> {
    const { store } = this.opts;
    const rule = await store.contactRuleFor(userId, mail.sender);
    if (rule?.rule === "block") return { kind: "refuse", reply: Contacts.refusal(rule, mailbox, mail.sender) };
    if (rule?.rule === "allow" || !opensDm) return { kind: "deliver" };
    const settings = await store.getUserSettings(userId);
    if (!settings.personalMailbox) return { kind: "refuse", reply: new SmtpReply(550, "5.1.1", `<${mailbox}>: no such mailbox here`) };
    if (settings.contactMode === "invite") return { kind: "deliver" };
    return { kind: "hold", mailbox };
  }

  /**
   * Record a held mail's attempt and tell the user of a new request (or of one they were not
   * told of yet: the bot message failed last time).
   * @returns the reply for the sending MTA: 451 4.7.1, try again later
   * @throws the store's error (the listener then answers 451 too)
   */
  async hold(userId: string, mailbox: string, mail: HeldMailInfo): Promise<SmtpReply> {
    const { store } = this.opts;
    const preview = previewOf(mail.text);
    const { row, created } = await store.noteContactRequest({ userId, sender: mail.sender, senderName: mail.senderName, verified: mail.verified, subject: mail.subject, preview });
    log.info(created ? "contact request held" : "contact request retried", { user: userId, sender: mail.sender, attempts: row.attempts });
    if (row.notifiedAt === null) {
      const told = await store.countContactRequestNotices(userId, Date.now() - 3_600_000);
      if (told < MAX_REQUEST_NOTICES_PER_HOUR) await this.notify(row);
      else log.warn("contact request not told now: too many this hour", { user: userId, sender: mail.sender, told });
    }
    return new SmtpReply(451, "4.7.1", `${mailbox} has not accepted mail from ${mail.sender} yet; try again later`);
  }

  /** Tell the user of a request in their DM with the bot; a failure is logged and retried on the next attempt. */
  private async notify(row: ContactRequestRow): Promise<void> {
    const { matrix, store } = this.opts;
    try {
      const roomId = await matrix.botDm(row.userId);
      await matrix.botNotice(roomId, requestText(row));
      await store.markContactRequestNotified(row.userId, row.sender);
    } catch (err) {
      log.error("could not tell the user of a contact request", { user: row.userId, sender: row.sender, ...errorFields(err) });
    }
  }

  /**
   * The user accepts `address` (`accept`, `allow`, or joining its ghost's DM invite): an `allow`
   * rule, and its request (if any) is accepted. The sending MTA's next try is delivered.
   * @returns the request that was waiting, or null
   */
  async accept(userId: string, address: string): Promise<ContactRequestRow | null> {
    const { store } = this.opts;
    await store.setContactRule(userId, address, "allow");
    const request = await store.getContactRequest(userId, address);
    if (request) await store.setContactRequestState(userId, address, "accepted");
    log.info("contact accepted", { user: userId, address });
    return request;
  }

  /**
   * The user started talking to `address` (`start`, inviting its ghost): it is a contact from
   * now on, unless the user has a rule for that very address (which stays as it is).
   */
  async known(userId: string, address: string): Promise<void> {
    const rule = await this.opts.store.contactRuleFor(userId, address);
    if (rule?.pattern === address) return;
    await this.accept(userId, address);
  }

  /**
   * The user refuses an address or a domain (`refuse`, `refuse-quietly`, `block`, rejecting a
   * DM invite): later mail gets 550 5.7.1, with `reason` unless `quiet`.
   * @returns the request that was waiting, or null
   */
  async refuse(userId: string, pattern: string, refusal: { reason: string | null; quiet: boolean }): Promise<ContactRequestRow | null> {
    const { store } = this.opts;
    await store.setContactRule(userId, pattern, "block", refusal);
    const request = pattern.includes("@") ? await store.getContactRequest(userId, pattern) : null;
    if (request) await store.setContactRequestState(userId, pattern, "refused");
    log.info("contact refused", { user: userId, pattern, quiet: refusal.quiet });
    return request;
  }

  /** Set how mail from strangers reaches the user. */
  async setMode(userId: string, mode: ContactMode): Promise<void> {
    await this.opts.store.updateUserSettings(userId, { contactMode: mode });
  }
}

/** The first lines of a mail's text, at most {@link PREVIEW_CHARS} characters; null when empty. */
export function previewOf(text: string): string | null {
  const lines = text.replace(/\r\n?/g, "\n").split("\n").map((l) => l.trimEnd()).filter((l) => l.trim() !== "");
  let out = "";
  for (const line of lines) {
    const next = out ? `${out}\n${line}` : line;
    if (next.length > PREVIEW_CHARS) {
      out = out || `${line.slice(0, PREVIEW_CHARS - 1)}…`;
      break;
    }
    out = next;
    if (out.split("\n").length >= 5) break;
  }
  return out || null;
}

/**
 * How a sender's authentication shows in previews: always the first words, so no text the
 * sender chose (name, subject) can come before it, and no cut can remove it.
 * @param verified whether the mail's sender authenticated (aligned SPF or DKIM, RFC 7489 §3.1)
 * @returns `from an authenticated sender` or `from an unauthenticated sender (…)`, to follow
 *   the ✅ or ⚠️ that opens the text (no final punctuation)
 */
export function verdictLabel(verified: boolean): string {
  return verified ? "from an authenticated sender" : "from an unauthenticated sender (the From address could not be verified)";
}

/**
 * `text` cut to at most `max` UTF-16 code units, `…` marking a cut, never inside a surrogate pair.
 * @param text the text to bound
 * @param max longest result (at least 1)
 */
function cutTo(text: string, max: number): string {
  if (text.length <= max) return text;
  let out = "";
  for (const ch of text) {
    if (out.length + ch.length > max - 1) break;
    out += ch;
  }
  return `${out.trimEnd()}…`;
}

/**
 * A sender-chosen text (subject, display name) as a preview shows it: cleaned like a display
 * name (controls, line breaks and bidi overrides removed: they could reorder or hide the
 * verdict, CVE-2021-42574) and cut by itself to `max`.
 * @returns the shown text, or null when nothing printable is left
 */
function shownClaim(raw: string | null, max: number): string | null {
  const cleaned = cleanDisplayName(raw, Number.POSITIVE_INFINITY);
  return cleaned === null ? null : cutTo(cleaned, max);
}

/**
 * Who wrote, as a preview shows it: `Name <address>` for an authenticated sender whose name is
 * usable, else the bare address. The From display name of unverified mail is never shown (the
 * ghost rule, Ghost.ts), nor a name with an at sign in any spelling (it would read as another
 * address, {@link nameHasAtSign}).
 */
function shownSender(sender: string, senderName: string | null, verified: boolean): string {
  const name = verified ? shownClaim(senderName, PREVIEW_NAME_CHARS) : null;
  return name && !nameHasAtSign(name) ? `${name} <${sender}>` : sender;
}

/**
 * The bot's message about a held request: the verdict first, then the sender (the display name
 * only when authenticated), subject, first lines and the choices.
 * @param row the held request
 * @returns the plain-text message body
 */
export function requestText(row: ContactRequestRow): string {
  const who = shownSender(row.sender, row.senderName, row.verified);
  const quote = row.preview ? row.preview.split("\n").map((l) => `> ${l}`).join("\n") : "> (no text)";
  const subject = shownClaim(row.subject, MAX_SHOWN_SUBJECT_CHARS);
  return [
    `📨 ${row.verified ? "✅" : "⚠️"} Contact request ${verdictLabel(row.verified)}: ${who} wants to mail you.`,
    `Subject: ${subject ?? "(none)"}`,
    quote,
    `Their mail waits on their server. Say \`accept ${row.sender}\` to let it in (it arrives on their server's next try), \`refuse ${row.sender} [reason]\` to refuse it with your reason, or \`refuse-quietly ${row.sender}\` to refuse it without one.`,
  ].join("\n");
}

/**
 * The reason shown with a DM invite opened by a stranger's mail (Element shows it with the
 * invite), e.g. `✅ Email from an authenticated sender: Bob <bob@example.org>: "Hi". Join to
 * read it and reply; reject to refuse their mail.`
 *
 * The verdict comes first, so nothing the sender wrote can precede or imitate it, nor push it
 * past the cut. The display name is shown only for an authenticated sender (never for
 * unverified mail, the ghost rule of Ghost.ts), at most {@link PREVIEW_NAME_CHARS}; the subject
 * is cleaned and cut by itself to at most {@link PREVIEW_SUBJECT_CHARS} (less when a long
 * address leaves less room). The whole is at most {@link PREVIEW_CHARS} UTF-16 code units.
 * @param sender the sender's normalised address
 * @param senderName the From display name (shown only when `verified`)
 * @param subject the mail's subject, or null
 * @param verified whether the sender authenticated (aligned SPF or DKIM, RFC 7489 §3.1)
 * @returns the invite reason
 */
export function invitePreview(sender: string, senderName: string | null, subject: string | null, verified: boolean): string {
  const head = `${verified ? "✅" : "⚠️"} Email ${verdictLabel(verified)}: ${shownSender(sender, senderName, verified)}`;
  const tail = ". Join to read it and reply; reject to refuse their mail.";
  const room = Math.min(PREVIEW_SUBJECT_CHARS, PREVIEW_CHARS - head.length - tail.length - 4);
  const shown = room >= 8 ? shownClaim(subject, room) : null;
  return cutTo(`${head}${shown ? `: "${shown}"` : ""}${tail}`, PREVIEW_CHARS);
}
