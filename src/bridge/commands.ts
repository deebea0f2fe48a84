/**
 * Bridge bot commands, given in a room as `!email <command> [args]`
 * (in a DM with the bot, the `!email` prefix may be left out).
 */
import { MailboxTakenError, type BridgeStore } from "../store/Store.ts";
import { InvalidAddressError, mailboxUserId, normalizeAddress, type IdContext } from "./ids.ts";
import { Ghost } from "./Ghost.ts";
import type { MatrixActions } from "./ports.ts";

/** The command prefix. */
export const COMMAND_PREFIX = "!email";

/** Power level needed to change a room's mailbox (room moderators and admins). */
export const MAILBOX_POWER_LEVEL = 50;

/** Localparts that are never room mailboxes (RFC 5321 §4.5.1 postmaster; RFC 2142 role addresses). */
const RESERVED = new Set(["postmaster", "abuse", "mailer-daemon", "hostmaster", "webmaster", "noreply", "no-reply", "root", "unsubscribe"]);

/** What a command needs. */
export interface CommandContext {
  store: BridgeStore;
  matrix: MatrixActions;
  ids: IdContext;
  mayBridge: (userId: string) => boolean;
  /** The bridge bot's display name: no ghost may take it. */
  botDisplayName: string;
}

/** A command invocation. */
export interface CommandRequest {
  roomId: string;
  sender: string;
  /** Words after the prefix. */
  args: string[];
}

const HELP = [
  "Email bridge commands (say them as `!email <command>`):",
  "• `help`: this text",
  "• `mailbox`: show this room's email address",
  "• `mailbox on [name]`: give this room the address name@DOMAIN (default: the room alias's name); mail to it lands here and room messages go to the email participants (moderators only)",
  "• `mailbox off`: remove this room's address (moderators only)",
  "• `mailbox policy open|members|verified`: who may mail this room: anyone, only addresses already in the room, or only authenticated senders (moderators only)",
  "• `start <address>`: start a chat with an email address: its ghost makes a DM with you; what you write there goes to that address by mail",
  "• `block <address|domain>`: refuse mail from an address or a whole domain to your personal mailbox (it gets a 550 error); rejecting a DM invite from an address does the same",
  "• `allow <address|domain>`: take mail from it again",
  "• `contacts`: your blocked and allowed addresses and domains",
  "• `invite <address>`: invite the ghost of an email address to this room; in a room with an address, a moderator's invite also subscribes it to the room's messages",
  "• `unsubscribe <address>`: stop sending this room's messages to an address (moderators only)",
  "• `subscribers`: who gets this room's messages by mail",
  "Replies in an email conversation go to that conversation's people; other messages go to the subscribers. Anyone can ask to subscribe by mailing NAME+subscribe@DOMAIN.",
  "To email someone, invite @PREFIXADDRESS:SERVER (e.g. @PREFIXbob=40example.org:SERVER for bob@example.org) to an unencrypted room.",
].join("\n");

/** A command error: the reply names the command and what was wrong. */
class CommandError extends Error {}

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
        return await contactsCommand(ctx, req);
      case "unsubscribe":
        return await unsubscribeCommand(ctx, req, rest);
      case "subscribers":
        return await subscribersCommand(ctx, req);
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
  if (sub !== "on" && sub !== "off" && sub !== "policy") throw new CommandError(`expected \`on\`, \`off\` or \`policy\`, not \`${args[0]}\``);
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
    const removed = await ctx.store.removeRoomMailbox(req.roomId);
    if (!removed) throw new CommandError("this room has no email address");
    const portal = await ctx.store.getPortalByRoom(req.roomId);
    if (portal?.kind === "mailbox") await ctx.store.upsertPortal({ ...portal, kind: "group" });
    return `Done: ${current!.localpart}@${ctx.ids.mailDomain} no longer delivers to this room.`;
  }
  if (await ctx.matrix.isEncrypted(req.roomId)) throw new CommandError("this room is end-to-end encrypted, and the bridge cannot post into encrypted rooms");
  const localpart = (args[1] ?? (await aliasLocalpart(ctx, req.roomId)))?.toLowerCase();
  if (!localpart) throw new CommandError(`this room has no alias to take the name from; say \`${COMMAND_PREFIX} mailbox on <name>\``);
  if (!/^[a-z0-9][a-z0-9._-]{0,63}$/.test(localpart) || localpart.endsWith(".") || localpart.includes("..")) {
    throw new CommandError(`"${localpart}" is not a usable address name: use 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit`);
  }
  if (RESERVED.has(localpart) || localpart === ctx.ids.botLocalpart || localpart.startsWith(ctx.ids.ghostPrefix)) {
    throw new CommandError(`"${localpart}" is reserved`);
  }
  const owner = mailboxUserId(localpart, ctx.ids);
  if (owner && (await ctx.matrix.userExists(owner))) throw new CommandError(`"${localpart}" is the personal address of ${owner}`);
  try {
    await ctx.store.setRoomMailbox(localpart, req.roomId, req.sender);
  } catch (err) {
    if (err instanceof MailboxTakenError) throw new CommandError(`${localpart}@${ctx.ids.mailDomain} already belongs to another room`);
    throw err;
  }
  const portal = await ctx.store.getPortalByRoom(req.roomId);
  await ctx.store.upsertPortal({
    roomId: req.roomId,
    kind: "mailbox",
    localUserId: null,
    remoteAddress: null,
    subject: portal?.subject ?? null,
    encrypted: false,
    remoteVerified: true,
  });
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
  return `Started: ${ghost.userId} invited you to a chat. What you write there goes to ${ghost.address} by mail, and their mail comes back there.`;
}

/**
 * `block <address|domain>` / `allow <address|domain>`: the sender's own contact rules (per
 * user, whatever room it is said in).
 */
async function contactRuleCommand(ctx: CommandContext, req: CommandRequest, rule: "block" | "allow", args: string[]): Promise<string> {
  if (!ctx.mayBridge(req.sender)) throw new CommandError(`${req.sender} is not allowed to use this bridge`);
  const raw = args[0];
  if (!raw) throw new CommandError(`say which address or domain, e.g. \`${rule} bob@example.org\` or \`${rule} example.org\``);
  let pattern: string;
  try {
    pattern = raw.includes("@") ? normalizeAddress(raw, { caseSensitiveLocalparts: ctx.ids.caseSensitiveLocalparts }) : normalizeAddress(`x@${raw}`).slice(2);
  } catch (err) {
    if (err instanceof InvalidAddressError) throw new CommandError(`not an address or domain: ${JSON.stringify(raw)}`);
    throw err;
  }
  await ctx.store.setContactRule(req.sender, pattern, rule);
  return rule === "block"
    ? `Blocked ${pattern}: mail from ${pattern.includes("@") ? "it" : "that domain"} to your mailbox is refused. Say \`allow ${pattern}\` to undo.`
    : `Allowed ${pattern}: mail from ${pattern.includes("@") ? "it" : "that domain"} reaches you again.`;
}

/** `contacts`: the sender's contact rules. */
async function contactsCommand(ctx: CommandContext, req: CommandRequest): Promise<string> {
  const rules = await ctx.store.listContactRules(req.sender);
  if (rules.length === 0) return "You have blocked nobody. Say `block <address|domain>` to refuse someone's mail.";
  return ["Your contact rules:", ...rules.map((r) => `• ${r.rule === "block" ? "blocked" : "allowed"}: ${r.pattern}`)].join("\n");
}

async function inviteCommand(ctx: CommandContext, req: CommandRequest, args: string[]): Promise<string> {
  if (!ctx.mayBridge(req.sender)) throw new CommandError(`${req.sender} is not allowed to use this bridge`);
  const ghost = ghostOf(ctx, args, "invite bob@example.org");
  await ghost.ensureProfile(ctx);
  await ctx.matrix.invite(req.roomId, ctx.matrix.botUserId, ghost.userId);
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
  if (!(await ctx.store.removeSubscriber(req.roomId, address))) throw new CommandError(`${address} is not a subscriber of this room`);
  return `Done: ${address} no longer gets this room's messages.`;
}

async function subscribersCommand(ctx: CommandContext, req: CommandRequest): Promise<string> {
  if (!(await ctx.store.getRoomMailboxByRoom(req.roomId))) throw new CommandError("this room has no email address");
  const list = await ctx.store.listSubscribers(req.roomId);
  return list.length === 0 ? "Nobody gets this room's messages by mail yet." : `This room's messages go by mail to:\n${list.map((a) => `• ${a}`).join("\n")}`;
}
