/**
 * The Matrix side of the bridge: the appservice listener, the bridge bot and the
 * ghosts' intents, on top of matrix-appservice-bridge (which uses matrix-bot-sdk).
 *
 * It knows nothing of mail. Events from the homeserver go to a {@link MatrixEventSink}
 * that the bridge core implements; the core calls the methods here to act in Matrix.
 */
import type { AppService, Bridge as BridgeT, Intent, WeakEvent } from "matrix-appservice-bridge";
import { getLogger, errorFields } from "../util/logger.ts";
import { createHardenedAppService, loadRegistration } from "./appserviceHttp.ts";
import { prepareCrypto, type CryptoStatus } from "./crypto.ts";
import { routeLibraryLogs } from "./libraryLogs.ts";
import type { MatrixActions } from "../bridge/ports.ts";

const log = getLogger("matrix");

/** Receives events pushed by the homeserver (appservice transactions). */
export interface MatrixEventSink {
  /** One room event. Rejections are logged by the gateway, once. */
  onMatrixEvent(event: WeakEvent): Promise<void>;
  /**
   * The homeserver asks whether a user in our namespace exists (appservice user query,
   * Application Service API › Querying). Return a display name to provision it, null to deny.
   */
  onUserQuery(userId: string): Promise<{ displayName: string } | null>;
}

/** Options for {@link MatrixGateway.create}. */
export interface MatrixGatewayOptions {
  homeserverUrl: string;
  serverName: string;
  registrationFile: string;
  botDisplayName: string;
  bindAddress: string;
  port: number;
  sink: MatrixEventSink;
}

/** A Matrix error with its errcode, as thrown by matrix-bot-sdk. */
function errcodeOf(err: unknown): string | undefined {
  const e = err as { errcode?: string; body?: { errcode?: string } };
  return e?.errcode ?? e?.body?.errcode;
}

/** The HTTP status of a matrix-bot-sdk error. */
function statusOf(err: unknown): number | undefined {
  return (err as { statusCode?: number })?.statusCode;
}

/** Acts in Matrix as the bridge bot or as a ghost. */
export class MatrixGateway implements MatrixActions {
  readonly crypto: CryptoStatus;
  private readonly bridge: BridgeT;
  private readonly opts: MatrixGatewayOptions;
  /** The HTTP listener's AppService, with the strict token check (./appserviceHttp.ts). */
  private readonly appservice: AppService;
  private readonly registeredGhosts = new Set<string>();

  private constructor(bridge: BridgeT, opts: MatrixGatewayOptions, crypto: CryptoStatus, appservice: AppService) {
    this.bridge = bridge;
    this.opts = opts;
    this.crypto = crypto;
    this.appservice = appservice;
  }

  /**
   * Load matrix-appservice-bridge (after the crypto probe), read the registration file and
   * build the gateway. Nothing listens until {@link listen} / {@link start}.
   * @throws Error when the registration file cannot be read or lacks its tokens
   */
  static async create(opts: MatrixGatewayOptions): Promise<MatrixGateway> {
    const crypto = prepareCrypto();
    const mab = await import("matrix-appservice-bridge");
    routeLibraryLogs(mab.Logger);
    // One parse of the registration, shared by the bridge and the listener's token check.
    const registration = await loadRegistration(mab.AppServiceRegistration, opts.registrationFile);
    const appservice = createHardenedAppService(mab, { homeserverToken: registration.getHomeserverToken() ?? "" });
    let gateway: MatrixGateway | null = null;
    const bridge = new mab.Bridge({
      homeserverUrl: opts.homeserverUrl,
      domain: opts.serverName,
      registration,
      disableStores: true,
      // bridge/ids.ts mints spec-valid user IDs (`/` and `+` included, Identifier Grammar);
      // the library's own escaping would turn them into other, non-canonical IDs.
      escapeUserIds: false,
      disableContext: true,
      suppressEcho: true,
      logRequestOutcome: false,
      queue: { type: "per_room", perRequest: true },
      controller: {
        onEvent: (request) => {
          const event = request.getData();
          const work = gateway ? opts.sink.onMatrixEvent(event) : Promise.resolve();
          request.outcomeFrom(
            work.catch((err: unknown) => {
              log.error("failed to handle Matrix event", { roomId: event.room_id, eventId: event.event_id, type: event.type, ...errorFields(err) });
            }),
          );
        },
        onUserQuery: async (matrixUser) => {
          const answer = await opts.sink.onUserQuery(matrixUser.getId());
          if (!answer) return null;
          return { name: answer.displayName };
        },
      },
    });
    gateway = new MatrixGateway(bridge, opts, crypto, appservice);
    return gateway;
  }

  /** The bridge bot's user ID. */
  get botUserId(): string {
    return this.bridge.botUserId;
  }

  /**
   * Initialise the bridge and start only the appservice HTTP listener on `bindAddress:port`
   * (no homeserver request is made). Every request must carry the `hs_token`, checked
   * strictly and in constant time (./appserviceAuth.ts, ./appserviceHttp.ts).
   * @throws Error when the port cannot be bound
   */
  async listen(): Promise<void> {
    await this.bridge.initialise();
    await this.bridge.listen(this.opts.port, this.opts.bindAddress, 10, this.appservice);
  }

  /**
   * Start the appservice listener ({@link listen}), wait until the homeserver answers
   * (retrying every 2 s, at most `maxWaitMs`), and set the bot's display name.
   * @throws Error when the listener cannot start or the homeserver cannot be reached in time
   */
  async start(maxWaitMs = 120_000): Promise<void> {
    await this.listen();
    const bot = this.bridge.getIntent();
    const deadline = Date.now() + maxWaitMs;
    for (;;) {
      try {
        await bot.matrixClient.getWhoAmI();
        break;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`homeserver ${this.opts.homeserverUrl} did not answer: ${errorFields(err).error}`);
        log.warn("homeserver not reachable yet, retrying in 2s", { homeserver: this.opts.homeserverUrl, ...errorFields(err) });
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
    try {
      const profile = (await bot.matrixClient.getUserProfile(this.botUserId).catch(() => ({}))) as { displayname?: string };
      if (profile.displayname !== this.opts.botDisplayName) await bot.setDisplayName(this.opts.botDisplayName);
    } catch (err) {
      log.warn("could not set the bridge bot's display name", errorFields(err));
    }
    log.info("appservice listening", { bind: this.opts.bindAddress, port: this.opts.port, bot: this.botUserId, e2ee: this.crypto.available ? "binding loaded" : "off" });
  }

  /** Stop listening. */
  async stop(): Promise<void> {
    await this.bridge.close().catch(() => undefined);
  }

  private intent(userId?: string): Intent {
    return userId && userId !== this.botUserId ? (this.bridge.getIntent(userId) as Intent) : (this.bridge.getIntent() as Intent);
  }

  /**
   * Make sure a ghost exists on the homeserver and carries `displayName`.
   * @param displayName the name to set, or null to leave it
   * @param previous the name last set (skip the call when equal)
   */
  async ensureGhost(userId: string, displayName: string | null, previous: string | null): Promise<void> {
    const intent = this.intent(userId);
    if (!this.registeredGhosts.has(userId)) {
      await intent.ensureRegistered();
      this.registeredGhosts.add(userId);
    }
    if (displayName && displayName !== previous) await intent.setDisplayName(displayName);
  }

  /**
   * Join `userId` (a ghost or the bot) to a room it is invited to or may join.
   * If the homeserver refuses (not invited), the bot invites it first when the bot is in the room.
   */
  async join(roomId: string, userId: string): Promise<void> {
    const client = this.intent(userId).matrixClient;
    try {
      await client.joinRoom(roomId);
    } catch (err) {
      if (errcodeOf(err) !== "M_FORBIDDEN" || userId === this.botUserId) throw err;
      await this.intent().matrixClient.inviteUser(userId, roomId);
      await client.joinRoom(roomId);
    }
  }

  /** `inviter` invites `invitee` to a room. */
  async invite(roomId: string, inviter: string, invitee: string): Promise<void> {
    await this.intent(inviter).matrixClient.inviteUser(invitee, roomId);
  }

  /** `userId` leaves (or rejects an invite to) a room. */
  async leave(roomId: string, userId: string, reason?: string): Promise<void> {
    await this.intent(userId).matrixClient.leaveRoom(roomId, reason);
  }

  /**
   * Send an event as `userId`. A `txnId` makes the send idempotent (Client-Server API,
   * "Transaction identifiers"): a retry after a crash does not post twice.
   * @returns the event ID
   */
  async sendEvent(userId: string, roomId: string, type: string, content: Record<string, unknown>, txnId?: string): Promise<string> {
    const client = this.intent(userId).matrixClient;
    if (!txnId) return client.sendEvent(roomId, type, content);
    const path = `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/${encodeURIComponent(type)}/${encodeURIComponent(txnId)}`;
    const res = (await client.doRequest("PUT", path, null, content)) as { event_id: string };
    return res.event_id;
  }

  /** Upload media as `userId` (Client-Server API, "Content repository"); returns an `mxc://` URI. */
  async uploadContent(userId: string, data: Buffer, contentType: string, filename: string): Promise<string> {
    return this.intent(userId).matrixClient.uploadContent(data, contentType, filename);
  }

  /** The bot posts an `m.notice`, optionally as a reply to `replyTo`. Errors are logged, not thrown. */
  async botNotice(roomId: string, text: string, replyTo?: string): Promise<void> {
    const content: Record<string, unknown> = { msgtype: "m.notice", body: text };
    if (replyTo) content["m.relates_to"] = { "m.in_reply_to": { event_id: replyTo } };
    try {
      await this.intent().matrixClient.sendMessage(roomId, content);
    } catch (err) {
      log.error("bridge bot could not post a notice", { roomId, ...errorFields(err) });
    }
  }

  /**
   * A ghost creates a DM room and invites a local user (Client-Server API, "Direct Messaging").
   * The ghost is the room's creator; the bot is not in it.
   * @returns the new room ID
   */
  async createDm(ghostUserId: string, inviteeUserId: string, topic: string | null): Promise<string> {
    const client = this.intent(ghostUserId).matrixClient;
    return client.createRoom({
      preset: "private_chat",
      is_direct: true,
      invite: [inviteeUserId],
      ...(topic ? { topic } : {}),
      // The ghost, as creator, has top power already (room v12+: implicitly; earlier: 100).
      power_level_content_override: { users: { [inviteeUserId]: 100 } },
    });
  }

  /** Joined members of a room, read as `asUserId` (who must be in the room). */
  async joinedMembers(roomId: string, asUserId?: string): Promise<string[]> {
    return this.intent(asUserId).matrixClient.getJoinedRoomMembers(roomId);
  }

  /**
   * A state event's content, or null when it is not set.
   * @param asUserId a member of the room (default: the bot)
   */
  async stateContent(roomId: string, type: string, stateKey: string, asUserId?: string): Promise<Record<string, unknown> | null> {
    try {
      return (await this.intent(asUserId).matrixClient.getRoomStateEventContent(roomId, type, stateKey)) as Record<string, unknown>;
    } catch (err) {
      if (errcodeOf(err) === "M_NOT_FOUND") return null;
      throw err;
    }
  }

  /** Whether the room has `m.room.encryption` state (Client-Server API, "End-to-End Encryption"). */
  async isEncrypted(roomId: string, asUserId?: string): Promise<boolean> {
    return (await this.stateContent(roomId, "m.room.encryption", "", asUserId)) !== null;
  }

  /**
   * A user's power level in a room (Client-Server API, `m.room.power_levels`).
   * In room versions 12 and later the room's creators (the `m.room.create` sender and
   * `additional_creators`) outrank everyone and are not listed: they get `Infinity`.
   */
  async powerLevel(roomId: string, userId: string, asUserId?: string): Promise<number> {
    const client = this.intent(asUserId).matrixClient;
    const create = (await client.getRoomStateEventBody(roomId, "m.room.create", "")) as {
      sender: string;
      content: { room_version?: string; additional_creators?: string[] };
    };
    const version = Number.parseInt(create.content.room_version ?? "1", 10);
    if (version >= 12 && (create.sender === userId || create.content.additional_creators?.includes(userId))) return Infinity;
    const pl = (await this.stateContent(roomId, "m.room.power_levels", "", asUserId)) as
      | { users?: Record<string, number>; users_default?: number }
      | null;
    if (!pl) return 0;
    return pl.users?.[userId] ?? pl.users_default ?? 0;
  }

  /** The display name of `userId` in a room, falling back to the global profile, then the user ID. */
  async displayName(roomId: string, userId: string, asUserId?: string): Promise<string> {
    try {
      const member = await this.stateContent(roomId, "m.room.member", userId, asUserId);
      if (typeof member?.displayname === "string" && member.displayname) return member.displayname;
    } catch {
      /* fall through to the profile */
    }
    try {
      const profile = (await this.intent().matrixClient.getUserProfile(userId)) as { displayname?: string };
      if (profile.displayname) return profile.displayname;
    } catch {
      /* fall through */
    }
    return userId;
  }

  /** Whether a user exists on the homeserver (its profile can be read). */
  async userExists(userId: string): Promise<boolean> {
    try {
      await this.intent().matrixClient.getUserProfile(userId);
      return true;
    } catch (err) {
      // Synapse answers 404 (errcode M_NOT_FOUND, or M_UNKNOWN "No row found") for unknown users.
      if (statusOf(err) === 404 || errcodeOf(err) === "M_NOT_FOUND" || errcodeOf(err) === "M_INVALID_PARAM") return false;
      throw err;
    }
  }
}
