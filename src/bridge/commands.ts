/**
 * Bridge bot commands, given in a room as `!email <command> [args]`
 * (in a DM with the bot, the `!email` prefix may be left out).
 */
import { CommandError, MAILBOX_POWER_LEVEL, type CommandContext, type CommandRequest } from "./commands/context.ts";
import { acceptCommand, contactRuleCommand, contactsCommand, refuseCommand } from "./commands/contacts.ts";
import { headersCommand, personalCommand, signatureCommand } from "./commands/settings.ts";
import { passwordCommand, passwordsCommand } from "./commands/appPasswords.ts";
import { addressingStep, aliasCommand, aliasesCommand } from "./commands/addresses.ts";
import { InvalidAddressError, normalizeAddress } from "./ids.ts";
import { Ghost } from "./Ghost.ts";

/** The command prefix. */
export const COMMAND_PREFIX = "!email";

export type { CommandContext, CommandRequest } from "./commands/context.ts";
export { MAILBOX_POWER_LEVEL } from "./commands/context.ts";

const HELP = [
  "Email bridge commands (say them as `!email <command>`):",
  "• `help`: this text",
  "• `mailbox`: show this room's email address",
  "• `mailbox on [name]`: give this room the address name@DOMAIN (default: the room alias's name); mail to it lands here and room messages go to the email participants (moderators only)",
  "• `mailbox off`: remove this room's address (moderators only)",
  "• `mailbox signature <text>` / `mailbox signature off`: a line that ends this room's mail (moderators only)",
  "• `mailbox policy open|members|verified`: who may mail this room: anyone, only addresses already in the room, or only authenticated senders (moderators only)",
  "• `mailbox aliases`: this room's further addresses",
  "• `mailbox alias add <name[@domain]>`: one more address for this room, on DOMAIN or another mail domain of the bridge (moderators only)",
  "• `mailbox alias remove <name[@domain]>`: remove one of them (moderators only)",
  "• `start <address>`: start a chat with an email address: its ghost makes a DM with you; what you write there goes to that address by mail",
  "• `contacts`: how mail from strangers reaches you, who is waiting, whom you accepted and refused",
  "• `contacts invite`: mail from a stranger opens a chat invite at once (the default); join to accept them, reject to refuse them",
  "• `contacts hold`: mail from a stranger waits on their server until you say `accept <address>`, `refuse <address> [reason]` or `refuse-quietly <address>`",
  "• `block <address|domain>`: refuse mail from an address or a whole domain to your personal mailbox (it gets a 550 error)",
  "• `allow <address|domain>`: take mail from it",
  "• `personal`: your own address; `personal off` refuses new mail from strangers (replies still arrive), `personal on` takes it; `personal name <name>` sets the name on your mail (`personal name reset`: your Matrix name)",
  "• `headers`: said as a reply to a bridged message, shows the original mail's headers and whether its sender authenticated",
  "• `invite <address>`: invite the ghost of an email address to this room; in a room with an address, a moderator's invite also subscribes it to the room's messages",
  "• `unsubscribe <address>`: stop sending this room's messages to an address; its ghost leaves (moderators only)",
  "• `subscribers`: who gets this room's messages by mail",
  "• `password new [label]`: a new app password for sending mail as you from a mail client or script (submission port, STARTTLS); shown once, only in a direct chat with the bot",
  "• `passwords`: your app passwords, when made and last used",
  "• `password revoke <label>`: that app password no longer logs in",
  "Replies in an email conversation go to that conversation's people; other messages go to the subscribers. Anyone can ask to subscribe by mailing NAME+subscribe@DOMAIN.",
  "To email someone, invite @PREFIXADDRESS:SERVER (e.g. @PREFIXbob=40example.org:SERVER for bob@example.org) to a room. Mail itself is not end-to-end encrypted.",
].join("\n");

/**
 * Parse a message body as a command.
 * @param body the message text
 * @param isDm whether the room is a DM with the bot (prefix optional)
 * @returns the words after the prefix, or null when the body is not a command
 */
export function parseCommand(body: string, isDm: boolean): string[] | null {
  const words = body.trim().split(/\s+/).filter(Boolean);
  if (words[0]?.toLowerCase() === COMMAND_PREFIX) return words.slice(1);
  return isDm && words.length > 0 ? words : null;
}

/**
 * Run a command and return the bot's reply text. Never throws for user errors:
 * the reply names the command and says what was wrong.
 * @throws only for infrastructure failures (homeserver, store), which the caller logs
 */
export async function runCommand(ctx: CommandContext, req: CommandRequest): Promise<string> {
  const [name = "help", ...rest] = req.args;
  const command = name.toLowerCase();
  try {
    switch (command) {
      case "help":
        return HELP.replace(/DOMAIN/g, ctx.ids.mailDomain).replace(/PREFIX/g, ctx.ids.ghostPrefix).replace(/SERVER/g, ctx.ids.serverName);
      case "mailbox":
      case "address":
        return await mailboxCommand(ctx, req, rest);
      case "invite":
        return await inviteCommand(ctx, req, rest);
      case "start":
        return await startCommand(ctx, req, rest);
      case "block":
      case "allow":
        return await contactRuleCommand(ctx, req, command, rest);
      case "contacts":
        return await contactsCommand(ctx, req, rest);
      case "personal":
        return await personalCommand(ctx, req, rest);
      case "headers":
        return await headersCommand(ctx, req);
      case "accept":
        return await acceptCommand(ctx, req, rest);
      case "refuse":
      case "refuse-quietly":
        return await refuseCommand(ctx, req, command === "refuse-quietly", rest);
      case "unsubscribe":
        return await unsubscribeCommand(ctx, req, rest);
      case "subscribers":
        return await subscribersCommand(ctx, req);
      case "password":
        return await passwordCommand(ctx, req, rest);
      case "passwords":
        return await passwordsCommand(ctx, req);
      default:
        return `Unknown command \`${name}\`. Say \`${COMMAND_PREFIX} help\` for the list.`;
    }
  } catch (err) {
    if (err instanceof CommandError) return `\`${[command, ...rest.slice(0, 1)].join(" ")}\`: ${err.message}`;
    throw err;
  }
}

async function mailboxCommand(ctx: CommandContext, req: CommandRequest, args: string[]): Promise<string> {
  const sub = args[0]?.toLowerCase();
  const current = await ctx.store.getRoomMailboxByRoom(req.roomId);
  if (!sub) {
    return current
      ? `This room's email address is ${current.localpart}@${ctx.ids.mailDomain}`
      : `This room has no email address. A moderator can say \`${COMMAND_PREFIX} mailbox on\` to give it one.`;
  }
  if (sub === "signature") return signatureCommand(ctx, req, args);
  if (sub === "aliases") return await aliasesCommand(ctx, req);
  if (sub === "alias") return await aliasCommand(ctx, req, args.slice(1));
  if (sub !== "on" && sub !== "off" && sub !== "policy") throw new CommandError(`expected \`on\`, \`off\`, \`policy\`, \`signature\`, \`alias\` or \`aliases\`, not \`${args[0]}\``);
  if (!ctx.mayBridge(req.sender)) throw new CommandError(`${req.sender} is not allowed to use this bridge`);
  const level = await ctx.matrix.powerLevel(req.roomId, req.sender);
  if (level < MAILBOX_POWER_LEVEL) throw new CommandError(`you need power level ${MAILBOX_POWER_LEVEL} (moderator) in this room; you have ${level}`);
  if (sub === "policy") {
    const policy = args[1]?.toLowerCase();
    if (policy !== "open" && policy !== "members" && policy !== "verified") throw new CommandError("expected `open`, `members` or `verified`");
    if (!(await ctx.store.setMailboxPolicy(req.roomId, policy))) throw new CommandError("this room has no email address");
    const what = { open: "anyone", members: "only addresses already in this room", verified: "only senders whose mail authenticates (SPF/DKIM aligned with their domain)" }[policy];
    return `Done: ${current!.localpart}@${ctx.ids.mailDomain} now takes mail from ${what}.`;
  }
  if (sub === "off") {
    const aliases = (await ctx.addressing.listAliases({ target: req.roomId })).length;
    const removed = await ctx.addressing.removeRoomMailbox(req.roomId);
    if (!removed && aliases === 0) throw new CommandError("this room has no email address");
    const what = [current ? `${current.localpart}@${ctx.ids.mailDomain}` : null, aliases > 0 ? `its ${aliases} alias${aliases === 1 ? "" : "es"}` : null].filter(Boolean).join(" and ");
    return `Done: ${what} no longer deliver${current && aliases === 0 ? "s" : ""} to this room.`;
  }
  const localpart = (args[1] ?? (await aliasLocalpart(ctx, req.roomId)))?.toLowerCase();
  if (!localpart) throw new CommandError(`this room has no alias to take the name from; say \`${COMMAND_PREFIX} mailbox on <name>\``);
  await addressingStep(() => ctx.addressing.setRoomMailbox(req.roomId, localpart, req.sender));
  return `Done: mail to ${localpart}@${ctx.ids.mailDomain} now lands in this room, and messages here go to the room's email participants.`;
}

async function aliasLocalpart(ctx: CommandContext, roomId: string): Promise<string | null> {
  const content = await ctx.matrix.stateContent(roomId, "m.room.canonical_alias", "");
  const alias = typeof content?.alias === "string" ? content.alias : null;
  const m = alias ? /^#([^:]+):/.exec(alias) : null;
  return m ? m[1]! : null;
}

/**
 * The verified ghost of the address a command names.
 * @throws CommandError when the address is missing or invalid (`usage` shows the form)
 */
function ghostOf(ctx: CommandContext, args: string[], usage: string): Ghost {
  if (!args[0]) throw new CommandError(`say which address, e.g. \`${usage}\``);
  try {
    return Ghost.of(normalizeAddress(args[0], { caseSensitiveLocalparts: ctx.ids.caseSensitiveLocalparts }), true, ctx.ids);
  } catch (err) {
    if (err instanceof InvalidAddressError) throw new CommandError(err.message);
    throw err;
  }
}

/**
 * `start <address>`: the address's (verified) ghost creates an unencrypted DM with the sender
 * and invites them, and the room becomes their DM portal with that address. When they are
 * already in (or invited to) such a DM, the reply points to it instead of making another.
 */
async function startCommand(ctx: CommandContext, req: CommandRequest, args: string[]): Promise<string> {
  if (!ctx.mayBridge(req.sender)) throw new CommandError(`${req.sender} is not allowed to use this bridge`);
  // An address of this bridge has no ghost (ghostOf refuses it, naming it).
  const ghost = ghostOf(ctx, args, "start bob@example.org");
  await ghost.ensureProfile(ctx);
  const existing = await ctx.store.getDmPortal(req.sender, ghost.address, true);
  if (existing) {
    const member = await ctx.matrix.stateContent(existing.roomId, "m.room.member", req.sender, ghost.userId);
    if (member?.membership === "join" || member?.membership === "invite") {
      return `You already have a chat with ${ghost.address}: https://matrix.to/#/${encodeURIComponent(existing.roomId)}`;
    }
  }
  const roomId = await ctx.matrix.createDm(ghost.userId, req.sender, `Email with ${ghost.address}`);
  if (existing) await ctx.store.deletePortal(existing.roomId);
  await ctx.store.upsertPortal({ roomId, kind: "dm", localUserId: req.sender, remoteAddress: ghost.address, subject: null, encrypted: false, remoteVerified: true });
  await ctx.contacts.known(req.sender, ghost.address);
  return `Started: ${ghost.userId} invited you to a chat. What you write there goes to ${ghost.address} by mail, and their mail comes back there.`;
}

async function inviteCommand(ctx: CommandContext, req: CommandRequest, args: string[]): Promise<string> {
  if (!ctx.mayBridge(req.sender)) throw new CommandError(`${req.sender} is not allowed to use this bridge`);
  const ghost = ghostOf(ctx, args, "invite bob@example.org");
  await ghost.ensureProfile(ctx);
  const encrypted = await ctx.matrix.isEncrypted(req.roomId);
  if (encrypted && !ctx.matrix.bridgesEncryptedRooms()) {
    throw new CommandError("this room is end-to-end encrypted, and this homeserver does not give the bridge what it needs to post into encrypted rooms (docs/encryption.md)");
  }
  // The bot invites and the ghost joins at once: the homeserver does not echo the bridge's own
  // invites back to it (appservice echo suppression), so no invite handler would run.
  await ctx.matrix.join(req.roomId, ghost.userId);
  if (!(await ctx.store.getPortalByRoom(req.roomId))) {
    await ctx.store.upsertPortal({ roomId: req.roomId, kind: "group", localUserId: null, remoteAddress: null, subject: null, encrypted, remoteVerified: true });
  }
  await ctx.contacts.known(req.sender, ghost.address);
  const mailbox = await ctx.store.getRoomMailboxByRoom(req.roomId);
  if (mailbox && (await ctx.matrix.powerLevel(req.roomId, req.sender)) >= MAILBOX_POWER_LEVEL) {
    await ctx.store.putSubscriber({ roomId: req.roomId, address: ghost.address, state: "active", token: null });
    return `Invited ${ghost.userId}; ${ghost.address} now gets this room's messages by mail.`;
  }
  return `Invited ${ghost.userId}.`;
}

async function unsubscribeCommand(ctx: CommandContext, req: CommandRequest, args: string[]): Promise<string> {
  if (!args[0]) throw new CommandError("say which address, e.g. `unsubscribe bob@example.org`");
  const level = await ctx.matrix.powerLevel(req.roomId, req.sender);
  if (level < MAILBOX_POWER_LEVEL) throw new CommandError(`you need power level ${MAILBOX_POWER_LEVEL} (moderator) in this room; you have ${level}`);
  let address: string;
  try {
    address = normalizeAddress(args[0], { caseSensitiveLocalparts: ctx.ids.caseSensitiveLocalparts });
  } catch (err) {
    if (err instanceof InvalidAddressError) throw new CommandError(err.message);
    throw err;
  }
  const wasSubscriber = await ctx.store.removeSubscriber(req.roomId, address);
  // The ghost leaves too: the member list shows who still gets mail (a group portal mails its ghosts).
  const ghost = Ghost.of(address, true, ctx.ids);
  const wasMember = (await ctx.matrix.joinedMembers(req.roomId)).includes(ghost.userId);
  if (wasMember) await ctx.matrix.leave(req.roomId, ghost.userId, `unsubscribed by ${req.sender}`);
  if (!wasSubscriber && !wasMember) throw new CommandError(`${address} neither gets this room's messages nor is in the room`);
  return `Done: ${address} no longer gets this room's messages${wasMember ? " and its ghost left the room" : ""}.`;
}

async function subscribersCommand(ctx: CommandContext, req: CommandRequest): Promise<string> {
  if (!(await ctx.store.getRoomMailboxByRoom(req.roomId))) throw new CommandError("this room has no email address");
  const list = await ctx.store.listSubscribers(req.roomId);
  return list.length === 0 ? "Nobody gets this room's messages by mail yet." : `This room's messages go by mail to:\n${list.map((a) => `• ${a}`).join("\n")}`;
}
