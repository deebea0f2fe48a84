/**
 * Events from Matrix (appservice transactions) → bridge actions:
 * invites of ghosts and of the bot, bot commands, and room messages to send by mail.
 */
import type { BridgeStore } from "../store/Store.ts";
import { parseGhost, type IdContext } from "./ids.ts";
import type { NoticeService } from "./NoticeService.ts";
import { Ghost } from "./Ghost.ts";
import type { MatrixActions } from "./ports.ts";
import { parseCommand, runCommand } from "./commands.ts";
import type { Contacts } from "./Contacts.ts";
import type { Addressing } from "./Addressing.ts";
import { NotSentError, type OutboundHandler, type RoomMessageEvent } from "./OutboundHandler.ts";
import { portalOf } from "./Portal.ts";
import { messageContentOf } from "./format/toMail.ts";
import { ENCRYPTED_ROOM_BRIDGED_NOTICE, ENCRYPTED_ROOM_NOTICE } from "./notices.ts";
import { getLogger, errorFields } from "../util/logger.ts";

const log = getLogger("bridge/matrix");

/** A room event as pushed by the homeserver. */
export interface MatrixEvent {
  type: string;
  room_id: string;
  event_id: string;
  sender: string;
  state_key?: string;
  origin_server_ts: number;
  content: Record<string, unknown>;
}

/** Options for {@link MatrixHandler}. */
export interface MatrixHandlerOptions {
  store: BridgeStore;
  matrix: MatrixActions;
  ids: IdContext;
  mayBridge: (userId: string) => boolean;
  outbound: OutboundHandler;
  /** The bridge bot's display name: no ghost may take it. */
  botDisplayName: string;
  notices: NoticeService;
  /** Contact rules and requests: joining or rejecting a DM invite decides its sender. */
  contacts: Contacts;
  /** Mail domains, aliases and room mailboxes (bot commands). */
  addressing: Addressing;
}

/** How many failed events the handler remembers having told their room of (one notice per event, not per retry). */
const FAILURES_REMEMBERED = 1000;

/** Event types that start a poll (Client-Server API v1.7+ "Polls", and MSC3381's unstable type Element still sends). */
const POLL_START_TYPES: ReadonlySet<string> = new Set(["m.poll.start", "org.matrix.msc3381.poll.start"]);

/** Dispatches Matrix events. */
export class MatrixHandler {
  private readonly opts: MatrixHandlerOptions;

  /** Events whose failure the room was told of (oldest first, at most {@link FAILURES_REMEMBERED}). */
  readonly #toldFailures = new Set<string>();

  constructor(opts: MatrixHandlerOptions) {
    this.opts = opts;
  }

  /** Whether this is the first failure of `eventId` the room would hear of; remembers it. */
  #firstFailure(eventId: string): boolean {
    if (this.#toldFailures.has(eventId)) return false;
    this.#toldFailures.add(eventId);
    if (this.#toldFailures.size > FAILURES_REMEMBERED) this.#toldFailures.delete(this.#toldFailures.values().next().value!);
    return true;
  }

  /** Handle one event. Errors are thrown to the caller, which logs them once. */
  async onEvent(event: MatrixEvent): Promise<void> {
    if (event.type === "m.room.member" && event.content.membership === "invite" && event.state_key) {
      await this.onInvite(event, event.state_key);
    } else if (event.type === "m.room.encryption") {
      await this.onEncryptionEnabled(event);
    } else if (event.type === "m.room.message") {
      // The content is the sender's client's JSON: read field by field, typed (toMail.ts).
      await this.onMessage({ ...(event as unknown as RoomMessageEvent), content: messageContentOf(event.content) });
    } else if (event.type === "m.sticker") {
      // A sticker is an image with a description (Client-Server API, "Sticker Messages"): mailed
      // as an image named sticker.<type>, the description as its caption.
      const content = messageContentOf(event.content);
      const ext = /^image\/(png|gif|webp|jpeg)$/.exec(content.info?.mimetype ?? "")?.[1]?.replace("jpeg", "jpg");
      await this.onMessage({ ...(event as unknown as RoomMessageEvent), content: { ...content, msgtype: "m.image", filename: `sticker${ext ? `.${ext}` : ""}` } });
    } else if (POLL_START_TYPES.has(event.type)) {
      // A poll cannot be answered by mail: its sender hears that it was not sent (the type names it).
      await this.onMessage({ ...(event as unknown as RoomMessageEvent), content: { msgtype: event.type } });
    } else if (event.type === "m.room.member" && event.content.membership === "leave" && event.state_key === event.sender) {
      await this.onOwnLeave(event);
    } else if (event.type === "m.room.member" && event.content.membership === "join" && event.state_key === event.sender) {
      await this.onOwnJoin(event);
    } else if (event.type === "m.room.redaction") {
      // Room versions 1–10 put `redacts` at the top level, 11 and later in the content.
      const redacts = (event as { redacts?: unknown }).redacts ?? event.content.redacts;
      if (typeof redacts === "string" && event.room_id) await this.opts.outbound.redact(event.room_id, redacts);
    }
  }

  /** A notice in answer to something in the room: best effort, a failure is logged once. */
  private async notice(roomId: string, text: string, replyTo?: string): Promise<void> {
    await this.opts.notices.post(roomId, text, replyTo).catch((err: unknown) => log.error("could not post a notice", { roomId, ...errorFields(err) }));
  }

  private async onInvite(event: MatrixEvent, invitee: string): Promise<void> {
    const { matrix, ids, store } = this.opts;
    const roomId = event.room_id;
    const inviter = event.sender;
    const allowed = inviter === matrix.botUserId || this.opts.mayBridge(inviter);
    if (invitee === matrix.botUserId) {
      // A ghost brings the bot into its portal (bringBot), which joins it quietly.
      if (parseGhost(inviter, ids)) return;
      await matrix.join(roomId, invitee);
      if (!allowed) {
        await matrix.botNotice(roomId, `${inviter} is not allowed to use this email bridge, so nothing in this room will be sent by email.`);
        await matrix.leave(roomId, invitee, "not allowed to use this bridge");
      } else if (await matrix.isEncrypted(roomId)) {
        await matrix.botNotice(roomId, matrix.bridgesEncryptedRooms() ? ENCRYPTED_ROOM_BRIDGED_NOTICE : ENCRYPTED_ROOM_NOTICE);
      } else {
        await matrix.botNotice(roomId, "Hello! I am the email bridge bot. Say `!email help` to see what I can do.");
      }
      log.info("bridge bot joined", { roomId, inviter });
      return;
    }
    // Only a verified ghost can be invited: an unverified one exists only to post unauthenticated mail.
    const ghost = Ghost.fromUserId(invitee, ids);
    if (!ghost?.verified) return;
    const address = ghost.address;
    await ghost.ensureProfile({ store, matrix, ids, botDisplayName: this.opts.botDisplayName });
    await matrix.join(roomId, invitee);
    const encrypted = await matrix.isEncrypted(roomId, invitee);
    const bridged = encrypted && matrix.bridgesEncryptedRooms();
    if (!allowed || (encrypted && !bridged)) {
      // Bring the bot in to say why, then the ghost leaves: nothing is bridged here.
      await this.bringBot(roomId, invitee);
      const why = !allowed
        ? `${inviter} is not allowed to use this email bridge, so no mail is sent to ${address}.`
        : ENCRYPTED_ROOM_NOTICE;
      await matrix.botNotice(roomId, why);
      await matrix.leave(roomId, invitee, !allowed ? "inviter not allowed to use the bridge" : "room is encrypted");
      log.info("ghost invite refused", { roomId, inviter, address, reason: !allowed ? "not allowed" : "encrypted" });
      return;
    }
    const portal = await store.getPortalByRoom(roomId);
    if (!portal) {
      await store.upsertPortal({ roomId, kind: "group", localUserId: null, remoteAddress: null, subject: null, encrypted: false, remoteVerified: true });
    }
    // A new room becomes a group portal; only a DM keeps the bot out.
    if (!portal || portalOf(portal).hasBot) await this.bringBot(roomId, invitee);
    if (bridged && !portal) await matrix.botNotice(roomId, ENCRYPTED_ROOM_BRIDGED_NOTICE);
    // Whom a user invites, they know: a later mail from that address is no contact request.
    if (inviter !== matrix.botUserId && !parseGhost(inviter, ids)) await this.opts.contacts.known(inviter, address);
    log.info("ghost joined portal", { roomId, inviter, address });
  }

  /**
   * A user rejected a DM portal's invite (left while invited): they refuse that sender, as
   * `block <address>` would; later mail from it gets 550 5.7.1 (`allow <address>` undoes it).
   * Leaving after having joined refuses nothing. The previous membership comes from the
   * event's `unsigned.prev_content` (Client-Server API, "m.room.member").
   */
  private async onOwnLeave(event: MatrixEvent): Promise<void> {
    const prev = (event as { unsigned?: { prev_content?: { membership?: unknown } } }).unsigned?.prev_content?.membership;
    if (prev !== "invite") return;
    const row = await this.opts.store.getPortalByRoom(event.room_id);
    const address = row ? portalOf(row).refusedOnDecline(event.sender) : null;
    if (!address) return;
    await this.opts.contacts.refuse(event.sender, address, { reason: null, quiet: false });
    log.info("DM invite rejected: sender blocked", { roomId: event.room_id, user: event.sender, address });
  }

  /**
   * A user joined a DM portal they were invited to: they accept its sender, as `accept
   * <address>` would (a contact request in `hold` mode is then not needed for it). Only a
   * verified portal's address is accepted: an unverified sender's DM vouches for nobody.
   */
  private async onOwnJoin(event: MatrixEvent): Promise<void> {
    const prev = (event as { unsigned?: { prev_content?: { membership?: unknown } } }).unsigned?.prev_content?.membership;
    if (prev !== "invite") return;
    const row = await this.opts.store.getPortalByRoom(event.room_id);
    const address = row ? portalOf(row).acceptedOnJoin(event.sender) : null;
    if (!address) return;
    await this.opts.contacts.known(event.sender, address);
  }

  /** The ghost invites the bridge bot so it can read members and post notices; the bot joins. */
  private async bringBot(roomId: string, ghost: string): Promise<void> {
    const { matrix } = this.opts;
    const members = await matrix.joinedMembers(roomId, ghost);
    if (members.includes(matrix.botUserId)) return;
    try {
      await matrix.invite(roomId, ghost, matrix.botUserId);
    } catch (err) {
      log.warn("ghost could not invite the bridge bot", { roomId, ghost, ...errorFields(err) });
    }
    await matrix.join(roomId, matrix.botUserId);
  }

  private async onEncryptionEnabled(event: MatrixEvent): Promise<void> {
    const portal = await this.opts.store.getPortalByRoom(event.room_id);
    if (!portal) return;
    await this.opts.store.upsertPortal({ ...portal, encrypted: true });
    await this.notice(event.room_id, this.opts.matrix.bridgesEncryptedRooms() ? ENCRYPTED_ROOM_BRIDGED_NOTICE : ENCRYPTED_ROOM_NOTICE);
  }

  private async onMessage(event: RoomMessageEvent): Promise<void> {
    const { store, matrix, ids } = this.opts;
    if (parseGhost(event.sender, ids) || event.sender === matrix.botUserId) return;
    const body = commandBody(event);
    const portal = await store.getPortalByRoom(event.room_id);
    const args = parseCommand(body, false);
    if (!portal) {
      const isDm = await this.isDmWithBot(event.room_id);
      const command = args ?? (isDm ? parseCommand(body, true) : null);
      if (!command) return;
      // The bot answers here, and tells this user of contact requests here too.
      if (isDm) await matrix.rememberBotDm(event.sender, event.room_id);
      await this.command(event, command, event.room_id);
      return;
    }
    if (args) {
      // A command is never mailed. In a DM portal, where the bot is not, it answers in its own
      // DM with the user.
      await this.command(event, args, portalOf(portal).hasBot ? event.room_id : await matrix.botDm(event.sender));
      return;
    }
    // An encrypted portal is bridged while the bridge can read it (its events arrive decrypted).
    if (portal.encrypted && !matrix.bridgesEncryptedRooms()) return;
    if (!this.opts.mayBridge(event.sender)) {
      await this.notice(event.room_id, `${event.sender} is not allowed to use this email bridge; this message was not sent by email.`, event.event_id);
      return;
    }
    try {
      await this.opts.outbound.handle(event, portal);
    } catch (err) {
      if (err instanceof NotSentError) {
        await this.notice(event.room_id, err.message, event.event_id);
        return;
      }
      // The journal tries a failed event again a few times: the room hears of it once.
      if (this.#firstFailure(event.event_id)) {
        await this.notice(event.room_id, "This message could not be sent by email because of an error on the bridge. The bridge's log has the details.", event.event_id);
      }
      throw err;
    }
  }

  /**
   * Run a bot command and reply in `replyRoom` (as a reply when it is the command's room); an
   * infrastructure failure gets a reply too, then is rethrown (logged once).
   */
  private async command(event: RoomMessageEvent, args: string[], replyRoom: string): Promise<void> {
    const { store, matrix, ids } = this.opts;
    let reply: string;
    try {
      reply = await runCommand({ store, matrix, ids, mayBridge: this.opts.mayBridge, botDisplayName: this.opts.botDisplayName, contacts: this.opts.contacts, addressing: this.opts.addressing }, {
        roomId: event.room_id,
        sender: event.sender,
        args,
        body: commandBody(event),
        replyTo: replyToOf(event),
      });
    } catch (err) {
      await matrix.botNotice(replyRoom, `\`${args.slice(0, 2).join(" ")}\`: failed because of an error on the bridge; the bridge's log has the details.`, replyRoom === event.room_id ? event.event_id : undefined);
      throw err;
    }
    await matrix.botNotice(replyRoom, reply, replyRoom === event.room_id ? event.event_id : undefined);
  }

  /**
   * Whether a room that is no portal is a DM with the bot (two members), where commands need
   * no prefix. A room the bot cannot read (the homeserver refuses) is none; a homeserver that
   * cannot answer now throws, so the event is retried rather than its command ignored.
   */
  private async isDmWithBot(roomId: string): Promise<boolean> {
    try {
      return (await this.opts.matrix.joinedMembers(roomId)).length === 2;
    } catch (err) {
      if (this.opts.matrix.classifyError(err).temporary) throw err;
      return false;
    }
  }
}

/** The event a message replies to (`m.relates_to.m.in_reply_to.event_id`), or null. */
function replyToOf(event: RoomMessageEvent): string | null {
  const rel = (event.content as { "m.relates_to"?: { "m.in_reply_to"?: { event_id?: unknown } } })["m.relates_to"];
  const id = rel?.["m.in_reply_to"]?.event_id;
  return typeof id === "string" ? id : null;
}

/** A message's body without the reply fallback (`> ` lines and an empty line) that older clients put first. */
function commandBody(event: RoomMessageEvent): string {
  const body = typeof event.content.body === "string" ? event.content.body : "";
  if (!replyToOf(event) || !body.startsWith("> ")) return body;
  const end = body.indexOf("\n\n");
  return end >= 0 ? body.slice(end + 2) : body;
}
