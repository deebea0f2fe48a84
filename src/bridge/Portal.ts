/**
 * A portal: a Matrix room bridged to email conversations. One owner for what differs by kind,
 * so callers never test `row.kind === "dm" && row.remoteAddress` themselves:
 *
 * - {@link DmPortal}: one local user and one remote address. The remote party's ghost created
 *   the room and reads it; the bot is not in it; a message that replies to nothing continues
 *   the conversation (it answers the other side's latest mail).
 * - {@link GroupPortal}: a room where Matrix users invited ghosts; its mail goes to the ghosts
 *   joined; the bot reads it; a message that replies to nothing starts a new mail thread.
 * - {@link MailboxPortal}: a room with a room mailbox; a reply goes to that conversation's
 *   people, anything else to the subscribers as a list mail.
 *
 * Build one with {@link portalOf} from the store's {@link PortalRow}.
 */
import type { BridgeStore, MessageRow, PortalRow } from "../store/Store.ts";
import { botUserId, ghostUserId, parseGhost, unverifiedGhostUserId, type IdContext } from "./ids.ts";
import type { MatrixActions } from "./ports.ts";

/** Who gets a mail: envelope recipients, the addresses shown in To:, and whether it is a list mail (To: the list address). */
export interface RecipientPlan {
  envelope: string[];
  to: string[];
  list: boolean;
}

/** What a portal needs to answer questions about itself. */
export interface PortalContext {
  store: Pick<BridgeStore, "latestInboundMessage" | "listSubscribers">;
  matrix: Pick<MatrixActions, "joinedMembers" | "stateContent">;
  ids: IdContext;
}

abstract class PortalBase<K extends PortalRow["kind"]> {
  abstract readonly kind: K;
  readonly row: PortalRow;

  constructor(row: PortalRow) {
    this.row = row;
  }

  get roomId(): string {
    return this.row.roomId;
  }

  /** Whether the bridge bot belongs in the room (to read it, post notices, take commands). */
  abstract get hasBot(): boolean;

  /** The Matrix user the bridge reads the room as (a member): the DM's ghost, else the bot. */
  abstract reader(ids: IdContext): string;

  /**
   * The mail a room message continues when it replies to nothing in particular, or null (a
   * new topic, a new mail thread).
   */
  abstract implicitParent(ctx: PortalContext): Promise<MessageRow | null>;

  /**
   * Who gets a room message by mail, before opt-outs.
   * @param parent the mail the message continues (its reply or thread parent), or null
   */
  abstract recipients(parent: MessageRow | null, ctx: PortalContext): Promise<RecipientPlan>;

  /**
   * The room's name as mail should show it (`in the room "Name"`, `in a direct chat`), and the
   * subject of a new topic (the room's name), null when it has none.
   * @throws the homeserver's error when the name cannot be read
   */
  abstract describe(ctx: PortalContext): Promise<{ label: string; name: string | null }>;

  /**
   * Whether a reply by mail (found by In-Reply-To or References) is posted as a Matrix thread
   * message (`m.thread`, bridge/threads.ts) rather than a rich reply (`m.in_reply_to`): true only
   * in a room mailbox, where each email conversation is a thread; DMs and group portals keep rich
   * replies (Client-Server API, "Threading" and "Rich replies").
   */
  abstract get threadsReplies(): boolean;

  /**
   * Whether mail to this room is posted by joining its sender's ghost to the room as it is (a
   * group or room mailbox; see {@link invitesSenders} for who may), rather than the room being one ghost's
   * DM with one local user, which the bridge makes again when that user has left it (false).
   */
  abstract get joinsSenders(): boolean;

  /**
   * Whether the bridge bot invites a sender's ghost that is not in the room, so that it can post
   * its mail: true for a room mailbox, which takes mail from every address its posting policy
   * admits; false for a group portal, whose ghosts are the ones its members invited (a ghost a
   * member removed stays out until a member invites it again), and for a DM.
   */
  abstract get invitesSenders(): boolean;

  /**
   * Whether `userId` is the local user this portal belongs to: a DM's local user (the owner of
   * the personal mailbox the DM serves); nobody for a group or room mailbox.
   * @param userId a Matrix user ID, compared exactly
   */
  isOwnedBy(userId: string): boolean {
    return false;
  }

  /**
   * The address `userId` refuses by declining (leaving while invited) this portal's invite, as
   * `block <address>` would: a DM's remote address when `userId` is its local user
   * ({@link isOwnedBy}); null otherwise (a group or room mailbox, or another user).
   * @param userId the Matrix user who declined
   */
  refusedOnDecline(userId: string): string | null {
    return null;
  }

  /**
   * The address `userId` accepts as a contact by joining this portal from its invite, as `accept
   * <address>` would: a DM's remote address when `userId` is its local user and the remote party
   * is the verified ghost (an unverified sender's DM vouches for nobody); null otherwise.
   * @param userId the Matrix user who joined
   */
  acceptedOnJoin(userId: string): string | null {
    return null;
  }

  /** The room name, read as {@link reader}; null when unset or blank. */
  protected async roomName(ctx: PortalContext): Promise<string | null> {
    const name = await ctx.matrix.stateContent(this.roomId, "m.room.name", "", this.reader(ctx.ids));
    return typeof name?.name === "string" && name.name.trim() ? name.name.trim() : null;
  }
}

/** A DM: one local user, one remote address; its ghost made the room. */
export class DmPortal extends PortalBase<"dm"> {
  readonly kind = "dm" as const;

  /** The remote address (a DM row always has one; an incomplete row throws at construction). */
  readonly remoteAddress: string;

  /** @throws TypeError when the row has no remote address */
  constructor(row: PortalRow) {
    super(row);
    if (!row.remoteAddress) throw new TypeError(`DM portal ${row.roomId} has no remote address`);
    this.remoteAddress = row.remoteAddress;
  }

  get hasBot(): boolean {
    return false;
  }

  /** False: replies by mail stay rich replies in a DM. */
  get threadsReplies(): boolean {
    return false;
  }

  /** False: the DM is its ghost's room with its local user; mail never joins a ghost to it. */
  get joinsSenders(): boolean {
    return false;
  }

  /** False: mail never joins a ghost to a DM. */
  get invitesSenders(): boolean {
    return false;
  }

  /** Whether `userId` is the DM's local user. */
  override isOwnedBy(userId: string): boolean {
    return this.row.localUserId === userId;
  }

  /** The remote address when `userId` is the DM's local user, else null. */
  override refusedOnDecline(userId: string): string | null {
    return this.isOwnedBy(userId) ? this.remoteAddress : null;
  }

  /** The remote address when `userId` is the DM's local user and the remote party is verified, else null. */
  override acceptedOnJoin(userId: string): string | null {
    return this.isOwnedBy(userId) && this.row.remoteVerified ? this.remoteAddress : null;
  }

  reader(ids: IdContext): string {
    return this.row.remoteVerified ? ghostUserId(this.remoteAddress, ids) : unverifiedGhostUserId(this.remoteAddress, ids);
  }

  /** The other side's latest mail: a DM reads as one conversation, as in a mail client. */
  implicitParent(ctx: PortalContext): Promise<MessageRow | null> {
    return ctx.store.latestInboundMessage(this.roomId);
  }

  async recipients(): Promise<RecipientPlan> {
    return { envelope: [this.remoteAddress], to: [this.remoteAddress], list: false };
  }

  async describe(): Promise<{ label: string; name: string | null }> {
    return { label: "in a direct chat", name: null };
  }
}

/** A portal the bridge bot is in and reads: a message that replies to nothing starts a new mail thread, named after the room. */
abstract class RoomPortal<K extends "group" | "mailbox"> extends PortalBase<K> {
  get hasBot(): boolean {
    return true;
  }

  /** True: any sender's ghost joins the room to post its mail. */
  get joinsSenders(): boolean {
    return true;
  }

  reader(ids: IdContext): string {
    return botUserId(ids);
  }

  async implicitParent(): Promise<MessageRow | null> {
    return null;
  }

  async describe(ctx: PortalContext): Promise<{ label: string; name: string | null }> {
    const name = await this.roomName(ctx);
    return { label: name ? `in the room "${name}"` : "in a room", name };
  }
}

/** A room where Matrix users invited ghosts. */
export class GroupPortal extends RoomPortal<"group"> {
  readonly kind = "group" as const;

  /** False: replies by mail stay rich replies in a group portal. */
  get threadsReplies(): boolean {
    return false;
  }

  /** False: the room's members chose its ghosts; the bot never invites one back. */
  get invitesSenders(): boolean {
    return false;
  }

  /**
   * The addresses of the verified ghosts joined to the room (each once). An unverified ghost
   * (posted mail whose sender did not authenticate, e.g. into a room mailbox that was later
   * turned off) stands for a claim, not for its address: the room's messages never go to it.
   */
  async recipients(_parent: MessageRow | null, ctx: PortalContext): Promise<RecipientPlan> {
    const members = await ctx.matrix.joinedMembers(this.roomId);
    const ghosts = members.map((m) => parseGhost(m, ctx.ids)).filter((g) => g !== null && g.verified);
    const addresses = [...new Set(ghosts.map((g) => g!.address))];
    return { envelope: addresses, to: addresses, list: false };
  }
}

/** A room with a room mailbox: a mailing list with manners. */
export class MailboxPortal extends RoomPortal<"mailbox"> {
  readonly kind = "mailbox" as const;

  /** True: each email conversation is a Matrix thread, and its replies go into it. */
  get threadsReplies(): boolean {
    return true;
  }

  /** True: the posting policy (checked at DATA time) decides who may write, not membership. */
  get invitesSenders(): boolean {
    return true;
  }

  /**
   * The store row this room has once its mailbox is removed: a group portal of the same room,
   * everything else kept (its email participants still get its messages).
   */
  withoutMailbox(): PortalRow {
    return { ...this.row, kind: "group" };
  }

  /**
   * A message in an email conversation (its parent is a mail that was not a list mail) goes to
   * that conversation's people: the parent's sender, To and Cc, who already see each other. Any
   * other message goes to the subscribers, each by envelope, with the list address in To:.
   */
  async recipients(parent: MessageRow | null, ctx: PortalContext): Promise<RecipientPlan> {
    if (parent && !parent.viaList) {
      const own = `@${ctx.ids.mailDomain}`;
      const people = [...new Set([parent.sender, ...parent.participants])].filter((a) => !a.endsWith(own));
      return { envelope: people, to: people, list: false };
    }
    return { envelope: await ctx.store.listSubscribers(this.roomId), to: [], list: true };
  }
}

/** A portal of any kind: switch on `kind`, or use the methods every kind has. */
export type Portal = DmPortal | GroupPortal | MailboxPortal;

/**
 * The portal a store row describes.
 * @throws TypeError for a DM row without a remote address
 */
export function portalOf(row: PortalRow): Portal {
  switch (row.kind) {
    case "dm":
      return new DmPortal(row);
    case "group":
      return new GroupPortal(row);
    case "mailbox":
      return new MailboxPortal(row);
  }
}
