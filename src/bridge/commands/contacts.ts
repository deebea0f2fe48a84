/**
 * Bot commands about who may mail a user's personal mailbox (see src/bridge/Contacts.ts):
 * `contacts [invite|hold]`, `accept`, `refuse`, `refuse-quietly`, `block`, `allow`. They act for
 * the user who says them, in whatever room they are said.
 */
import type { ContactRuleRow } from "../../store/Store.ts";
import { InvalidAddressError, normalizeAddress } from "../ids.ts";
import { CommandError, requireBridgeUser, restOf, type CommandContext, type CommandRequest } from "./context.ts";
import { cleanDisplayName } from "../Ghost.ts";
import { PREVIEW_SUBJECT_CHARS } from "../Contacts.ts";

/** Longest refusal reason, in characters (it goes into one SMTP reply line). */
const MAX_REASON_CHARS = 200;

/**
 * An address (`bob@example.org`) or, when `domains` is set, a domain (`example.org`), normalised.
 * @throws CommandError naming the input when it is neither
 */
function patternOf(ctx: CommandContext, raw: string | undefined, usage: string, domains: boolean): string {
  if (!raw) throw new CommandError(`say which ${domains ? "address or domain" : "address"}, e.g. \`${usage}\``);
  try {
    if (raw.includes("@")) return normalizeAddress(raw, { caseSensitiveLocalparts: ctx.ids.caseSensitiveLocalparts });
    if (domains) return normalizeAddress(`x@${raw}`).slice(2);
  } catch (err) {
    if (!(err instanceof InvalidAddressError)) throw err;
  }
  throw new CommandError(`not ${domains ? "an address or domain" : "an address"}: ${JSON.stringify(raw)}`);
}

/**
 * `block <address|domain>` / `allow <address|domain>`: the sender's own contact rules. `allow`
 * also accepts a waiting contact request from that address.
 */
export async function contactRuleCommand(ctx: CommandContext, req: CommandRequest, rule: "block" | "allow", args: string[]): Promise<string> {
  requireBridgeUser(ctx, req.sender);
  const pattern = patternOf(ctx, args[0], `${rule} bob@example.org\` or \`${rule} example.org`, true);
  const what = pattern.includes("@") ? "it" : "that domain";
  if (rule === "block") {
    await ctx.contacts.refuse(req.sender, pattern, { reason: null, quiet: false });
    return `Blocked ${pattern}: mail from ${what} to your mailbox is refused. Say \`allow ${pattern}\` to undo.`;
  }
  await ctx.contacts.accept(req.sender, pattern);
  return `Allowed ${pattern}: mail from ${what} reaches you.`;
}

/** `accept <address>`: let a contact request's mail in (on the sending server's next try). */
export async function acceptCommand(ctx: CommandContext, req: CommandRequest, args: string[]): Promise<string> {
  requireBridgeUser(ctx, req.sender);
  const address = patternOf(ctx, args[0], "accept bob@example.org", false);
  const request = await ctx.contacts.accept(req.sender, address);
  return request?.state === "pending"
    ? `Accepted ${address}: their mail comes in on their server's next try (usually within the hour).`
    : `Accepted ${address}: mail from it reaches you.`;
}

/**
 * `refuse <address> [reason]` / `refuse-quietly <address>`: refuse a contact request; the
 * sending server's next try gets 550 5.7.1, with the reason, or a bare one.
 */
export async function refuseCommand(ctx: CommandContext, req: CommandRequest, quiet: boolean, args: string[]): Promise<string> {
  requireBridgeUser(ctx, req.sender);
  const address = patternOf(ctx, args[0], quiet ? "refuse-quietly bob@example.org" : "refuse bob@example.org [reason]", false);
  let reason: string | null = null;
  if (!quiet) {
    // One printable line: it goes into the SMTP reply the sender's server reports.
    reason = restOf(req, 2).replace(/[^\x20-\x7e\u00a0-\uffff]+/g, " ").replace(/\s+/g, " ").trim() || null;
    if (reason && reason.length > MAX_REASON_CHARS) throw new CommandError(`the reason is too long: at most ${MAX_REASON_CHARS} characters`);
  }
  await ctx.contacts.refuse(req.sender, address, { reason, quiet });
  const told = quiet ? "a bare refusal" : reason ? `a refusal saying "${reason}"` : "a refusal";
  return `Refused ${address}: their server gets ${told} on its next try, and so does any later mail. Say \`allow ${address}\` to undo.`;
}

/** `contacts`: mode, waiting requests and rules; `contacts invite|hold`: set the mode. */
export async function contactsCommand(ctx: CommandContext, req: CommandRequest, args: string[]): Promise<string> {
  requireBridgeUser(ctx, req.sender);
  const sub = args[0]?.toLowerCase();
  if (sub === "invite" || sub === "hold") {
    await ctx.contacts.setMode(req.sender, sub);
    return sub === "hold"
      ? "Done: mail from people you have not accepted now waits on their server; I tell you of each and you say `accept`, `refuse` or `refuse-quietly`."
      : "Done: mail from people you have not accepted now opens a chat invite at once; join to accept them, reject to refuse them.";
  }
  if (sub !== undefined) throw new CommandError(`expected \`invite\` or \`hold\`, not \`${args[0]}\``);
  const settings = await ctx.store.getUserSettings(req.sender);
  const pending = await ctx.store.listContactRequests(req.sender, "pending");
  const rules = await ctx.store.listContactRules(req.sender);
  const lines = [
    settings.contactMode === "hold"
      ? "Mode: hold (mail from strangers waits until you accept it; `contacts invite` to change)"
      : "Mode: invite (mail from strangers opens a chat invite; `contacts hold` to change)",
  ];
  if (pending.length > 0) {
    lines.push("Waiting for your answer:");
    // The verdict before anything the sender chose; the subject cleaned and cut (Contacts.ts previews).
    for (const r of pending) {
      const subject = cleanDisplayName(r.subject, PREVIEW_SUBJECT_CHARS);
      lines.push(`• ${r.verified ? "✅" : "⚠️"} ${r.sender} (${r.verified ? "authenticated" : "unauthenticated"}, ${r.attempts} ${r.attempts === 1 ? "try" : "tries"}): ${subject === null ? "(no subject)" : `"${subject}"`}`);
    }
  }
  const blocked = rules.filter((r) => r.rule === "block");
  const allowed = rules.filter((r) => r.rule === "allow");
  if (blocked.length > 0) lines.push("Refused:", ...blocked.map(describeBlock));
  if (allowed.length > 0) lines.push("Accepted:", ...allowed.map((r) => `• ${r.pattern}`));
  if (rules.length === 0 && pending.length === 0) lines.push("You have accepted and refused nobody yet. Say `block <address|domain>` to refuse someone's mail.");
  return lines.join("\n");
}

function describeBlock(r: ContactRuleRow): string {
  return `• ${r.pattern}${r.quiet ? " (quietly)" : r.reason ? ` ("${r.reason}")` : ""}`;
}
