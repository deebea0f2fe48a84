/**
 * Bot commands for a room's further addresses (aliases, `Addressing`):
 * - `mailbox aliases`: the room's addresses (anyone in the room may ask);
 * - `mailbox alias add <name[@domain]>`: one more address for this room (moderators);
 * - `mailbox alias remove <name[@domain]>`: this room no longer gets that address's mail (moderators).
 * A bare `name` is on the primary mail domain. A catch-all (`*@domain`) is the bridge admin's
 * to set (admin API), not a room moderator's.
 */
import { AddressingError } from "../Addressing.ts";
import { CommandError, MAILBOX_POWER_LEVEL, requireBridgeUser, type CommandContext, type CommandRequest } from "./context.ts";

/**
 * Run an {@link Addressing} change, turning its refusals into the command's error reply.
 * @throws CommandError with the refusal's message; other errors unchanged
 */
export async function addressingStep<T>(step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (err) {
    if (err instanceof AddressingError) throw new CommandError(err.message);
    throw err;
  }
}

/**
 * @throws CommandError when `req.sender` may not use the bridge or is below
 *   {@link MAILBOX_POWER_LEVEL} in the room (Client-Server API, `m.room.power_levels`)
 */
export async function requireModerator(ctx: CommandContext, req: CommandRequest): Promise<void> {
  requireBridgeUser(ctx, req.sender);
  const level = await ctx.matrix.powerLevel(req.roomId, req.sender);
  if (level < MAILBOX_POWER_LEVEL) throw new CommandError(`you need power level ${MAILBOX_POWER_LEVEL} (moderator) in this room; you have ${level}`);
}

/**
 * `mailbox aliases`: the room's own address and its aliases.
 * @returns the reply text
 */
export async function aliasesCommand(ctx: CommandContext, req: CommandRequest): Promise<string> {
  const own = await ctx.store.getRoomMailboxByRoom(req.roomId);
  const aliases = await ctx.addressing.listAliases({ target: req.roomId });
  if (!own && aliases.length === 0) return "This room has no email address.";
  const lines = own ? [`This room's email address: ${own.localpart}@${ctx.ids.mailDomain} (on every mail domain of the bridge)`] : [];
  if (aliases.length === 0) lines.push("No aliases. A moderator can add one with `mailbox alias add <name[@domain]>`.");
  else lines.push("Aliases:", ...aliases.map((a) => `• ${a.address}`));
  return lines.join("\n");
}

/**
 * `mailbox alias add|remove <name[@domain]>`, for room moderators.
 * @param args the words after `alias`
 * @returns the reply text, saying what changed
 * @throws CommandError for a user error (usage, power level, a refused address)
 */
export async function aliasCommand(ctx: CommandContext, req: CommandRequest, args: string[]): Promise<string> {
  const action = args[0]?.toLowerCase();
  const name = args[1];
  if ((action !== "add" && action !== "remove") || !name) throw new CommandError("say `mailbox alias add <name[@domain]>` or `mailbox alias remove <name[@domain]>`");
  await requireModerator(ctx, req);
  const { localpart, full } = await addressingStep(async () => ctx.addressing.parseAddress(name));
  if (localpart === "*") throw new CommandError("a catch-all address is set by the bridge's admin, not by a room");
  if (action === "add") {
    await addressingStep(() => ctx.addressing.addAlias(full, req.roomId, req.sender));
    return `Done: mail to ${full} now lands in this room too.`;
  }
  const removed = await addressingStep(() => ctx.addressing.removeAlias(full, req.roomId));
  if (removed === 0) throw new CommandError(`${full} is not an alias of this room`);
  return `Done: ${full} no longer delivers to this room.`;
}
