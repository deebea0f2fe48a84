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
import { NotSentError, type OutboundHandler, type RoomMessageEvent } from "./OutboundHandler.ts";
import { portalOf } from "./Portal.ts";
import { ENCRYPTED_ROOM_NOTICE } from "./notices.ts";
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
}

/** Dispatches Matrix events. */
export class MatrixHandler {
  private readonly opts: MatrixHandlerOptions;

  constructor(opts: MatrixHandlerOptions) {
    this.opts = opts;
  }

  /** Handle one event. Errors are thrown to the caller, which logs them once. */
  async onEvent(event: MatrixEvent): Promise<void> {
    if (event.type === "m.room.member" && event.content.membership === "invite" && event.state_key) {
      await this.onInvite(event, event.state_key);
    } else if (event.type === "m.room.encryption") {
      await this.onEncryptionEnabled(event);
    } else if (event.type === "m.room.message") {
      await this.onMessage(event as unknown as RoomMessageEvent);
    } else if (event.type === "m.room.member" && event.content.membership === "leave" && event.state_key === event.sender) {
      await this.onOwnLeave(event);
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
        await matrix.botNotice(roomId, ENCRYPTED_ROOM_NOTICE);
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
    if (!allowed || encrypted) {
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
    const portal = await this.opts.store.getPortalByRoom(event.room_id);
    if (portal?.kind !== "dm" || portal.localUserId !== event.sender || !portal.remoteAddress) return;
    await this.opts.store.setContactRule(event.sender, portal.remoteAddress, "block");
    log.info("DM invite rejected: sender blocked", { roomId: event.room_id, user: event.sender, address: portal.remoteAddress });
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
    await this.notice(event.room_id, ENCRYPTED_ROOM_NOTICE);
  }

  private async onMessage(event: RoomMessageEvent): Promise<void> {
    const { store, matrix, ids } = this.opts;
    if (parseGhost(event.sender, ids) || event.sender === matrix.botUserId) return;
    const body = typeof event.content.body === "string" ? event.content.body : "";
    const portal = await store.getPortalByRoom(event.room_id);
    const args = parseCommand(body, false);
    // Commands are the bot's: not in a DM portal, where the bot is not.
    if (args && (!portal || portalOf(portal).hasBot)) {
      await this.command(event, args);
      return;
    }
    if (!portal) {
      const dmArgs = (await this.isDmWithBot(event.room_id)) ? parseCommand(body, true) : null;
      if (dmArgs) await this.command(event, dmArgs);
      return;
    }
    if (portal.encrypted) return;
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
      await this.notice(event.room_id, "This message could not be sent by email because of an error on the bridge. The bridge's log has the details.", event.event_id);
      throw err;
    }
  }

  /** Run a bot command and reply; an infrastructure failure gets a reply too, then is rethrown (logged once). */
  private async command(event: RoomMessageEvent, args: string[]): Promise<void> {
    const { store, matrix, ids } = this.opts;
    let reply: string;
    try {
      reply = await runCommand({ store, matrix, ids, mayBridge: this.opts.mayBridge, botDisplayName: this.opts.botDisplayName }, { roomId: event.room_id, sender: event.sender, args });
    } catch (err) {
      await matrix.botNotice(event.room_id, `\`${args.slice(0, 2).join(" ")}\`: failed because of an error on the bridge; the bridge's log has the details.`, event.event_id);
      throw err;
    }
    await matrix.botNotice(event.room_id, reply, event.event_id);
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
