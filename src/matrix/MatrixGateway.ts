/**
 * The Matrix side of the bridge: the appservice listener, the bridge bot and the
 * ghosts' intents, on top of matrix-appservice-bridge (which uses matrix-bot-sdk).
 *
 * It knows nothing of mail. Events from the homeserver go to a {@link MatrixEventSink}
 * that the bridge core implements; the core calls the methods here to act in Matrix.
 */
import { randomBytes } from "node:crypto";
import type { AppService, Bridge as BridgeT, Intent, WeakEvent } from "matrix-appservice-bridge";
import { getLogger, errorFields } from "../util/logger.ts";
import { createHardenedAppService, loadRegistration, type MediaContent, type MediaLinkRoute, type OneClickUnsubscribeRoute } from "./appserviceHttp.ts";
import { AppserviceTransactions, type AppserviceTransactionsOptions } from "./appserviceTransactions.ts";
import { armedFailpoint } from "./failpoint.ts";
import { prepareCrypto, type CryptoStatus } from "./crypto.ts";
import { RoomStateCache } from "./RoomStateCache.ts";
import { routeLibraryLogs } from "./libraryLogs.ts";
import { E2eeUnavailableError, EndToEndEncryption, storeKeyFrom, type CryptoStateStore } from "./e2ee/E2ee.ts";
import { MissingRoomKeyError } from "./e2ee/errors.ts";
import { uploadMedia } from "./mediaUpload.ts";
import { requestAppservicePing } from "./appservicePing.ts";
import { RefusalPing, type RefusalPingOutcome } from "./refusalPing.ts";
import type { HomeserverFailure, MatrixActions, MatrixEventJournal, MediaStream } from "../bridge/ports.ts";

const log = getLogger("matrix");

/** Receives events pushed by the homeserver (appservice transactions). */
export interface MatrixEventSink {
  /**
   * One room event, from the journal (./appserviceTransactions.ts): called again for the same
   * event after a crash or a rejection, so it must be idempotent on the event ID. Resolving
   * marks the event done; rejecting gets it retried with backoff, then marked failed. Rejections
   * are logged by the gateway, once each.
   */
  onMatrixEvent(event: WeakEvent): Promise<void>;
  /**
   * The homeserver asks whether a user in our namespace exists (appservice user query,
   * Application Service API › Querying). Return a display name to provision it, null to deny.
   */
  onUserQuery(userId: string): Promise<{ displayName: string } | null>;
  /**
   * Third-party lookups for the `email` protocol (Application Service API › "Third party
   * networks"; clients reach them through `/_matrix/client/v3/thirdparty/…`): the ghost of an
   * address, and the address of a ghost; null when there is none.
   */
  thirdPartyUserId(address: string): string | null;
  thirdPartyAddress(userId: string): string | null;
  /**
   * Whether a room is taken for something else (a portal of the bridge), so that it can no longer
   * serve as the bot's DM with a user even if it was one (see {@link MatrixGateway.botDm}).
   */
  isPortalRoom(roomId: string): Promise<boolean>;
}

/** The one third-party protocol the bridge answers for (`protocols` in the registration). */
export const EMAIL_PROTOCOL = "email";

/** Options for {@link MatrixGateway.create}. */
export interface MatrixGatewayOptions {
  homeserverUrl: string;
  serverName: string;
  registrationFile: string;
  botDisplayName: string;
  bindAddress: string;
  port: number;
  /**
   * Serve the one-click unsubscribe route (RFC 8058) on the appservice listener
   * (./appserviceHttp.ts); absent when the bridge has no public URL.
   */
  unsubscribe?: OneClickUnsubscribeRoute;
  /**
   * Serve the links to files too large to attach (`/media/<token>/<name>`) on the appservice
   * listener (./appserviceHttp.ts); absent when the bridge has no public URL.
   */
  media?: MediaLinkRoute;
  sink: MatrixEventSink;
  /**
   * Where appservice transactions are journaled before their 200 (the bridge's store,
   * migration 4); events are handed to `sink` from there.
   */
  journal: MatrixEventJournal;
  /** Retry and concurrency settings of the event dispatcher (tests); defaults in ./appserviceTransactions.ts. */
  dispatch?: Pick<AppserviceTransactionsOptions, "maxAttempts" | "retryBackoff" | "concurrency" | "pollMs">;
  /** End-to-end-encrypted rooms (./e2ee/E2ee.ts, config `encryption`); absent or disabled: the bridge stays out of them. */
  e2ee?: {
    enabled: boolean;
    /** Device ID of the bot's and the ghosts' devices. */
    deviceId: string;
    /** The configured store key (base64 of 32 bytes), or null for one derived from the as_token. */
    storeKey: string | null;
    /** Where the sealed crypto state is saved (the bridge's store, migration 12). */
    state: CryptoStateStore;
    ghostsInMemory: number;
    /** The bot's texts (the bridge core's wording): keys missing in a room; the bot's device made anew after a loss. */
    notices: { missingKeys: string; deviceReplaced: string };
  };
}

/** How long a transaction that arrives before the bot's device is open waits for it, in ms. */
const E2EE_HOLD_MS = 20_000;

/** How long the start waits for the homeserver to push the bot's probe to-device message back, in ms. */
const E2EE_PROBE_MS = 10_000;

/** How long an encrypted event may wait for its room key before the room is told, in ms. */
const MISSING_KEY_NOTICE_AFTER_MS = 60_000;


/** Error codes of a peer (homeserver, database) that cannot be reached: the same request may work later. */
const OUTAGE_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EAI_AGAIN", "EPIPE", "EHOSTUNREACH", "ENETUNREACH", "UND_ERR_CONNECT_TIMEOUT", "UND_ERR_SOCKET", "UND_ERR_HEADERS_TIMEOUT"]);

/** A Matrix error with its errcode, as thrown by matrix-bot-sdk. */
function errcodeOf(err: unknown): string | undefined {
  const e = err as { errcode?: string; body?: { errcode?: string } };
  return e?.errcode ?? e?.body?.errcode;
}

/**
 * Longest wait for the start-up appservice ping, ms: the homeserver's call back to the bridge
 * is part of it, and Synapse gives that up after 60 s (M_CONNECTION_TIMEOUT).
 */
const PING_TIMEOUT_MS = 70_000;

/** Most memberships {@link MatrixGateway} remembers as joined (about 100 bytes each). */
const MAX_KNOWN_MEMBERSHIPS = 100_000;

function membershipKey(roomId: string, userId: string): string {
  return `${roomId}\n${userId}`;
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
  /**
   * Memberships known to be `join` (`roomId\nuserId`), so a post does not join again each time.
   * Forgotten when the room says otherwise (a membership event through the appservice
   * transactions, or a send refused with `M_FORBIDDEN`); bounded, oldest forgotten first.
   */
  readonly #joined = new Set<string>();
  /** State and member lists read from the homeserver, forgotten when the room changes them (./RoomStateCache.ts). */
  readonly #roomState = new RoomStateCache();
  /** Journals transactions before their 200 and hands their events to the sink (./appserviceTransactions.ts). */
  readonly #transactions: AppserviceTransactions;

  /** Pings the homeserver after refused transactions (./refusalPing.ts). */
  readonly #refusalPing: RefusalPing;

  private constructor(bridge: BridgeT, opts: MatrixGatewayOptions, crypto: CryptoStatus, appservice: AppService, transactions: AppserviceTransactions, refusalPing: RefusalPing) {
    this.bridge = bridge;
    this.opts = opts;
    this.crypto = crypto;
    this.appservice = appservice;
    this.#transactions = transactions;
    this.#refusalPing = refusalPing;
  }

  /**
   * Load matrix-appservice-bridge (after the crypto probe), read the registration file and
   * build the gateway. Nothing listens until {@link listen} / {@link start}.
   *
   * Appservice transactions do not go through the library's event path: the listener's front
   * handler journals them (`opts.journal`) and answers 200 only after the commit; the events
   * are then handed to `opts.sink.onMatrixEvent` from the journal (./appserviceTransactions.ts).
   * Events of the bridge's own users (the bot, exclusive user namespaces) are dropped before
   * the journal, as the library's `suppressEcho` did.
   * @throws Error when the registration file cannot be read or lacks its tokens
   */
  static async create(opts: MatrixGatewayOptions): Promise<MatrixGateway> {
    const crypto = prepareCrypto();
    const mab = await import("matrix-appservice-bridge");
    routeLibraryLogs(mab.Logger);
    // One parse of the registration, shared by the bridge and the listener's token check.
    const registration = await loadRegistration(mab.AppServiceRegistration, opts.registrationFile);
    let gateway: MatrixGateway | null = null;
    // Refused transactions wait in the homeserver for its backoff; a ping ends it (./refusalPing.ts).
    const refusalPing = new RefusalPing({ ping: () => (gateway ? gateway.#pingHomeserver("refused") : Promise.resolve("not asked" as const)) });
    const failpointArmed = armedFailpoint();
    if (failpointArmed) log.warn("test failpoint armed: this process will SIGKILL itself", { failpoint: failpointArmed });
    const transactions = new AppserviceTransactions({
      ...opts.dispatch,
      journal: opts.journal,
      handle: async (event) => {
        gateway?.noteEvent(event);
        const clear = gateway && event.type === "m.room.encrypted" ? await gateway.#decrypted(event) : event;
        if (clear) await opts.sink.onMatrixEvent(clear);
      },
      ...(opts.e2ee?.enabled ? { crypto: { ingest: (txnId: string, body: Record<string, unknown>) => (gateway ? gateway.#ingest(txnId, body) : Promise.resolve()) } } : {}),
      // A homeserver (or store) that is down does not make an event fail: it is retried for 48 h.
      // Only real outages count; a bug's plain Error still fails after its attempts.
      isTemporary: (err) => {
        // An encrypted event waits in the journal for its room key; it is never dropped.
        if (err instanceof MissingRoomKeyError) return true;
        const code = (err as { code?: unknown } | null)?.code;
        if (typeof code === "string" && OUTAGE_CODES.has(code)) return true;
        const failure = gateway?.classifyError(err);
        return failure !== undefined && failure.status !== null && failure.temporary;
      },
      // The library's suppressEcho rule (bridge.js onEvent): the bot, or a user of an exclusive namespace.
      isOwnUser: (userId) => {
        if (!gateway) throw new Error("appservice transaction before the gateway exists");
        return userId === gateway.botUserId || registration.isUserMatch(userId, true);
      },
      onRefused: () => refusalPing.refused(),
      onRecorded: () => refusalPing.recorded(),
    });
    const appservice = createHardenedAppService(mab, {
      homeserverToken: registration.getHomeserverToken() ?? "",
      transactions,
      ...(opts.unsubscribe ? { unsubscribe: opts.unsubscribe } : {}),
      ...(opts.media ? { media: opts.media } : {}),
    });
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
      // Unused: events never enter the library's queue (see above); ordering is the journal's.
      queue: { type: "per_room", perRequest: true },
      controller: {
        onEvent: (request) => {
          // Transactions never reach the library (the front handler journals them), so no event
          // should come this way; one that does is not handled (it is not in the journal).
          const event = request.getData();
          log.error("Matrix event reached the library's event path: not handled", { roomId: event.room_id, eventId: event.event_id, type: event.type });
          request.resolve(undefined);
        },
        onUserQuery: async (matrixUser) => {
          const answer = await opts.sink.onUserQuery(matrixUser.getId());
          if (!answer) return null;
          return { name: answer.displayName };
        },
        thirdPartyLookup: {
          protocols: [EMAIL_PROTOCOL],
          getProtocol: () => ({
            user_fields: ["address"],
            location_fields: [],
            icon: "",
            field_types: { address: { regexp: "[^@\\s]+@[^@\\s]+", placeholder: "bob@example.org" } },
            instances: [{ desc: "Email", network_id: EMAIL_PROTOCOL, fields: {} }],
          }),
          getLocation: () => [],
          parseLocation: () => [],
          getUser: (_protocol, fields) => {
            const raw = Array.isArray(fields.address) ? fields.address[0] : fields.address;
            const userid = typeof raw === "string" ? opts.sink.thirdPartyUserId(raw) : null;
            const address = userid ? opts.sink.thirdPartyAddress(userid) : null;
            return userid && address ? [{ userid, protocol: EMAIL_PROTOCOL, fields: { address } }] : [];
          },
          // The library types this as a location list; the spec's answer is a user list.
          parseUser: (userid) => {
            const address = opts.sink.thirdPartyAddress(userid);
            return (address ? [{ userid, protocol: EMAIL_PROTOCOL, fields: { address } }] : []) as unknown as [];
          },
        },
      },
    });
    gateway = new MatrixGateway(bridge, opts, crypto, appservice, transactions, refusalPing);
    gateway.#asToken = registration.getAppServiceToken() ?? "";
    gateway.#appserviceId = registration.getId() ?? "";
    return gateway;
  }

  /**
   * The registration's `as_token`, for keys the bridge derives from it (e.g. the one-click
   * unsubscribe links' HMAC key). A secret: never log it.
   */
  get appserviceToken(): string {
    return this.#asToken;
  }

  /** The bridge bot's user ID. */
  get botUserId(): string {
    return this.bridge.botUserId;
  }

  /**
   * Initialise the bridge and start only the appservice HTTP listener on `bindAddress:port`
   * (no homeserver request is made). Every request must carry the `hs_token`, checked
   * strictly and in constant time (./appserviceAuth.ts, ./appserviceHttp.ts). Then start
   * handing journaled events to the sink (those left pending by a previous run first).
   * @throws Error when the port cannot be bound
   */
  async listen(): Promise<void> {
    await this.#listen();
    this.#transactions.start();
  }

  #opened = false;

  /**
   * Initialise the bridge and start the HTTP listener without asking the homeserver anything:
   * transactions are journaled (and answered) from now on, and intents can be made; events are
   * handed to the sink only after {@link start}. Idempotent.
   * @throws Error when the port cannot be bound
   */
  async open(): Promise<void> {
    await this.#listen();
  }

  /** Initialise the bridge and start the HTTP listener, once; transactions are journaled from now on. */
  async #listen(): Promise<void> {
    if (this.#opened) return;
    await this.bridge.initialise();
    await this.bridge.listen(this.opts.port, this.opts.bindAddress, 10, this.appservice);
    this.#opened = true;
  }

  /**
   * Start the appservice listener ({@link open}) if not yet, wait until the homeserver answers
   * (retrying after 2 s, doubling up to 30 s, for at most `maxWaitMs`; `Infinity`: as long as it
   * takes), set the bot's display name, then start handing journaled events to the sink (those
   * left pending by a previous run first). Transactions are journaled (and answered) as soon as
   * the listener runs. Last, the homeserver is asked to ping the appservice (in the background,
   * see `#pingHomeserver`), so that it sends at once what it held while the bridge was down.
   * @throws Error when the listener cannot start or the homeserver cannot be reached in time
   */
  async start(maxWaitMs = 120_000): Promise<void> {
    // Journal from now on; handle once the homeserver answers (a pending event must not
    // spend its attempts while the homeserver is still down).
    await this.#listen();
    const bot = this.bridge.getIntent();
    const deadline = Date.now() + maxWaitMs;
    for (let waitMs = 2000; ; waitMs = Math.min(waitMs * 2, 30_000)) {
      try {
        await bot.matrixClient.getWhoAmI();
        break;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`homeserver ${this.opts.homeserverUrl} did not answer: ${errorFields(err).error}`);
        log.warn("homeserver not reachable yet, will retry", { homeserver: this.opts.homeserverUrl, retryInMs: waitMs, ...errorFields(err) });
        await new Promise((r) => setTimeout(r, waitMs));
      }
    }
    try {
      const profile = (await bot.matrixClient.getUserProfile(this.botUserId).catch(() => ({}))) as { displayname?: string };
      if (profile.displayname !== this.opts.botDisplayName) await bot.setDisplayName(this.opts.botDisplayName);
    } catch (err) {
      log.warn("could not set the bridge bot's display name", errorFields(err));
    }
    await this.#startE2ee();
    this.#transactions.start();
    log.info("appservice listening", { bind: this.opts.bindAddress, port: this.opts.port, bot: this.botUserId, e2ee: this.#e2ee ? "bot device ready" : "off" });
    this.#started = true;
    this.#ping = this.#pingHomeserver("start");
  }

  /** {@link start} has run: the homeserver answered; pings may be asked for. */
  #started = false;
  /** The homeserver answered a ping `M_UNRECOGNIZED`: it has none (older than spec v1.7). */
  #pingUnsupported = false;
  /** The start-up ping while it runs (awaited by {@link stop}). */
  #ping: Promise<RefusalPingOutcome> | null = null;
  /** Aborts the pings in flight when the gateway stops. */
  readonly #pingAbort = new AbortController();

  /**
   * Ask the homeserver to ping this appservice (./appservicePing.ts) and log the outcome; never
   * throws. Synapse marks an appservice it could not reach, or that refused a transaction, as
   * down and retries the transactions it holds for it only after a backoff that doubles from 2 s
   * to 512 s; after a successful ping it retries them at once (`force_retry`). So Matrix messages
   * sent while the bridge was down go out as mail right after it is back (`start`), and those
   * refused while its store was away right after the store is back (`refused`, ./refusalPing.ts),
   * not up to 8.5 minutes later. Before {@link start} has run nothing is asked (the start-up
   * ping follows).
   *
   * Outcomes, one log line each: `info` when the homeserver reached the bridge; `info` when it
   * has no ping (HTTP 404/405 `M_UNRECOGNIZED`: older than spec v1.7 / Synapse 1.84; held
   * transactions then come on its own schedule); `warn` with the errcode otherwise (e.g.
   * `M_CONNECTION_FAILED`: the homeserver cannot reach `appservice.url`, so no event will reach
   * the bridge; `matrix-email-bridge doctor` tells more).
   */
  async #pingHomeserver(reason: "start" | "refused"): Promise<RefusalPingOutcome> {
    if (this.#pingUnsupported) return "unsupported";
    if (!this.#started || this.#pingAbort.signal.aborted) return "not asked";
    const transactionId = `meb-${reason}-${randomBytes(6).toString("hex")}`;
    const where = { homeserver: this.opts.homeserverUrl, appservice: this.#appserviceId, reason };
    try {
      const answer = await requestAppservicePing({
        homeserverUrl: this.opts.homeserverUrl,
        appserviceId: this.#appserviceId,
        asToken: this.#asToken,
        transactionId,
        timeoutMs: PING_TIMEOUT_MS,
        signal: this.#pingAbort.signal,
      });
      if (answer.ok) {
        // After refusals, ./refusalPing.ts logs once when journaling works again.
        const level = reason === "start" ? "info" : "debug";
        log[level]("homeserver pinged the appservice: it sends the transactions it held now", { ...where, durationMs: answer.durationMs });
      } else if (answer.errcode === "M_UNRECOGNIZED" && (answer.status === 404 || answer.status === 405)) {
        log.info("homeserver has no appservice ping (spec v1.7, Synapse 1.84): transactions it held while the bridge was down come on its own retry schedule", where);
        this.#pingUnsupported = true;
        return "unsupported";
      } else {
        log.warn("appservice ping through the homeserver failed: check `matrix-email-bridge doctor`", {
          ...where,
          status: answer.status,
          errcode: answer.errcode ?? (answer.notJson ? "not a JSON answer" : null),
          error: answer.error,
          appserviceStatus: answer.appserviceStatus,
        });
      }
    } catch (err) {
      if (!this.#pingAbort.signal.aborted) {
        log.warn("appservice ping through the homeserver got no answer: check `matrix-email-bridge doctor`", { ...where, ...errorFields(err) });
      }
    }
    return "asked";
  }

  /**
   * Stop handing events to the sink (waiting for those being handled; the rest stay pending
   * in the journal for the next start), then stop listening.
   */
  async stop(): Promise<void> {
    this.#pingAbort.abort();
    await this.#ping;
    await this.#refusalPing.stop();
    await this.#transactions.stop();
    const e2ee = this.#e2ee;
    this.#e2ee = null;
    this.#e2eeStopping = e2ee !== null;
    await e2ee?.stop();
    await this.bridge.close().catch(() => undefined);
  }

  /** End-to-end encryption, once the bot's device is ready (./e2ee/E2ee.ts); null when off or unsupported. */
  #e2ee: EndToEndEncryption | null = null;
  #asToken = "";
  /** The registration's `id` (the appservice ping names it). */
  #appserviceId = "";
  /** Encrypted events waiting for their keys: event ID → epoch ms of the first failed try. */
  readonly #waitingForKeys = new Map<string, number>();
  /** Rooms told that keys are missing (once per room and run). */
  readonly #toldMissingKeys = new Set<string>();

  /**
   * Open or create the bot's device. A homeserver that cannot host it (no MSC4190) leaves the
   * bridge as without encryption: a warning, and encrypted rooms are not bridged.
   * @throws what {@link EndToEndEncryption.start} throws besides E2eeUnavailableError (e.g. a
   *   saved state the configured key cannot open)
   */
  async #startE2ee(): Promise<void> {
    const e = this.opts.e2ee;
    if (!e?.enabled || this.#e2ee) return;
    try {
      this.#e2ee = await EndToEndEncryption.start({
        homeserverUrl: this.opts.homeserverUrl,
        asToken: this.#asToken,
        botUserId: this.botUserId,
        deviceId: e.deviceId,
        deviceDisplayName: this.opts.botDisplayName,
        storeKey: storeKeyFrom(e.storeKey, this.#asToken),
        state: e.state,
        ghostsInMemory: e.ghostsInMemory,
      });
      this.#e2ee.onRoomKeys(() => this.#transactions.kick());
      this.#e2eePending = false;
      this.#e2eeSettle();
      if (this.#e2ee.replacedBotDevice) void this.#tellDeviceReplaced();
      // In the background: the start does not wait for the homeserver's answer.
      const e2ee = this.#e2ee;
      this.#e2eeProbing = true;
      const probe = e2ee.probe(E2EE_PROBE_MS).finally(() => {
        this.#e2eeProbing = false;
      });
      this.#e2eeProbe = probe.then(
        () => undefined,
        () => undefined,
      );
      void probe
        .then((ok) => {
          if (!ok && this.#e2ee === e2ee) log.warn("encrypted rooms are not bridged (yet): the homeserver did not push the bot's probe to-device message back (Synapse experimental_features msc2409_to_device_messages_enabled, msc3202_transaction_extensions)", { waitedMs: E2EE_PROBE_MS });
        })
        .catch((err: unknown) => log.warn("end-to-end encryption probe not sent", errorFields(err)));
    } catch (err) {
      if (!(err instanceof E2eeUnavailableError)) throw err;
      log.warn("encrypted rooms are not bridged: the homeserver cannot host the bridge's devices", errorFields(err));
    } finally {
      this.#e2eePending = false;
      this.#e2eeSettle();
    }
  }

  /**
   * The bot's device was made anew after its crypto state was lost: say so in every encrypted
   * room the bot is in (best effort; failures are logged).
   */
  async #tellDeviceReplaced(): Promise<void> {
    try {
      for (const roomId of await this.joinedRooms(this.botUserId)) {
        if (await this.isEncrypted(roomId)) await this.botNotice(roomId, this.opts.e2ee!.notices.deviceReplaced);
      }
    } catch (err) {
      log.error("rooms not told of the bridge's new device", errorFields(err));
    }
  }

  /** Whether the devices are being closed (stop): crypto data can no longer be taken. */
  #e2eeStopping = false;
  /** Whether the start's probe for to-device delivery is under way (./e2ee/E2ee.ts `probe`). */
  #e2eeProbing = false;
  /** Settles when the probe has (./e2ee/E2ee.ts `probe`). */
  #e2eeProbe: Promise<void> = Promise.resolve();
  /** Whether the bot's device is still being opened: crypto data cannot be taken yet. */
  #e2eePending = true;
  /** Resolves once the bot's device is open, or known not to be possible. */
  #e2eeSettle: () => void = () => undefined;
  readonly #e2eeSettled = new Promise<void>((resolve) => {
    this.#e2eeSettle = resolve;
  });

  /**
   * One transaction's crypto data to the devices. Before the bot's device is open the
   * transaction is refused (its to-device messages would be lost; the homeserver retries it);
   * where the homeserver cannot host devices, nothing is done.
   * @throws Error while the device is being opened; what {@link EndToEndEncryption.ingest} throws
   */
  async #ingest(txnId: string, body: Record<string, unknown>): Promise<void> {
    if (this.#e2eePending) {
      // Held a while rather than refused: a refusal makes the homeserver back off from the appservice.
      const timeout = new Promise<void>((resolve) => setTimeout(resolve, E2EE_HOLD_MS).unref());
      await Promise.race([this.#e2eeSettled, timeout]);
    }
    if (this.#e2ee) return this.#e2ee.ingest(txnId, body);
    // Its room keys would be lost with the devices closing: the homeserver sends it again later.
    if (this.#e2eeStopping) throw new Error("appservice transaction while the bridge's crypto devices close: refused, the homeserver retries it");
    if (this.#e2eePending) throw new Error("appservice transaction before the bridge's crypto device is open: refused, the homeserver retries it");
  }

  /**
   * Who gets the room key of an event sent in `roomId`: its joined and invited members (an
   * invited user reads what is sent before they join, as clients share keys).
   * @throws the homeserver's error
   */
  async #keyRecipients(roomId: string, asUserId: string): Promise<string[]> {
    const path = `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/members?not_membership=leave`;
    const res = (await this.intent(asUserId).matrixClient.doRequest("GET", path)) as { chunk?: { state_key?: unknown; content?: { membership?: unknown } }[] };
    return (res.chunk ?? [])
      .filter((e) => e.content?.membership === "join" || e.content?.membership === "invite")
      .map((e) => e.state_key)
      .filter((u): u is string => typeof u === "string");
  }

  bridgesEncryptedRooms(): boolean {
    return this.#e2ee?.active ?? false;
  }

  /**
   * The clear event of an `m.room.encrypted` one, decrypted by the bot's device, with the
   * encrypted event's ID, room, sender and time; null when encryption is off, or the homeserver
   * does not push room keys (the start's probe did not come back): nothing to hand on.
   * @throws MissingRoomKeyError (temporary: retried from the journal) after telling the room
   *   once it has waited {@link MISSING_KEY_NOTICE_AFTER_MS}; UndecryptableEventError
   */
  async #decrypted(event: WeakEvent): Promise<WeakEvent | null> {
    if (!this.#e2ee) return null;
    if (!this.#e2ee.active && !this.#e2eeProbing) {
      // The homeserver does not push room keys to the bridge: this key will never come.
      log.debug("encrypted event not bridged: the homeserver does not push room keys to the appservice", { roomId: event.room_id, eventId: event.event_id });
      return null;
    }
    try {
      // Ghosts known to be in the room: a DM portal's events are decrypted by its ghost's device.
      const prefix = `${event.room_id}\n`;
      const ghosts = [...this.#joined].filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length)).filter((u) => u !== this.botUserId);
      const { event: clear } = await this.#e2ee.decrypt(event as unknown as Record<string, unknown>, ghosts);
      this.#waitingForKeys.delete(event.event_id);
      return { ...event, type: String(clear.type), content: (clear.content ?? {}) as Record<string, unknown> } as WeakEvent;
    } catch (err) {
      if (!(err instanceof MissingRoomKeyError)) throw err;
      const now = Date.now();
      const since = this.#waitingForKeys.get(event.event_id) ?? now;
      this.#waitingForKeys.set(event.event_id, since);
      if (now - since >= MISSING_KEY_NOTICE_AFTER_MS && !this.#toldMissingKeys.has(event.room_id)) {
        this.#toldMissingKeys.add(event.room_id);
        await this.botNotice(event.room_id, this.opts.e2ee!.notices.missingKeys);
      }
      throw err;
    }
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
    if (displayName && displayName !== previous) {
      await intent.setDisplayName(displayName);
      this.#roomState.forgetAllState();
    }
  }

  /**
   * Join `userId` (a ghost or the bot) to a room it is invited to or may join.
   * If the homeserver refuses (not invited), the bot invites it first when the bot is in the room.
   */
  async join(roomId: string, userId: string): Promise<void> {
    if (this.#joined.has(membershipKey(roomId, userId))) return;
    const client = this.intent(userId).matrixClient;
    try {
      await client.joinRoom(roomId);
    } catch (err) {
      if (errcodeOf(err) !== "M_FORBIDDEN" || userId === this.botUserId) throw err;
      await this.intent().matrixClient.inviteUser(userId, roomId);
      await client.joinRoom(roomId);
    } finally {
      this.#roomState.forgetMember(roomId, userId);
    }
    this.#rememberJoined(roomId, userId);
  }

  #rememberJoined(roomId: string, userId: string): void {
    const key = membershipKey(roomId, userId);
    this.#joined.delete(key);
    this.#joined.add(key);
    if (this.#joined.size > MAX_KNOWN_MEMBERSHIPS) this.#joined.delete(this.#joined.values().next().value!);
  }

  /**
   * Keep what the gateway remembers true, from an event an appservice transaction pushed (in
   * order): a state event replaces the cached state (./RoomStateCache.ts), and an
   * `m.room.member` event about one of the bridge's users (a kick, a ban, a join) its known
   * membership. Other events change nothing.
   * @param event a Matrix event as the homeserver pushed it (Client-Server event format)
   */
  noteEvent(event: { type?: unknown; room_id?: unknown; state_key?: unknown; content?: unknown }): void {
    this.#roomState.noteEvent(event);
    if (event.type !== "m.room.member" || typeof event.room_id !== "string" || typeof event.state_key !== "string") return;
    const membership = (event.content as { membership?: unknown } | undefined)?.membership;
    if (membership === "join") this.#rememberJoined(event.room_id, event.state_key);
    else this.#joined.delete(membershipKey(event.room_id, event.state_key));
  }

  /** `inviter` invites `invitee` to a room. */
  async invite(roomId: string, inviter: string, invitee: string): Promise<void> {
    try {
      await this.intent(inviter).matrixClient.inviteUser(invitee, roomId);
    } finally {
      this.#roomState.forgetMember(roomId, invitee);
    }
  }

  /** `userId` leaves (or rejects an invite to) a room. */
  async leave(roomId: string, userId: string, reason?: string): Promise<void> {
    this.#joined.delete(membershipKey(roomId, userId));
    try {
      await this.intent(userId).matrixClient.leaveRoom(roomId, reason);
    } finally {
      this.#roomState.forgetMember(roomId, userId);
    }
  }

  /**
   * Send an event as `userId`. A `txnId` makes the send idempotent (Client-Server API,
   * "Transaction identifiers"): a retry after a crash does not post twice.
   * @returns the event ID
   */
  async sendEvent(userId: string, roomId: string, type: string, content: Record<string, unknown>, txnId?: string): Promise<string> {
    try {
      return await this.#send(userId, roomId, type, content, txnId);
    } catch (err) {
      // Removed from the room since the bridge last joined it: join again, then send once more.
      if (errcodeOf(err) !== "M_FORBIDDEN" || !this.#joined.delete(membershipKey(roomId, userId))) throw err;
      log.info("a bridge user is no longer in the room; joining again", { roomId, userId });
      await this.join(roomId, userId);
      return this.#send(userId, roomId, type, content, txnId);
    }
  }

  async #send(userId: string, roomId: string, type: string, content: Record<string, unknown>, txnId?: string): Promise<string> {
    if (this.opts.e2ee?.enabled && (this.#e2ee || this.#e2eePending) && type !== "m.room.redaction" && (await this.isEncrypted(roomId, userId))) {
      // Never in plaintext into an encrypted room the bridge can serve: wait (a temporary
      // failure) until the device is open, and for the start's probe.
      if (!this.#e2ee) throw new Error(`room ${roomId} is encrypted and the bridge's crypto device is not open yet`);
      if (this.#e2eeProbing) await this.#e2eeProbe;
    }
    // Where the homeserver does not push room keys, nothing is encrypted, as before encryption support.
    if (this.#e2ee?.active && type !== "m.room.redaction" && (await this.isEncrypted(roomId, userId))) {
      // Encrypted by the sender's own device: a ghost's event under the bot's session would show a "mismatched sender" warning.
      const members = await this.#keyRecipients(roomId, userId);
      const visibility = await this.stateContent(roomId, "m.room.history_visibility", "", userId);
      content = await this.#e2ee.encrypt(userId, roomId, type, content, members, visibility?.history_visibility === "shared" || visibility?.history_visibility === "world_readable");
      type = "m.room.encrypted";
    }
    const client = this.intent(userId).matrixClient;
    if (!txnId) return client.sendEvent(roomId, type, content);
    const path = `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/${encodeURIComponent(type)}/${encodeURIComponent(txnId)}`;
    const res = (await client.doRequest("PUT", path, null, content)) as { event_id: string };
    return res.event_id;
  }

  /**
   * Upload media as `userId` (Client-Server API, "Content repository"): a Buffer sent as it is, a
   * stream as it is read (./mediaUpload.ts); returns an `mxc://` URI.
   * @throws MediaUploadError (judged by {@link classifyError}) or the network's error
   */
  async uploadContent(userId: string, data: Buffer | MediaStream, contentType: string, filename: string): Promise<string> {
    return uploadMedia({ homeserverUrl: this.opts.homeserverUrl, asToken: this.#asToken, userId, body: data, contentType, filename });
  }

  /** The bot posts an `m.notice`, optionally as a reply to `replyTo`. Errors are logged, not thrown. */
  async botNotice(roomId: string, text: string, replyTo?: string): Promise<void> {
    const content: Record<string, unknown> = { msgtype: "m.notice", body: text };
    if (replyTo) content["m.relates_to"] = { "m.in_reply_to": { event_id: replyTo } };
    try {
      await this.#send(this.botUserId, roomId, "m.room.message", content);
    } catch (err) {
      log.error("bridge bot could not post a notice", { roomId, ...errorFields(err) });
    }
  }

  /**
   * A ghost creates a DM room and invites a local user (Client-Server API, "Direct Messaging").
   * The ghost is the room's creator; the bot is not in it.
   * @param reason shown with the invite (the invite's `reason`, Client-Server API "m.room.member"):
   *   a preview of the mail that opens the DM. The invite is then sent as the member state event
   *   itself, so that it carries both `is_direct` and the reason.
   * @returns the new room ID
   */
  async createDm(ghostUserId: string, inviteeUserId: string, topic: string | null, reason?: string): Promise<string> {
    const client = this.intent(ghostUserId).matrixClient;
    const roomId = await client.createRoom({
      preset: "private_chat",
      is_direct: true,
      ...(reason ? {} : { invite: [inviteeUserId] }),
      ...(topic ? { topic } : {}),
      // With encrypted rooms bridged, a new DM is encrypted, as clients make them.
      ...(this.bridgesEncryptedRooms() ? { initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }] } : {}),
      // The ghost, as creator, has top power already (room v12+: implicitly; earlier: 100).
      power_level_content_override: { users: { [inviteeUserId]: 100 } },
    });
    this.#rememberJoined(roomId, ghostUserId);
    this.#roomState.forgetRoom(roomId);
    if (reason) await client.sendStateEvent(roomId, "m.room.member", inviteeUserId, { membership: "invite", is_direct: true, reason });
    return roomId;
  }

  /** Rooms the bot made as DMs with a user, by user (the bot's `m.direct` account data), once read. */
  #botDms: Map<string, string[]> | null = null;
  /** Calls of {@link botDm} in flight, by user: one DM is made per user, not one per call. */
  readonly #botDmCalls = new Map<string, Promise<string>>();

  /**
   * The bridge bot's DM with a local user: a room listed for the user in the bot's `m.direct`
   * account data (Client-Server API, "Direct Messaging") where the user is joined or invited,
   * that is not encrypted and not a portal; else a new unencrypted room the bot creates with `is_direct`, recorded
   * in `m.direct`.
   * @returns the room ID
   * @throws the homeserver's error when it cannot be asked
   */
  botDm(userId: string): Promise<string> {
    const inFlight = this.#botDmCalls.get(userId);
    if (inFlight) return inFlight;
    const call = this.#findOrCreateBotDm(userId).finally(() => this.#botDmCalls.delete(userId));
    this.#botDmCalls.set(userId, call);
    return call;
  }

  /**
   * Record `roomId` as the bot's DM with `userId` (first in its `m.direct` list), so that
   * {@link botDm} answers there: the room where the user talks to the bot.
   * @throws the homeserver's error when the account data cannot be read or written
   */
  async rememberBotDm(userId: string, roomId: string): Promise<void> {
    const dms = await this.#loadBotDms();
    const rooms = dms.get(userId) ?? [];
    if (rooms[0] === roomId) return;
    dms.set(userId, [roomId, ...rooms.filter((r) => r !== roomId)]);
    await this.intent().matrixClient.setAccountData("m.direct", Object.fromEntries(dms));
  }

  /** The bot's `m.direct` account data, read once (Client-Server API, "Direct Messaging"). */
  async #loadBotDms(): Promise<Map<string, string[]>> {
    if (!this.#botDms) {
      let map: Record<string, unknown> = {};
      try {
        map = (await this.intent().matrixClient.getAccountData("m.direct")) as Record<string, unknown>;
      } catch (err) {
        if (errcodeOf(err) !== "M_NOT_FOUND" && statusOf(err) !== 404) throw err;
      }
      this.#botDms = new Map(Object.entries(map).map(([user, rooms]) => [user, Array.isArray(rooms) ? rooms.filter((r): r is string => typeof r === "string") : []]));
    }
    return this.#botDms;
  }

  async #findOrCreateBotDm(userId: string): Promise<string> {
    const client = this.intent().matrixClient;
    const dms = await this.#loadBotDms();
    for (const roomId of dms.get(userId) ?? []) {
      // A room that became a portal (e.g. a room mailbox turned on while only the user and the
      // bot were in it) is no DM any more.
      if (await this.opts.sink.isPortalRoom(roomId)) continue;
      const bot = await this.stateContent(roomId, "m.room.member", this.botUserId).catch((err: unknown) => {
        if (errcodeOf(err) === "M_FORBIDDEN") return null; // the bot is no longer in it
        throw err;
      });
      if (bot?.membership !== "join") continue;
      const user = await this.stateContent(roomId, "m.room.member", userId);
      if ((user?.membership === "join" || user?.membership === "invite") && !(await this.isEncrypted(roomId))) return roomId;
    }
    const roomId = await client.createRoom({ preset: "private_chat", is_direct: true, invite: [userId] });
    this.#rememberJoined(roomId, this.botUserId);
    dms.set(userId, [roomId, ...(dms.get(userId) ?? [])]);
    await client.setAccountData("m.direct", Object.fromEntries(dms));
    log.info("bot DM created", { roomId, user: userId });
    return roomId;
  }

  /** The rooms `asUserId` is joined to (Client-Server API, `GET /joined_rooms`). */
  async joinedRooms(asUserId: string): Promise<string[]> {
    return this.intent(asUserId).matrixClient.getJoinedRooms();
  }

  /** The sender of the room's `m.room.create` event, read as `asUserId` (a member). */
  async roomCreator(roomId: string, asUserId: string): Promise<string> {
    const create = (await this.intent(asUserId).matrixClient.getRoomStateEventBody(roomId, "m.room.create", "")) as { sender: string };
    return create.sender;
  }

  /** Joined members of a room, read as `asUserId` (who must be in the room). */
  async joinedMembers(roomId: string, asUserId?: string): Promise<string[]> {
    return this.#roomState.members(roomId, () => this.intent(asUserId).matrixClient.getJoinedRoomMembers(roomId));
  }

  /**
   * A state event's content, or null when it is not set.
   * @param asUserId a member of the room (default: the bot)
   */
  async stateContent(roomId: string, type: string, stateKey: string, asUserId?: string): Promise<Record<string, unknown> | null> {
    return this.#roomState.state(roomId, type, stateKey, async () => {
      try {
        return (await this.intent(asUserId).matrixClient.getRoomStateEventContent(roomId, type, stateKey)) as Record<string, unknown>;
      } catch (err) {
        if (errcodeOf(err) === "M_NOT_FOUND") return null;
        throw err;
      }
    });
  }

  async roomEvent(roomId: string, eventId: string, asUserId?: string): Promise<{ sender: string; originServerTs: number; content: Record<string, unknown> } | null> {
    try {
      const ev = (await this.intent(asUserId).matrixClient.getEvent(roomId, eventId)) as { sender?: unknown; origin_server_ts?: unknown; content?: unknown };
      return {
        sender: typeof ev.sender === "string" ? ev.sender : "",
        originServerTs: typeof ev.origin_server_ts === "number" ? ev.origin_server_ts : 0,
        content: typeof ev.content === "object" && ev.content !== null ? (ev.content as Record<string, unknown>) : {},
      };
    } catch (err) {
      if (errcodeOf(err) === "M_NOT_FOUND" || statusOf(err) === 404) return null;
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

  /**
   * The display name of `userId` in a room (its `m.room.member` state, Client-Server API
   * "m.room.member"), else its global profile (`GET /profile/{userId}`), else the user ID.
   * A refusal (4xx: no such event or profile, or not readable by `asUserId`) falls through to
   * the next source; a homeserver that cannot answer now (5xx, 429, network; see
   * {@link classifyError}) is thrown, so that a mail waits and retries rather than going out
   * under the bare user ID because the homeserver was away for a moment.
   * @throws the homeserver's temporary failure
   */
  async displayName(roomId: string, userId: string, asUserId?: string): Promise<string> {
    const refused = (err: unknown): void => {
      if (this.classifyError(err).temporary) throw err;
    };
    try {
      const member = await this.stateContent(roomId, "m.room.member", userId, asUserId);
      if (typeof member?.displayname === "string" && member.displayname) return member.displayname;
    } catch (err) {
      refused(err);
    }
    try {
      const profile = (await this.intent().matrixClient.getUserProfile(userId)) as { displayname?: string };
      if (profile.displayname) return profile.displayname;
    } catch (err) {
      refused(err);
    }
    return userId;
  }

  #uploadLimit: Promise<number | null> | null = null;

  /**
   * `m.upload.size` of the homeserver (`GET /_matrix/client/v1/media/config`, authenticated
   * media, spec v1.11), asked once; null when the server sets no limit. A failed request is
   * not cached.
   * @throws the homeserver's error
   */
  uploadLimitBytes(): Promise<number | null> {
    this.#uploadLimit ??= (async () => {
      const res = (await this.intent().matrixClient.doRequest("GET", "/_matrix/client/v1/media/config")) as { "m.upload.size"?: unknown };
      const size = res["m.upload.size"];
      return typeof size === "number" && Number.isFinite(size) && size > 0 ? size : null;
    })();
    const pending = this.#uploadLimit;
    pending.catch(() => {
      if (this.#uploadLimit === pending) this.#uploadLimit = null;
    });
    return pending;
  }

  async downloadContent(mxc: string, maxBytes: number): Promise<{ tooLarge: false; data: Buffer; contentType: string | null } | { tooLarge: true }> {
    const res = await this.#mediaDownload(mxc);
    const declared = Number(res.headers.get("content-length"));
    if (Number.isFinite(declared) && declared > maxBytes) {
      await res.body?.cancel();
      return { tooLarge: true };
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of res.body ?? []) {
      size += chunk.length;
      // Leaving the loop cancels the body (the stream's async iterator returns).
      if (size > maxBytes) return { tooLarge: true };
      chunks.push(Buffer.from(chunk));
    }
    return { tooLarge: false, data: Buffer.concat(chunks, size), contentType: res.headers.get("content-type") };
  }

  /**
   * Start downloading media through the authenticated media API as the bot, for streaming it on
   * (the `/media/` links of the appservice listener): the body is not read here.
   * `contentLength` is the homeserver's `Content-Length` unless the response had a content
   * coding (fetch decodes it, so the length would not match).
   * @throws Error for an `mxc://` URI that is not one; the homeserver's error (shaped like
   *   matrix-bot-sdk's, see {@link classifyError}) when it refuses or cannot answer
   */
  async openContent(mxc: string): Promise<MediaContent> {
    const res = await this.#mediaDownload(mxc);
    const length = res.headers.get("content-length");
    const coded = (res.headers.get("content-encoding") ?? "identity").trim().toLowerCase() !== "identity";
    const contentLength = length !== null && /^\d{1,15}$/.test(length.trim()) && !coded ? Number(length) : null;
    const body = res.body ?? new ReadableStream<Uint8Array>({ start: (c) => c.close() });
    return { contentType: res.headers.get("content-type"), contentLength, body: body as MediaContent["body"] };
  }

  /**
   * `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}` (Client-Server API, "Content
   * repository", authenticated since v1.11) as the bot; the response once it is OK, body unread.
   * @throws Error for an `mxc://` URI that is not one; the homeserver's error for a non-2xx answer
   */
  async #mediaDownload(mxc: string): Promise<Response> {
    const m = /^mxc:\/\/([^/]+)\/([A-Za-z0-9_-]+)$/.exec(mxc);
    if (!m) throw new Error(`not an mxc:// URI: ${mxc.slice(0, 100)}`);
    const client = this.intent().matrixClient;
    const url = `${this.opts.homeserverUrl.replace(/\/+$/, "")}/_matrix/client/v1/media/download/${encodeURIComponent(m[1]!)}/${encodeURIComponent(m[2]!)}`;
    const res = await fetch(url, { headers: { authorization: `Bearer ${client.accessToken}` } });
    if (!res.ok) {
      const body = (await res.json().catch(() => ({}))) as { errcode?: unknown; error?: unknown };
      // Shaped like matrix-bot-sdk's errors, so classifyError judges it the same way.
      throw Object.assign(new Error(`media download failed: ${res.status} ${typeof body.error === "string" ? body.error : res.statusText}`), {
        statusCode: res.status,
        body,
        ...(typeof body.errcode === "string" ? { errcode: body.errcode } : {}),
      });
    }
    return res;
  }

  /**
   * Judge a failed request: see {@link HomeserverFailure}. matrix-bot-sdk's errors carry
   * `statusCode`, `errcode`/`body.errcode` and `retryAfterMs`; network failures carry a `code`.
   */
  classifyError(err: unknown): HomeserverFailure {
    const status = statusOf(err) ?? null;
    const errcode = errcodeOf(err) ?? null;
    const e = err as { retryAfterMs?: unknown; body?: { retry_after_ms?: unknown; error?: unknown }; message?: unknown; error?: unknown };
    const after = typeof e?.retryAfterMs === "number" ? e.retryAfterMs : typeof e?.body?.retry_after_ms === "number" ? e.body.retry_after_ms : null;
    const text = typeof e?.body?.error === "string" ? e.body.error : typeof e?.error === "string" ? e.error : typeof e?.message === "string" ? e.message : String(err);
    const message = [status, errcode, text].filter((x) => x !== null && x !== "").join(" ").replace(/\s+/g, " ").slice(0, 300);
    const temporary = status === null || status >= 500 || status === 429 || status === 408 || errcode === "M_LIMIT_EXCEEDED";
    return { temporary, retryAfterMs: after, status, errcode, message };
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
