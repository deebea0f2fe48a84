/**
 * One Matrix device of the bridge (the bot's, or one ghost's) and its crypto machine
 * (`OlmMachine` of `@matrix-org/matrix-sdk-crypto-wasm`, used directly: no native binding, no
 * matrix-bot-sdk crypto). It takes what the homeserver pushes for the device (to-device
 * events, device list changes, one-time-key counts, unused fallback keys; MSC2409, MSC3202),
 * sends the machine's outgoing requests as the device ({@link HomeserverApi}), decrypts room
 * events (bot) and encrypts room events (each ghost with its own device: an event sent by a
 * ghost but encrypted by the bot's session shows a "mismatched sender" warning to clients).
 *
 * The machine's operations on one device run one at a time (a promise chain): key sharing,
 * request flushing and snapshots must not interleave.
 */
import {
  CollectStrategy,
  DecryptionErrorCode,
  DecryptionSettings,
  DeviceId,
  DeviceLists,
  EncryptionSettings,
  HistoryVisibility,
  OlmMachine,
  RequestType,
  RoomId,
  TrustRequirement,
  UserId,
  type MegolmDecryptionError,
} from "@matrix-org/matrix-sdk-crypto-wasm";
import { errorFields, getLogger } from "../../util/logger.ts";
import type { Actor, HomeserverApi } from "./homeserverApi.ts";
import { dropStore, restoreSnapshot, takeSnapshot, type StoreSnapshot } from "./storeSnapshot.ts";

const log = getLogger("matrix/e2ee");

import { MissingRoomKeyError, UndecryptableEventError } from "./errors.ts";
export { MissingRoomKeyError, UndecryptableEventError };

/** What the homeserver pushed for one device in one transaction. */
export interface DeviceChanges {
  /** To-device events addressed to the device (`to_user_id`/`to_device_id` already checked). */
  toDevice: Record<string, unknown>[];
  /** Users whose devices changed, and users the bridge no longer shares an encrypted room with (MSC3202 `device_lists`). */
  changed: string[];
  left: string[];
  /** One-time keys left on the server, by algorithm; null when the transaction had none for the device. */
  oneTimeKeyCounts: Record<string, number> | null;
  /** Fallback key algorithms not used yet; null when the transaction did not say. */
  unusedFallbackKeys: string[] | null;
}

/** An event decrypted by the bot's device. */
export interface DecryptedEvent {
  /** The clear event (`type`, `content`, `event_id`, `room_id`, `sender` …), as the machine returns it. */
  event: Record<string, unknown>;
  /** The device the session was established with, when known. */
  senderDevice: string | null;
}

/** One device of the bridge and its crypto machine. */
export class CryptoDevice {
  readonly userId: string;
  readonly deviceId: string;
  /** The IndexedDB store name the machine keeps its state under. */
  readonly storeName: string;
  readonly #machine: OlmMachine;
  readonly #api: HomeserverApi;
  #chain: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(userId: string, deviceId: string, storeName: string, machine: OlmMachine, api: HomeserverApi) {
    this.userId = userId;
    this.deviceId = deviceId;
    this.storeName = storeName;
    this.#machine = machine;
    this.#api = api;
  }

  /**
   * Open the machine of `userId`'s device `deviceId`, from `saved` when given (written back into
   * IndexedDB first), else new (a new Olm account: its keys are uploaded by the next
   * {@link flush}).
   * @throws the crypto library's error when the store cannot be opened (e.g. a snapshot of
   *   another device)
   */
  static async open(userId: string, deviceId: string, api: HomeserverApi, saved: StoreSnapshot | null): Promise<CryptoDevice> {
    const storeName = `meb:${userId}:${deviceId}`;
    await dropStore(storeName);
    if (saved) await restoreSnapshot(saved);
    const machine = await OlmMachine.initialize(new UserId(userId), new DeviceId(deviceId), storeName);
    return new CryptoDevice(userId, deviceId, storeName, machine, api);
  }

  /**
   * Run `fn` after every operation queued before it.
   * @throws Error when the device is closed by then (its store is gone: a snapshot would be empty)
   */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const guarded = (): Promise<T> => (this.#closed ? Promise.reject(new Error(`the crypto device of ${this.userId} is closed`)) : fn());
    const run = this.#chain.then(guarded, guarded);
    this.#chain = run.catch(() => undefined);
    return run;
  }

  /**
   * Feed one transaction's changes to the machine (step 1 of a transaction). Room keys among
   * the to-device events are stored; the machine's answers go out with {@link flush}.
   * @throws the crypto library's error (the transaction is refused and retried)
   */
  receive(changes: DeviceChanges): Promise<void> {
    return this.#serial(async () => {
      const lists = new DeviceLists(
        changes.changed.map((u) => new UserId(u)),
        changes.left.map((u) => new UserId(u)),
      );
      const counts = new Map(Object.entries(changes.oneTimeKeyCounts ?? {}));
      const fallback = changes.unusedFallbackKeys ? new Set(changes.unusedFallbackKeys) : undefined;
      await this.#machine.receiveSyncChanges(JSON.stringify(changes.toDevice), lists, counts, fallback, new DecryptionSettings(TrustRequirement.Untrusted));
    });
  }

  /**
   * Send every outgoing request of the machine (key uploads and one-time-key top-ups, key
   * queries and claims, to-device messages, signatures), as this device. A request that
   * fails is logged and stays with the machine, which produces it again at the next flush.
   * @returns how many requests were sent, and how many failed
   */
  flush(): Promise<{ sent: number; failed: number }> {
    return this.#serial(async () => {
      let sent = 0;
      const failed = await this.#flush(() => sent++);
      return { sent, failed };
    });
  }

  async #flush(onSent: () => void = () => undefined): Promise<number> {
    let failed = 0;
    for (const req of await this.#machine.outgoingRequests()) {
      try {
        await sendRequest(this.#api, this.#machine, { userId: this.userId, deviceId: this.deviceId }, req as Parameters<typeof sendRequest>[3]);
        onSent();
      } catch (err) {
        failed++;
        log.warn("crypto request not sent; retried at the next transaction", { userId: this.userId, deviceId: this.deviceId, type: (req as { type: number }).type, ...errorFields(err) });
      }
    }
    return failed;
  }

  /**
   * Make the device's cross-signing identity (master, self-signing, user-signing keys) and sign
   * the device with it, so clients show it as verified by its owner (MSC3967 lets a first
   * cross-signing upload skip user-interactive auth; Synapse lets an appservice skip it always).
   * @throws E2eeHttpError when an upload is refused
   */
  bootstrapCrossSigning(): Promise<void> {
    return this.#serial(async () => {
      await this.#flush();
      const reqs = await this.#machine.bootstrapCrossSigning(true);
      const actor = { userId: this.userId, deviceId: this.deviceId };
      const upload = reqs.uploadKeysRequest as { id?: string; type: number; body: string } | undefined;
      if (upload) await sendRequest(this.#api, this.#machine, actor, upload);
      await this.#api.request("POST", "/_matrix/client/v3/keys/device_signing/upload", actor, reqs.uploadSigningKeysRequest.body);
      await this.#api.request("POST", "/_matrix/client/v3/keys/signatures/upload", actor, reqs.uploadSignaturesRequest.body);
    });
  }

  /** Whether the device has its cross-signing identity (all three private keys). */
  async isCrossSigned(): Promise<boolean> {
    const status = await this.#machine.crossSigningStatus();
    return status.hasMaster && status.hasSelfSigning && status.hasUserSigning;
  }

  /** Call `cb` with the rooms whenever room keys arrive (a pending event may now decrypt). */
  onRoomKeys(cb: (roomIds: string[]) => void): void {
    this.#machine.registerRoomKeyUpdatedCallback(async (infos) => {
      cb(infos.map((i) => i.roomId.toString()));
    });
  }

  /**
   * Decrypt an `m.room.encrypted` event (Client-Server API › End-to-End Encryption, Megolm).
   * @throws MissingRoomKeyError when its key has not arrived (retry later);
   *   UndecryptableEventError when it never will (e.g. the sender does not own the session's
   *   device: `MismatchedSender`)
   */
  async decrypt(event: Record<string, unknown>): Promise<DecryptedEvent> {
    const roomId = String(event.room_id);
    try {
      const d = await this.#machine.decryptRoomEvent(JSON.stringify(event), new RoomId(roomId), new DecryptionSettings(TrustRequirement.Untrusted));
      return { event: JSON.parse(d.event) as Record<string, unknown>, senderDevice: d.senderDevice?.toString() ?? null };
    } catch (err) {
      const e = err as Partial<MegolmDecryptionError>;
      if (e.code === DecryptionErrorCode.MissingRoomKey || e.code === DecryptionErrorCode.UnknownMessageIndex) {
        throw new MissingRoomKeyError(roomId, String(event.event_id), e.description ?? "");
      }
      throw new UndecryptableEventError(`event ${String(event.event_id)} in ${roomId} cannot be decrypted: ${e.description ?? String(err)}`);
    }
  }

  /**
   * Encrypt a room event as this device for the devices of `members` (Megolm; Olm sessions
   * claimed and the room key shared first, as to-device messages).
   * @param members the room's joined (and invited) users, this device's user included
   * @returns the `m.room.encrypted` content to send
   * @throws E2eeHttpError when key queries, claims or the key share cannot be sent
   */
  encrypt(roomId: string, type: string, content: Record<string, unknown>, members: string[], historyShared: boolean): Promise<Record<string, unknown>> {
    return this.#serial(async () => {
      const users = () => members.map((m) => new UserId(m));
      await this.#machine.updateTrackedUsers(users());
      if ((await this.#flush()) > 0) throw new Error(`device keys of the members of ${roomId} could not be queried`);
      const actor = { userId: this.userId, deviceId: this.deviceId };
      const claim = await this.#machine.getMissingSessions(users());
      if (claim) await sendRequest(this.#api, this.#machine, actor, claim);
      const settings = new EncryptionSettings();
      settings.sharingStrategy = CollectStrategy.allDevices();
      settings.historyVisibility = historyShared ? HistoryVisibility.Shared : HistoryVisibility.Joined;
      const room = new RoomId(roomId);
      for (const req of await this.#machine.shareRoomKey(room, users(), settings)) await sendRequest(this.#api, this.#machine, actor, req);
      return JSON.parse(await this.#machine.encryptRoomEvent(room, type, JSON.stringify(content))) as Record<string, unknown>;
    });
  }

  /** The machine's store as it is now, after every queued operation. */
  snapshot(): Promise<StoreSnapshot> {
    return this.#serial(() => takeSnapshot(this.storeName));
  }

  /** Close the machine and drop its in-memory store (take a {@link snapshot} first). Idempotent. */
  close(): Promise<void> {
    const run = this.#chain.then(async () => {
      if (this.#closed) return;
      this.#closed = true;
      this.#machine.close();
      await dropStore(this.storeName);
    });
    this.#chain = run.catch(() => undefined);
    return run;
  }
}

/**
 * Send one of a crypto machine's outgoing requests through `api` (keys upload, query, claim, to-device,
 * signature upload) as `actor` and hand the answer back to the machine (`markRequestAsSent`).
 * Room messages and key backups are not used by the bridge and are never produced.
 * @throws E2eeHttpError or the fetch error; the machine then produces the request again later
 */
async function sendRequest(api: HomeserverApi, machine: OlmMachine, actor: Actor, req: { id?: string; type: RequestType; body: string; event_type?: string; txn_id?: string }): Promise<void> {
  let path: string;
  let method = "POST";
  switch (req.type) {
    case RequestType.KeysUpload:
      path = "/_matrix/client/v3/keys/upload";
      break;
    case RequestType.KeysQuery:
      path = "/_matrix/client/v3/keys/query";
      break;
    case RequestType.KeysClaim:
      path = "/_matrix/client/v3/keys/claim";
      break;
    case RequestType.SignatureUpload:
      path = "/_matrix/client/v3/keys/signatures/upload";
      break;
    case RequestType.ToDevice:
      method = "PUT";
      path = `/_matrix/client/v3/sendToDevice/${encodeURIComponent(req.event_type ?? "")}/${encodeURIComponent(req.txn_id ?? "")}`;
      break;
    default:
      throw new Error(`crypto machine request of type ${RequestType[req.type] ?? req.type} is not supported by the bridge`);
  }
  const response = await api.request(method, path, actor, req.body);
  if (req.id !== undefined) await machine.markRequestAsSent(req.id, req.type, response);
}
