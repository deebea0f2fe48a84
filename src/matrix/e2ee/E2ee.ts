/**
 * End-to-end-encrypted rooms (docs/encryption.md): the bridge's devices and what appservice
 * transactions bring for them.
 *
 * - The bot's device (ID `encryption.device_id`) is created through MSC4190 and cross-signed at
 *   first start. The bot is in every portal, so it receives every room key and decrypts what
 *   goes out by mail.
 * - Each ghost that posts into an encrypted room gets its own device, cross-signed, and its
 *   own crypto machine, kept in an LRU of `encryption.ghost_devices_in_memory` (an evicted
 *   ghost's state stays in the database and is read again when needed). Its events are
 *   encrypted with its own session, never the bot's.
 * - {@link EndToEndEncryption.ingest} runs for every appservice transaction before it is
 *   journaled and answered: (1) to-device events (MSC2409), device lists, one-time-key counts
 *   and unused fallback keys (MSC3202) are fed to the machines; (3) their outgoing requests are
 *   sent (one-time keys topped up, keys shared); (4) the state of every machine that took part
 *   is saved to the database. Step (2), decryption, happens when the journaled event is
 *   handled (./../MatrixGateway.ts): an event whose key has not arrived is retried from the
 *   journal (a temporary failure) until it has, never dropped.
 * - Persistence: each machine's IndexedDB store is snapshot, sealed with the store key and
 *   saved in `crypto_store` (./storeSnapshot.ts, migration 12). A device whose state is lost
 *   is deleted on the homeserver and made again (MSC4190 needs no user-interactive auth).
 * - Support: at start the bot sends its own device a to-device message
 *   ({@link EndToEndEncryption.probe}); when it comes back in a transaction, or a transaction
 *   carries MSC3202 key counts for the bot's device, the homeserver has the features and
 *   {@link EndToEndEncryption.active} turns true. Until then the bridge keeps out of encrypted
 *   rooms and encrypts nothing, as before encryption support.
 * - The crypto library (its WebAssembly and the in-memory IndexedDB, ~40 MiB of RSS) is loaded
 *   only when a machine is needed: once the homeserver turned out to support the features, or a
 *   transaction brought something for one of the bridge's devices. At start only the bot's device
 *   ID is settled (read from the saved state, or the device created keyless over MSC4190), which
 *   is all the probe needs. A homeserver without the features never loads it.
 */
import { createHmac, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { errorFields, getLogger } from "../../util/logger.ts";
import type { CryptoDevice, DecryptedEvent, DeviceChanges } from "./CryptoDevice.ts";
import { MissingRoomKeyError } from "./errors.ts";
import { E2eeHttpError, HomeserverApi } from "./homeserverApi.ts";

/** The crypto library and the state snapshots, loaded on first use (see the module comment). */
const cryptoLibrary = async () => ({ ...(await import("./CryptoDevice.ts")), ...(await import("./storeSnapshot.ts")) });

const log = getLogger("matrix/e2ee");

/** Where the sealed crypto state is kept: the bridge's store (`crypto_store`, migration 12). */
export interface CryptoStateStore {
  loadCryptoStore(userId: string): Promise<{ deviceId: string; state: Buffer } | null>;
  saveCryptoStore(userId: string, deviceId: string, state: Buffer): Promise<void>;
  deleteCryptoStore(userId: string): Promise<void>;
}

/** Options of {@link EndToEndEncryption.start}. */
export interface E2eeOptions {
  homeserverUrl: string;
  /** The registration's `as_token`. */
  asToken: string;
  botUserId: string;
  /** Device ID of the bot's and the ghosts' devices. */
  deviceId: string;
  /** Display name of the bot's device. */
  deviceDisplayName: string;
  /** 32-byte key sealing the saved state; see {@link storeKeyFrom}. */
  storeKey: Buffer;
  state: CryptoStateStore;
  /** Ghost machines kept in memory (>= 1). */
  ghostsInMemory: number;
}

/** The homeserver cannot host the bridge's devices (no MSC4190 in it or in the registration). */
export class E2eeUnavailableError extends Error {
  override name = "E2eeUnavailableError";
}

/**
 * The key that seals the crypto state: the configured one (base64 of 32 bytes), else one
 * derived from the `as_token` (HMAC-SHA-256), so encryption works with no extra setting.
 * @param configured base64 text from `encryption.store_key_file` / `store_key_env`, or null
 * @throws Error when the configured key is not base64 of 32 bytes (the config load checks this first)
 */
export function storeKeyFrom(configured: string | null, asToken: string): Buffer {
  if (configured === null) return createHmac("sha256", asToken).update("matrix-email-bridge crypto_store").digest();
  const key = Buffer.from(configured.trim(), "base64");
  if (key.length !== 32) throw new Error(`the crypto store key holds ${key.length} bytes; it must be 32 (openssl rand -base64 32)`);
  return key;
}

/**
 * The configured store key's text: the file's content, else the environment variable's, else
 * null (no key configured: {@link storeKeyFrom} derives one).
 * @param file `encryption.store_key_file` (absolute), or null
 * @param envName `encryption.store_key_env`, or null
 * @throws Error naming the file when it cannot be read, or the variable when it is not set
 */
export function readStoreKey(file: string | null, envName: string | null, env: NodeJS.ProcessEnv = process.env): string | null {
  if (file !== null) return readFileSync(file, "utf8");
  if (envName === null) return null;
  const value = env[envName];
  if (value === undefined || value.trim() === "") throw new Error(`environment variable ${envName} (encryption.store_key_env) is not set`);
  return value;
}

/** Type of the to-device message {@link EndToEndEncryption.probe} sends the bot's own device. */
const PROBE_TYPE = "io.github.matrix-email-bridge.probe";

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** `body[key]` under the first of `keys` the body has. */
function pick(body: Record<string, unknown>, keys: string[]): unknown {
  for (const k of keys) if (k in body) return body[k];
  return undefined;
}

/** The bridge's devices and their crypto machines. */
export class EndToEndEncryption {
  readonly #opts: E2eeOptions;
  readonly #api: HomeserverApi;
  /** The bot's device ID on the homeserver (settled at start). */
  readonly #botDeviceId: string;
  /** Whether the bot's device was made keyless at this start and has no saved state yet. */
  readonly #botFresh: boolean;
  /** The bot's crypto machine, once loaded ({@link #botDevice}). */
  #bot: Promise<CryptoDevice> | null = null;
  /** Loaded ghost devices, least recently used first. */
  readonly #ghosts = new Map<string, Promise<CryptoDevice>>();
  #supported = false;
  readonly #roomKeyListeners: (() => void)[] = [];
  /**
   * Which of the bridge's users got room keys for a room (in memory): a DM portal has a ghost
   * but not the bot, so its events are decrypted by the ghost's device.
   */
  readonly #keyHolders = new Map<string, Set<string>>();

  private constructor(opts: E2eeOptions, api: HomeserverApi, botDeviceId: string, botFresh: boolean) {
    this.#opts = opts;
    this.#api = api;
    this.#botDeviceId = botDeviceId;
    this.#botFresh = botFresh;
  }

  /**
   * The bot's crypto machine, loaded on first use: from its saved state, or (a device made
   * keyless at this start) with new keys uploaded, cross-signed and saved.
   * @throws the crypto library's, the homeserver's or the store's error (the next call tries again)
   */
  #botDevice(): Promise<CryptoDevice> {
    if (!this.#bot) {
      const opening = openDevice(this.#api, this.#opts, this.#opts.botUserId, this.#opts.deviceDisplayName, this.#botFresh ? this.#botDeviceId : null).then(({ device }) => {
        this.#watch(device);
        log.info("bot crypto machine loaded", { userId: device.userId, deviceId: device.deviceId });
        return device;
      });
      this.#bot = opening;
      opening.catch(() => {
        if (this.#bot === opening) this.#bot = null;
      });
    }
    return this.#bot;
  }

  /** Note the rooms a device gets keys for, and tell the listeners. */
  #watch(device: CryptoDevice): void {
    device.onRoomKeys((roomIds) => {
      for (const roomId of roomIds) this.#holds(roomId, device.userId);
      for (const l of this.#roomKeyListeners) l();
    });
  }

  #holds(roomId: string, userId: string): void {
    let users = this.#keyHolders.get(roomId);
    if (!users) {
      users = new Set();
      this.#keyHolders.set(roomId, users);
      // Bounded: the oldest room is forgotten first (a miss only means trying the bot first).
      if (this.#keyHolders.size > 100_000) this.#keyHolders.delete(this.#keyHolders.keys().next().value!);
    }
    users.add(userId);
  }

  /**
   * Open (or create) the bot's device: restore its saved state, or delete any device of that
   * ID on the homeserver and create it anew (MSC4190), upload its keys and cross-sign it.
   * @throws E2eeUnavailableError when the homeserver refuses to create the device (no MSC4190);
   *   SnapshotSealError when the saved state cannot be opened with the key; E2eeHttpError or
   *   the fetch error when the homeserver fails otherwise
   */
  static async start(opts: E2eeOptions): Promise<EndToEndEncryption> {
    const api = new HomeserverApi(opts.homeserverUrl, opts.asToken);
    const saved = await opts.state.loadCryptoStore(opts.botUserId);
    const made = saved ? null : await makeDevice(api, opts, opts.botUserId, opts.deviceDisplayName);
    const deviceId = saved?.deviceId ?? made!.deviceId;
    log.info("bot device ready", { userId: opts.botUserId, deviceId });
    const e2ee = new EndToEndEncryption(opts, api, deviceId, made !== null);
    e2ee.replacedBotDevice = made?.replaced ?? false;
    return e2ee;
  }

  /**
   * Whether the bot's device was made anew at this start in place of one whose state was lost
   * (messages encrypted for the old one cannot be read): the rooms should be told.
   */
  replacedBotDevice = false;

  /** The bot's device ID (`encryption.device_id`, with a suffix when it was made anew after a loss). */
  get botDeviceId(): string {
    return this.#botDeviceId;
  }

  /** Whether encrypted rooms are bridged: the bot's device is ready and the homeserver pushes MSC3202 key counts for it. */
  get active(): boolean {
    return this.#supported;
  }

  #probeNonce: string | null = null;
  #probed: (() => void) | null = null;
  #probeCancel: (() => void) | null = null;

  /**
   * Find out whether the homeserver pushes to-device messages and key counts to the
   * appservice (MSC2409 and MSC3202 turned on in Synapse's `experimental_features`): the bot
   * sends its own device a to-device message and waits for it to come back in a transaction
   * (which then also carries the bot's one-time-key counts). Transactions must be received
   * meanwhile. Sets {@link active}.
   * @param timeoutMs how long to wait, in ms
   * @returns whether it came back in time
   * @throws E2eeHttpError / fetch errors when the message cannot be sent
   */
  async probe(timeoutMs: number): Promise<boolean> {
    if (this.#supported) return true;
    const nonce = randomBytes(16).toString("hex");
    this.#probeNonce = nonce;
    const back = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      timer.unref();
      this.#probed = () => {
        clearTimeout(timer);
        resolve(true);
      };
      this.#probeCancel = () => {
        clearTimeout(timer);
        resolve(false);
      };
    });
    const body = { messages: { [this.#opts.botUserId]: { [this.#botDeviceId]: { nonce } } } };
    await this.#api.request("PUT", `/_matrix/client/v3/sendToDevice/${encodeURIComponent(PROBE_TYPE)}/probe-${nonce}`, { userId: this.#opts.botUserId }, body);
    const ok = await back;
    this.#probed = null;
    if (ok) this.#supported = true;
    // Supported: the machine is needed from now on (keys uploaded before anyone encrypts for it).
    if (this.#supported) await this.#track(() => this.#botDevice());
    return this.#supported;
  }

  /** Call `cb` when room keys arrive at the bot (events waiting for them may decrypt now). */
  onRoomKeys(cb: () => void): void {
    this.#roomKeyListeners.push(cb);
  }

  /**
   * Feed one appservice transaction's crypto data to the devices it names, send their
   * outgoing requests and save their state (see the module comment). Call before the
   * transaction is journaled; a throw refuses the transaction (the homeserver retries it).
   * @param body the transaction body (already known to be a JSON object)
   * @throws the crypto library's error, or the store's when the state cannot be saved
   */
  ingest(txnId: string, body: Record<string, unknown>): Promise<void> {
    return this.#track(() => this.#ingest(txnId, body));
  }

  /** Operations under way that may save state; {@link stop} waits for them. */
  readonly #inFlight = new Set<Promise<unknown>>();
  #stopping = false;

  /**
   * Run `fn` as an operation {@link stop} waits for.
   * @throws Error once stopping has begun (nothing would be saved)
   */
  #track<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#stopping) return Promise.reject(new Error("the bridge's crypto devices are closing"));
    const run = fn();
    this.#inFlight.add(run);
    void run.catch(() => undefined).finally(() => this.#inFlight.delete(run));
    return run;
  }

  async #ingest(txnId: string, body: Record<string, unknown>): Promise<void> {
    const toDevice = pick(body, ["de.sorunome.msc2409.to_device", "org.matrix.msc2409.to_device", "to_device"]);
    const counts = pick(body, ["org.matrix.msc3202.device_one_time_keys_count", "org.matrix.msc3202.device_one_time_key_counts", "device_one_time_keys_count"]);
    const fallback = pick(body, ["org.matrix.msc3202.device_unused_fallback_key_types", "device_unused_fallback_key_types"]);
    const lists = pick(body, ["org.matrix.msc3202.device_lists", "device_lists"]);
    const prefix = this.#opts.deviceId;
    const ours = (id: unknown): id is string => typeof id === "string" && (id === prefix || id.startsWith(`${prefix}_`));
    if (!this.#supported && isObject(counts) && isObject(counts[this.#opts.botUserId])) {
      this.#supported = true;
      log.info("homeserver sends device data in transactions: encrypted rooms are bridged", { txnId });
    }
    /** Per user, what the transaction holds for each of the user's devices that may be ours. */
    const perUser = new Map<string, { toDevice: Record<string, unknown>[]; counts: Record<string, unknown>; fallback: Record<string, unknown> }>();
    const of = (userId: string) => {
      let c = perUser.get(userId);
      if (!c) {
        c = { toDevice: [], counts: {}, fallback: {} };
        perUser.set(userId, c);
      }
      return c;
    };
    for (const e of Array.isArray(toDevice) ? toDevice : []) {
      if (!isObject(e) || typeof e.to_user_id !== "string" || !ours(e.to_device_id)) continue;
      if (e.type === PROBE_TYPE && e.to_user_id === this.#opts.botUserId) {
        if (isObject(e.content) && e.content.nonce === this.#probeNonce) this.#probed?.();
        continue;
      }
      of(e.to_user_id).toDevice.push(e);
    }
    for (const [map, key] of [[counts, "counts"], [fallback, "fallback"]] as const) {
      if (!isObject(map)) continue;
      for (const [userId, devices] of Object.entries(map)) {
        if (!isObject(devices)) continue;
        for (const [id, value] of Object.entries(devices)) if (ours(id)) of(userId)[key][id] = value;
      }
    }
    const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((u): u is string => typeof u === "string") : []);
    const changed = isObject(lists) ? strings(lists.changed) : [];
    const left = isObject(lists) ? strings(lists.left) : [];
    if (changed.length > 0 || left.length > 0) {
      // Device list changes concern every machine that tracks users: the loaded ones.
      of(this.#opts.botUserId);
      for (const userId of this.#ghosts.keys()) of(userId);
    }
    const touched: { device: CryptoDevice; changed: boolean }[] = [];
    for (const [userId, raw] of perUser) {
      const device = userId === this.#opts.botUserId ? await this.#botDevice() : await this.#ghost(userId, false);
      if (!device) {
        if (raw.toDevice.length > 0) log.debug("to-device events for a ghost without a device: ignored", { txnId, userId, count: raw.toDevice.length });
        continue;
      }
      // Only what is for this device: a replaced device's leftovers are not.
      const count = raw.counts[device.deviceId];
      const unused = raw.fallback[device.deviceId];
      const c: DeviceChanges = {
        toDevice: raw.toDevice.filter((e) => e.to_device_id === device.deviceId),
        changed,
        left,
        oneTimeKeyCounts: isObject(count) ? Object.fromEntries(Object.entries(count).filter((kv): kv is [string, number] => typeof kv[1] === "number")) : null,
        unusedFallbackKeys: Array.isArray(unused) ? unused.filter((a): a is string => typeof a === "string") : null,
      };
      await device.receive(c);
      touched.push({ device, changed: c.toDevice.length > 0 || changed.length > 0 || left.length > 0 });
    }
    for (const t of touched) if ((await t.device.flush()).sent > 0) t.changed = true;
    // Saved when the machine may have changed: to-device events (room keys, sessions), device
    // lists, or requests answered (key uploads, queries). A bare key count changes nothing.
    for (const t of touched) if (t.changed) await this.#save(t.device);
  }

  /**
   * Decrypt an `m.room.encrypted` event with the device that got its room key: the bot's, else
   * a ghost's that got keys for the room or is one of `members` (a DM portal has no bot).
   * @param members the bridge's users known to be in the room (ghosts), tried after the bot
   * @throws MissingRoomKeyError when no device has the key yet (retry when keys arrive);
   *   UndecryptableEventError when it can never be decrypted
   */
  async decrypt(event: Record<string, unknown>, members: string[] = []): Promise<DecryptedEvent> {
    const roomId = String(event.room_id);
    const ghosts = new Set([...(this.#keyHolders.get(roomId) ?? []), ...members]);
    ghosts.delete(this.#opts.botUserId);
    let missing: unknown;
    try {
      return await (await this.#botDevice()).decrypt(event);
    } catch (err) {
      if (!(err instanceof MissingRoomKeyError)) throw err;
      missing = err;
    }
    for (const userId of ghosts) {
      const device = await this.#ghost(userId, false);
      if (!device) continue;
      try {
        return await device.decrypt(event);
      } catch (err) {
        if (!(err instanceof MissingRoomKeyError)) throw err;
      }
    }
    throw missing;
  }

  /**
   * Encrypt a room event as `userId` (the bot or a ghost, each with its own device, made on
   * first use) for `members`, and save that device's state.
   * @returns the `m.room.encrypted` content
   * @throws E2eeHttpError / fetch errors when keys cannot be exchanged; the store's error
   */
  encrypt(userId: string, roomId: string, type: string, content: Record<string, unknown>, members: string[], historyShared: boolean): Promise<Record<string, unknown>> {
    return this.#track(() => this.#encrypt(userId, roomId, type, content, members, historyShared));
  }

  async #encrypt(userId: string, roomId: string, type: string, content: Record<string, unknown>, members: string[], historyShared: boolean): Promise<Record<string, unknown>> {
    const device = userId === this.#opts.botUserId ? await this.#botDevice() : await this.#ghost(userId, true);
    if (!device) throw new Error(`no device for ${userId}`);
    const all = members.includes(userId) ? members : [...members, userId];
    const encrypted = await device.encrypt(roomId, type, content, all, historyShared);
    this.#holds(roomId, userId);
    await this.#save(device);
    return encrypted;
  }

  /** Save every loaded device's state and close the machines. Errors are logged, once each. */
  async stop(): Promise<void> {
    this.#probeCancel?.();
    this.#stopping = true;
    // A transaction or a send under way saves its state first; later ones are refused.
    await Promise.allSettled([...this.#inFlight]);
    const loaded = [...(this.#bot ? [this.#bot] : []), ...this.#ghosts.values()];
    const devices = (await Promise.allSettled(loaded)).flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    this.#ghosts.clear();
    for (const d of devices) {
      try {
        await this.#save(d);
      } catch (err) {
        log.error("crypto state not saved at stop", { userId: d.userId, ...errorFields(err) });
      }
      await d.close();
    }
  }

  /** Seal and save a device's state. @throws the store's error */
  async #save(device: CryptoDevice): Promise<void> {
    const { sealSnapshot } = await cryptoLibrary();
    const sealed = sealSnapshot(await device.snapshot(), device.userId, this.#opts.storeKey);
    await this.#opts.state.saveCryptoStore(device.userId, device.deviceId, sealed);
  }

  /**
   * A ghost's device: from memory, else from the database, else (with `create`) made now.
   * Keeps at most `ghostsInMemory` loaded, evicting the least recently used (saved first).
   * @returns null when the ghost has no device and `create` is false
   */
  async #ghost(userId: string, create: boolean): Promise<CryptoDevice | null> {
    const loaded = this.#ghosts.get(userId);
    if (loaded) {
      this.#ghosts.delete(userId);
      this.#ghosts.set(userId, loaded);
      return loaded;
    }
    if (!create && !(await this.#opts.state.loadCryptoStore(userId))) return null;
    const opening = openDevice(this.#api, this.#opts, userId, "Email bridge", null, create).then(({ device: d, replaced }) => {
      if (replaced) log.warn("a ghost's device was made anew: its crypto state was lost", { userId, deviceId: d.deviceId });
      this.#watch(d);
      return d;
    });
    this.#ghosts.set(userId, opening);
    opening.catch(() => {
      if (this.#ghosts.get(userId) === opening) this.#ghosts.delete(userId);
    });
    while (this.#ghosts.size > this.#opts.ghostsInMemory) {
      const [oldId, old] = this.#ghosts.entries().next().value!;
      this.#ghosts.delete(oldId);
      void old
        .then(async (d) => {
          await this.#save(d);
          await d.close();
        })
        .catch((err: unknown) => log.error("evicted ghost device not saved", { userId: oldId, ...errorFields(err) }));
    }
    return opening;
  }
}

/**
 * Open `userId`'s device from its saved state; without one, make it ({@link makeDevice}, or
 * take `madeKeyless`, a device {@link makeDevice} made earlier), then upload its keys,
 * cross-sign it and save it. Loads the crypto library.
 * @param madeKeyless the ID of a device made keyless at this start (the bot's), or null
 * @param create whether to make a device when none is saved (ghosts that never posted: false)
 * @returns the device, and whether it replaced one whose state was lost
 * @throws E2eeUnavailableError when the device cannot be created (no MSC4190); else as
 *   {@link EndToEndEncryption.start}
 */
async function openDevice(
  api: HomeserverApi,
  opts: E2eeOptions,
  userId: string,
  displayName: string,
  madeKeyless: string | null,
  create = true,
): Promise<{ device: CryptoDevice; replaced: boolean }> {
  const { CryptoDevice, openSnapshot, sealSnapshot } = await cryptoLibrary();
  const row = await opts.state.loadCryptoStore(userId);
  if (row) return { device: await CryptoDevice.open(userId, row.deviceId, api, openSnapshot(row.state, userId, opts.storeKey)), replaced: false };
  if (!create) throw new Error(`no saved device for ${userId}`);
  const { deviceId, replaced } = madeKeyless !== null ? { deviceId: madeKeyless, replaced: false } : await makeDevice(api, opts, userId, displayName);
  const device = await CryptoDevice.open(userId, deviceId, api, null);
  if ((await device.flush()).failed > 0) throw new Error(`the keys of ${userId}'s new device could not be uploaded`);
  await device.bootstrapCrossSigning();
  const sealed = sealSnapshot(await device.snapshot(), userId, opts.storeKey);
  await opts.state.saveCryptoStore(userId, deviceId, sealed);
  log.info("device created", { userId, deviceId });
  return { device, replaced };
}

/**
 * Make a device for `userId` on the homeserver (MSC4190), without keys, for a user with no saved
 * crypto state. The bridge's earlier devices of that user are deleted: those with keys had
 * state that is lost now (clients refuse new keys under a device ID they knew with other keys,
 * so the new device gets a new ID, `<deviceId>_<random>`); a keyless one (made at an earlier
 * start whose homeserver never supported the features) is simply used again.
 * @returns the device ID, and whether it replaced a device whose state was lost
 * @throws E2eeUnavailableError when the homeserver refuses to manage devices (no MSC4190);
 *   E2eeHttpError / fetch errors otherwise
 */
async function makeDevice(api: HomeserverApi, opts: E2eeOptions, userId: string, displayName: string): Promise<{ deviceId: string; replaced: boolean }> {
  try {
    const old = (await api.listDevices(userId)).filter((id) => id === opts.deviceId || id.startsWith(`${opts.deviceId}_`));
    const keyed = old.length > 0 ? await devicesWithKeys(api, userId, old) : new Set<string>();
    if (keyed.size === 0 && old.includes(opts.deviceId)) {
      for (const id of old) if (id !== opts.deviceId) await api.deleteDevice(userId, id);
      return { deviceId: opts.deviceId, replaced: false };
    }
    let deviceId = opts.deviceId;
    let replaced = false;
    if (old.length > 0) {
      replaced = keyed.size > 0;
      deviceId = `${opts.deviceId}_${randomBytes(4).toString("hex").toUpperCase()}`;
      if (replaced) log.warn("crypto state lost: the old devices are deleted and a new one is made", { userId, old, deviceId });
      for (const id of old) await api.deleteDevice(userId, id);
    }
    await api.createDevice(userId, deviceId, displayName);
    return { deviceId, replaced };
  } catch (err) {
    if (err instanceof E2eeHttpError && err.statusCode >= 400 && err.statusCode < 500) {
      throw new E2eeUnavailableError(`the homeserver does not let the appservice manage devices (MSC4190, io.element.msc4190 in the registration): ${err.message}`);
    }
    throw err;
  }
}

/**
 * Which of `deviceIds` have identity keys published (Client-Server API `POST /keys/query`).
 * @throws E2eeHttpError / fetch errors
 */
async function devicesWithKeys(api: HomeserverApi, userId: string, deviceIds: string[]): Promise<Set<string>> {
  const answer: unknown = JSON.parse(await api.request("POST", "/_matrix/client/v3/keys/query", { userId }, { device_keys: { [userId]: deviceIds } }));
  const mine = isObject(answer) && isObject(answer.device_keys) ? answer.device_keys[userId] : undefined;
  return new Set(isObject(mine) ? Object.keys(mine).filter((id) => deviceIds.includes(id)) : []);
}
