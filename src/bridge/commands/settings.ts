/**
 * Bot commands for settings and inspection: `personal` (the user's own mailbox and outgoing
 * name), `mailbox signature` (a room's signature line) and `headers` (a bridged message's
 * original header section and authentication results).
 */
import { personalAddress } from "../ids.ts";
import { cleanDisplayName, nameHasAtSign } from "../Ghost.ts";
import { CommandError, MAILBOX_POWER_LEVEL, requireBridgeUser, restOf, type CommandContext, type CommandRequest } from "./context.ts";

/** Longest outgoing display name and signature, in characters. */
const MAX_NAME_CHARS = 100;
const MAX_SIGNATURE_CHARS = 300;
/** Most header bytes shown by `headers` (a Matrix event stays well under its 64 KiB limit). */
export const MAX_HEADER_BYTES = 16 * 1024;

/** One printable line: control characters and line breaks become spaces. */
function oneLine(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f]+/g, " ").replace(/\s+/g, " ").trim();
}

/**
 * `personal`: the user's address and settings; `personal on|off`: take mail from strangers at
 * the personal mailbox or not (replies in conversations always arrive); `personal name <name>`
 * / `personal name reset`: the display name on the user's outgoing mail.
 */
export async function personalCommand(ctx: CommandContext, req: CommandRequest, args: string[]): Promise<string> {
  requireBridgeUser(ctx, req.sender);
  const address = personalAddress(req.sender, ctx.ids);
  if (!address) throw new CommandError(`${req.sender} is not on this homeserver, so it has no address here`);
  const sub = args[0]?.toLowerCase();
  if (sub === undefined) {
    const s = await ctx.store.getUserSettings(req.sender);
    return [
      `Your address: ${address}`,
      s.personalMailbox ? "New mail from strangers: taken (see `contacts`)." : "New mail from strangers: refused (`personal on` to take it); replies in your conversations still arrive.",
      `Name on your mail: ${s.displayName ?? "your Matrix display name"}`,
    ].join("\n");
  }
  if (sub === "on" || sub === "off") {
    await ctx.store.updateUserSettings(req.sender, { personalMailbox: sub === "on" });
    return sub === "on"
      ? `Done: ${address} takes new mail again (strangers as \`contacts\` says).`
      : `Done: new mail to ${address} from anyone you have not accepted is refused as if the address did not exist; replies in your conversations still arrive.`;
  }
  if (sub === "name") {
    const name = oneLine(restOf(req, 2));
    if (!name) throw new CommandError("say the name, e.g. `personal name Alice Example`, or `personal name reset`");
    if (name.toLowerCase() === "reset") {
      await ctx.store.updateUserSettings(req.sender, { displayName: null });
      return "Done: your mail carries your Matrix display name again.";
    }
    if (name.length > MAX_NAME_CHARS) throw new CommandError(`the name is too long: at most ${MAX_NAME_CHARS} characters`);
    // Mail clients often show only the name: one with an @ would claim an address (Ghost.ts rule).
    if (nameHasAtSign(name)) throw new CommandError("the name may not contain @: mail clients would show it as an address");
    if (cleanDisplayName(name) !== name.normalize("NFC")) throw new CommandError("the name may not contain control, bidi or invisible formatting characters");
    await ctx.store.updateUserSettings(req.sender, { displayName: name });
    return `Done: your mail now comes from "${name}" <${address}>.`;
  }
  throw new CommandError(`expected \`on\`, \`off\` or \`name\`, not \`${args[0]}\``);
}

/** `mailbox signature <text>` / `mailbox signature off`: the line that ends the room's outgoing mail (moderators). */
export async function signatureCommand(ctx: CommandContext, req: CommandRequest, args: string[]): Promise<string> {
  requireBridgeUser(ctx, req.sender);
  const level = await ctx.matrix.powerLevel(req.roomId, req.sender);
  if (level < MAILBOX_POWER_LEVEL) throw new CommandError(`you need power level ${MAILBOX_POWER_LEVEL} (moderator) in this room; you have ${level}`);
  const text = oneLine(restOf(req, 2));
  if (!text) {
    const current = await ctx.store.getRoomMailboxByRoom(req.roomId);
    if (!current) throw new CommandError("this room has no email address");
    return current.signature ? `This room's mail ends with: ${current.signature}` : "This room's mail has no signature. Say `mailbox signature <text>` to add one.";
  }
  if (text.length > MAX_SIGNATURE_CHARS) throw new CommandError(`the signature is too long: at most ${MAX_SIGNATURE_CHARS} characters`);
  const off = text.toLowerCase() === "off";
  if (!(await ctx.store.setMailboxSignature(req.roomId, off ? null : text))) throw new CommandError("this room has no email address");
  return off ? "Done: this room's mail has no signature now." : `Done: this room's mail now ends with: ${text}`;
}

/**
 * `headers`, said as a reply to a bridged message: the original mail's header section (at most
 * {@link MAX_HEADER_BYTES}) and the verdicts stored with it (docs/formats.md). For a message that
 * went out by mail, the header section of the mail that was sent.
 */
export async function headersCommand(ctx: CommandContext, req: CommandRequest): Promise<string> {
  if (!req.replyTo) throw new CommandError("say it as a reply to a message that came from or went to email");
  const inbound = await ctx.store.getInboundByEvent(req.roomId, req.replyTo);
  if (inbound) {
    const auth = inbound.auth;
    const verdict = auth
      ? `SPF ${auth.spf}, DKIM ${auth.dkim}, DMARC ${auth.dmarc}, ARC ${auth.arc}: ${inbound.senderVerified ? "✅ the sender is authenticated" : "⚠️ the sender is not authenticated"}`
      : inbound.senderVerified
        ? "✅ the sender is authenticated"
        : "⚠️ the sender is not authenticated";
    const spam = inbound.spam ? `\nSpam check (rspamd): ${inbound.spam.action}, score ${inbound.spam.score.toFixed(1)} of ${inbound.spam.requiredScore.toFixed(1)}` : "";
    const head = inbound.rawPurgedAt !== null ? "(the stored mail was deleted by the retention policy)" : headerSection(inbound.raw);
    return `Mail from ${inbound.sender}, Message-ID <${inbound.messageId}>\n${verdict}${spam}\n\n${head}`;
  }
  const outbound = await ctx.store.getOutboundByEvent(req.replyTo);
  if (outbound && outbound.roomId === req.roomId) {
    const head = outbound.rawPurgedAt !== null ? "(the stored mail was deleted by the retention policy)" : headerSection(outbound.raw);
    return `Mail sent for this message, Message-ID <${outbound.messageId}> (${outbound.state})\n\n${head}`;
  }
  throw new CommandError("that message did not come from email, and was not sent by email");
}

/** The header section of a raw message (up to the first empty line), cut at {@link MAX_HEADER_BYTES}. */
export function headerSection(raw: Buffer): string {
  const end = raw.indexOf("\r\n\r\n");
  const lfEnd = raw.indexOf("\n\n");
  const stop = [end, lfEnd].filter((i) => i >= 0).reduce((a, b) => Math.min(a, b), raw.length);
  const head = raw.subarray(0, Math.min(stop, MAX_HEADER_BYTES)).toString("utf8").replace(/\r\n/g, "\n");
  return stop > MAX_HEADER_BYTES ? `${head}\n… (cut at ${MAX_HEADER_BYTES} bytes)` : head;
}
