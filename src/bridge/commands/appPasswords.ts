/**
 * Bot commands for app passwords, the logins of the submission port (RFC 6409; see
 * src/bridge/Submission.ts): `password new [label]`, `passwords`, `password revoke <label>`.
 * They act for the user who says them. A new password is shown once, and only in the user's DM
 * with the bot, where nobody else reads it; the store keeps a scrypt hash only.
 */
import { generateAppPassword, hashAppPassword } from "../../mail/submission/appPasswords.ts";
import { personalAddress } from "../ids.ts";
import { CommandError, requireBridgeUser, type CommandContext, type CommandRequest } from "./context.ts";

/** Most app passwords per user (each login tries them all: the scrypt cost is per password). */
export const MAX_APP_PASSWORDS = 10;

/** What a label may be: 1-40 of letters, digits, `.`, `_`, `-`. */
const LABEL = /^[A-Za-z0-9._-]{1,40}$/;

/** `YYYY-MM-DD HH:MM UTC` of an epoch-ms time. */
function utcMinute(ms: number): string {
  return new Date(ms).toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

/**
 * Whether `roomId` is the sender's DM with the bot: no portal, and exactly the bot and the sender
 * joined (nobody else can read what the bot says there).
 * @throws the homeserver's error when the members cannot be read
 */
async function isPrivateWithBot(ctx: CommandContext, req: CommandRequest): Promise<boolean> {
  if (await ctx.store.getPortalByRoom(req.roomId)) return false;
  const members = await ctx.matrix.joinedMembers(req.roomId);
  return members.length === 2 && members.includes(ctx.matrix.botUserId) && members.includes(req.sender);
}

/**
 * `password new [label]`, `password revoke <label>` (`password` alone: the usage).
 * @throws CommandError for a user error (the reply names the command)
 */
export async function passwordCommand(ctx: CommandContext, req: CommandRequest, args: string[]): Promise<string> {
  requireBridgeUser(ctx, req.sender);
  const address = personalAddress(req.sender, ctx.ids);
  if (!address) throw new CommandError(`${req.sender} has no personal mailbox on this bridge, so it cannot send by mail`);
  const sub = args[0]?.toLowerCase();
  if (sub === "new") return newPassword(ctx, req, address, args[1]);
  if (sub === "revoke") {
    const label = args[1];
    if (!label) throw new CommandError("say which password, e.g. `password revoke laptop` (`passwords` lists them)");
    if (!(await ctx.store.revokeAppPassword(req.sender, label))) throw new CommandError(`you have no app password labelled \`${label}\` (\`passwords\` lists them)`);
    return `Revoked the app password \`${label}\`: it no longer logs in. Mail already sent with it is not affected.`;
  }
  throw new CommandError("expected `password new [label]` or `password revoke <label>`");
}

async function newPassword(ctx: CommandContext, req: CommandRequest, address: string, wanted: string | undefined): Promise<string> {
  if (!(await isPrivateWithBot(ctx, req))) {
    throw new CommandError("say this in a direct chat with me (just you and the bot): the new password is shown once, and others in this room would read it");
  }
  const existing = await ctx.store.listAppPasswords(req.sender);
  if (existing.length >= MAX_APP_PASSWORDS) throw new CommandError(`you have ${existing.length} app passwords, the most there may be; revoke one first (\`password revoke <label>\`)`);
  let label = wanted;
  if (label === undefined) {
    const taken = new Set(existing.map((r) => r.label));
    let n = existing.length + 1;
    while (taken.has(`password-${n}`)) n++;
    label = `password-${n}`;
  }
  if (!LABEL.test(label)) throw new CommandError(`"${label}" is not a usable label: use 1-40 of letters, digits, '.', '_', '-'`);
  const password = generateAppPassword();
  const row = await ctx.store.addAppPassword(req.sender, label, await hashAppPassword(password));
  if (!row) throw new CommandError(`you already have an app password labelled \`${label}\`; pick another label or revoke that one`);
  return [
    `New app password \`${label}\`: ${password}`,
    "",
    "It is shown only this once. Use it in your mail client or script to send mail as you:",
    `• login: ${address} (or ${req.sender})`,
    "• server: this bridge's submission port (ask your admin; usually port 587), with STARTTLS",
    "Revoke it with `password revoke " + label + "`; `passwords` lists yours.",
  ].join("\n");
}

/** `passwords`: the sender's app passwords, with when they were made and last used. */
export async function passwordsCommand(ctx: CommandContext, req: CommandRequest): Promise<string> {
  requireBridgeUser(ctx, req.sender);
  const rows = await ctx.store.listAppPasswords(req.sender);
  if (rows.length === 0) return "You have no app passwords. Say `password new [label]` in a direct chat with me to make one.";
  return [
    "Your app passwords (for sending mail from a mail client):",
    ...rows.map((r) => `• \`${r.label}\`: made ${utcMinute(r.createdAt)}, ${r.lastUsedAt === null ? "never used" : `last used ${utcMinute(r.lastUsedAt)}`}`),
  ].join("\n");
}
