/**
 * What every bot command gets, and how it reports a user error. Command modules in this folder
 * import from here; src/bridge/commands.ts parses and dispatches.
 */
import type { BridgeStore } from "../../store/Store.ts";
import type { IdContext } from "../ids.ts";
import type { MatrixActions } from "../ports.ts";
import type { Contacts } from "../Contacts.ts";
import type { Addressing } from "../Addressing.ts";

/** What a command needs. */
export interface CommandContext {
  store: BridgeStore;
  matrix: MatrixActions;
  ids: IdContext;
  mayBridge: (userId: string) => boolean;
  /** The bridge bot's display name: no ghost may take it. */
  botDisplayName: string;
  /** Contact rules, modes and requests. */
  contacts: Contacts;
  /** Mail domains, aliases and room mailboxes. */
  addressing: Addressing;
}

/** A command invocation. */
export interface CommandRequest {
  roomId: string;
  sender: string;
  /** Words after the prefix. */
  args: string[];
  /** The whole message body (for arguments with spaces, e.g. a signature or a reason). */
  body?: string;
  /** The event this message replies to (`m.relates_to.m.in_reply_to`), if any. */
  replyTo?: string | null;
}

/** A command error: the reply names the command and says what was wrong. */
export class CommandError extends Error {}

/** Power level needed to change a room's mailbox (room moderators and admins). */
export const MAILBOX_POWER_LEVEL = 50;

/** @throws CommandError when `userId` may not use the bridge (`permissions.allowed_users`) */
export function requireBridgeUser(ctx: CommandContext, userId: string): void {
  if (!ctx.mayBridge(userId)) throw new CommandError(`${userId} is not allowed to use this bridge`);
}

/**
 * The words after the first `skip` words of a command, as typed (spaces kept), or "".
 * @param body the message body; `args` when there is none
 */
export function restOf(req: CommandRequest, skip: number): string {
  const words = req.args.slice(skip);
  if (!req.body) return words.join(" ");
  const first = words[0];
  if (first === undefined) return "";
  // Find the position of the (skip+1)-th argument word in the body, after the prefix words.
  const tokens = [...req.body.matchAll(/\S+/g)];
  const offset = tokens.length - req.args.length;
  const at = tokens[offset + skip];
  return at?.index === undefined ? words.join(" ") : req.body.slice(at.index).trim();
}
