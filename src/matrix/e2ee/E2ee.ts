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
 * - Support: the homeserver supports all this when it sends MSC3202 key counts for the bot's
 *   device: every transaction does once `msc3202_transaction_extensions` is on. Until then
 *   {@link EndToEndEncryption.active} is false and the bridge keeps out of encrypted rooms.
 */
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { errorFields, getLogger } from "../../util/logger.ts";
import { CryptoDevice, MissingRoomKeyError, type DecryptedEvent, type DeviceChanges } from "./CryptoDevice.ts";
import { E2eeHttpError, HomeserverApi } from "./homeserverApi.ts";
import { openSnapshot, sealSnapshot } from "./storeSnapshot.ts";

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
  readonly #bot: CryptoDevice;
  /** Loaded ghost devices, least recently used first. */
  readonly #ghosts = new Map<string, Promise<CryptoDevice>>();
  #supported = false;
  readonly #roomKeyListeners: (() => void)[] = [];
  /**
   * Which of the bridge's users got room keys for a room (in memory): a DM portal has a ghost
   * but not the bot, so its events are decrypted by the ghost's device.
   */
  readonly #keyHolders = new Map<string, Set<string>>();

  private constructor(opts: E2eeOptions, api: HomeserverApi, bot: CryptoDevice) {
    this.#opts = opts;
    this.#api = api;
    this.#bot = bot;
    this.#watch(bot);
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
    const bot = await openDevice(api, opts, opts.botUserId, opts.deviceDisplayName, true);
    log.info("bot device ready", { userId: opts.botUserId, deviceId: opts.deviceId });
    return new EndToEndEncryption(opts, api, bot);
  }

  /** Whether encrypted rooms are bridged: the bot's device is ready and the homeserver pushes MSC3202 key counts for it. */
  get active(): boolean {
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
  async ingest(txnId: string, body: Record<string, unknown>): Promise<void> {
    const toDevice = pick(body, ["de.sorunome.msc2409.to_device", "org.matrix.msc2409.to_device", "to_device"]);
    const counts = pick(body, ["org.matrix.msc3202.device_one_time_keys_count", "org.matrix.msc3202.device_one_time_key_counts", "device_one_time_keys_count"]);
    const fallback = pick(body, ["org.matrix.msc3202.device_unused_fallback_key_types", "device_unused_fallback_key_types"]);
    const lists = pick(body, ["org.matrix.msc3202.device_lists", "device_lists"]);
    const deviceId = this.#opts.deviceId;
    if (!this.#supported && isObject(counts) && isObject(counts[this.#opts.botUserId])) {
      this.#supported = true;
      log.info("homeserver sends device data in transactions: encrypted rooms are bridged", { txnId });
    }
    const perUser = new Map<string, DeviceChanges>();
    const changesOf = (userId: string): DeviceChanges => {
      let c = perUser.get(userId);
      if (!c) {
        c = { toDevice: [], changed: [], left: [], oneTimeKeyCounts: null, unusedFallbackKeys: null };
        perUser.set(userId, c);
      }
      return c;
    };
    for (const e of Array.isArray(toDevice) ? toDevice : []) {
      if (!isObject(e) || typeof e.to_user_id !== "string" || e.to_device_id !== deviceId) continue;
      changesOf(e.to_user_id).toDevice.push(e);
    }
    if (isObject(counts)) {
      for (const [userId, devices] of Object.entries(counts)) {
        const mine = isObject(devices) ? devices[deviceId] : undefined;
        if (isObject(mine)) changesOf(userId).oneTimeKeyCounts = Object.fromEntries(Object.entries(mine).filter((kv): kv is [string, number] => typeof kv[1] === "number"));
      }
    }
    if (isObject(fallback)) {
      for (const [userId, devices] of Object.entries(fallback)) {
        const mine = isObject(devices) ? devices[deviceId] : undefined;
        if (Array.isArray(mine)) changesOf(userId).unusedFallbackKeys = mine.filter((a): a is string => typeof a === "string");
      }
    }
    const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((u): u is string => typeof u === "string") : []);
    const changed = isObject(lists) ? strings(lists.changed) : [];
    const left = isObject(lists) ? strings(lists.left) : [];
    if (changed.length > 0 || left.length > 0) {
      // Device list changes concern every machine that tracks users: the loaded ones.
      changesOf(this.#opts.botUserId);
      for (const userId of this.#ghosts.keys()) changesOf(userId);
    }
    const touched: CryptoDevice[] = [];
    for (const [userId, c] of perUser) {
      c.changed = changed;
      c.left = left;
      const device = userId === this.#opts.botUserId ? this.#bot : await this.#ghost(userId, false);
      if (!device) {
        if (c.toDevice.length > 0) log.debug("to-device events for a ghost without a device: ignored", { txnId, userId, count: c.toDevice.length });
        continue;
      }
      await device.receive(c);
      touched.push(device);
    }
    for (const device of touched) await device.flush();
    for (const device of touched) await this.#save(device);
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
      return await this.#bot.decrypt(event);
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
  async encrypt(userId: string, roomId: string, type: string, content: Record<string, unknown>, members: string[], historyShared: boolean): Promise<Record<string, unknown>> {
    const device = userId === this.#opts.botUserId ? this.#bot : await this.#ghost(userId, true);
    if (!device) throw new Error(`no device for ${userId}`);
    const all = members.includes(userId) ? members : [...members, userId];
    const encrypted = await device.encrypt(roomId, type, content, all, historyShared);
    this.#holds(roomId, userId);
    await this.#save(device);
    return encrypted;
  }

  /** Save every loaded device's state and close the machines. Errors are logged, once each. */
  async stop(): Promise<void> {
    const devices = [this.#bot, ...(await Promise.allSettled(this.#ghosts.values())).flatMap((r) => (r.status === "fulfilled" ? [r.value] : []))];
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
    const opening = openDevice(this.#api, this.#opts, userId, "Email bridge", create).then((d) => {
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
 * Open `userId`'s device from its saved state; without one, (re)make it: delete any device of
 * that ID on the homeserver (its keys are unknown now), create it, upload its keys,
 * cross-sign it and save it.
 * @throws E2eeUnavailableError when the device cannot be created (no MSC4190); else as
 *   {@link EndToEndEncryption.start}
 */
async function openDevice(api: HomeserverApi, opts: E2eeOptions, userId: string, displayName: string, create: boolean): Promise<CryptoDevice> {
  const row = await opts.state.loadCryptoStore(userId);
  if (row && row.deviceId === opts.deviceId) {
    return CryptoDevice.open(userId, row.deviceId, api, openSnapshot(row.state, userId, opts.storeKey));
  }
  if (!create) throw new Error(`no saved device for ${userId}`);
  if (row) log.warn("saved crypto state is for another device ID: the device is made again", { userId, saved: row.deviceId, deviceId: opts.deviceId });
  try {
    await api.deleteDevice(userId, opts.deviceId);
    await api.createDevice(userId, opts.deviceId, displayName);
  } catch (err) {
    if (err instanceof E2eeHttpError && err.statusCode >= 400 && err.statusCode < 500) {
      throw new E2eeUnavailableError(`the homeserver does not let the appservice manage devices (MSC4190, io.element.msc4190 in the registration): ${err.message}`);
    }
    throw err;
  }
  const device = await CryptoDevice.open(userId, opts.deviceId, api, null);
  if ((await device.flush()) > 0) throw new Error(`the keys of ${userId}'s new device could not be uploaded`);
  await device.bootstrapCrossSigning();
  const sealed = sealSnapshot(await device.snapshot(), userId, opts.storeKey);
  await opts.state.saveCryptoStore(userId, opts.deviceId, sealed);
  log.info("device created", { userId, deviceId: opts.deviceId });
  return device;
}
