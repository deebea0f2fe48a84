/**
 * A real encrypting Matrix client for the end-to-end tests: matrix-js-sdk with its Rust
 * crypto (the same `@matrix-org/matrix-sdk-crypto-wasm` Element Web uses; crypto store in
 * memory), syncing against the test Synapse. It creates encrypted rooms, sends encrypted
 * messages, and reads what arrives as the user sees it: decrypted, with the shield
 * (`getEncryptionInfoForEvent`) a client shows next to it.
 */
import { ClientEvent, createClient, MatrixEventEvent, type MatrixClient, type MatrixEvent } from "matrix-js-sdk";
import { EventShieldColour, EventShieldReason } from "matrix-js-sdk/lib/crypto-api/index.js";
import type { SynapseHandle } from "./synapse.ts";

/** A js-sdk logger that keeps warnings and errors only (the SDK and its crypto are very chatty at debug). */
interface QuietLogger {
  trace(...args: unknown[]): void;
  debug(...args: unknown[]): void;
  info(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
  getChild(namespace: string): QuietLogger;
}
const quietLogger: QuietLogger = {
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: (...args: unknown[]) => console.warn("[js-sdk]", ...args),
  error: (...args: unknown[]) => console.error("[js-sdk]", ...args),
  getChild(): QuietLogger {
    return quietLogger;
  },
};

/** A message as the client shows it. */
export interface SeenMessage {
  eventId: string;
  sender: string;
  /** The event type on the wire (`m.room.encrypted` for an encrypted one). */
  wireType: string;
  /** The clear content (decrypted, or as sent when unencrypted). */
  content: Record<string, unknown>;
  /** The shield the client shows: `none` (no warning), `grey`, `red`, and why. */
  shield: { colour: "none" | "grey" | "red"; reason: string | null } | null;
}

/** An encrypting client logged in as one user. */
export interface E2eeClient {
  readonly userId: string;
  readonly deviceId: string;
  readonly client: MatrixClient;
  /** Create a private room with `m.room.encryption` (Megolm) from the start, inviting `invite`. */
  createEncryptedRoom(name: string, invite?: string[]): Promise<string>;
  /** Send an `m.text` message (encrypted in an encrypted room); resolves to its event ID. */
  sendText(roomId: string, text: string): Promise<string>;
  /** Wait until `userId`'s membership in `roomId` is `membership`. */
  waitForMembership(roomId: string, userId: string, membership: string, timeoutMs?: number): Promise<void>;
  /** Wait for an invite from `inviter`; resolves to the room ID. */
  waitForInvite(inviter: string, timeoutMs?: number): Promise<string>;
  /** Join a room. */
  join(roomId: string): Promise<void>;
  /**
   * Wait for a message in `roomId` (decryption attempted and finished) that `predicate`
   * accepts; a message that fails to decrypt is not accepted (its content is not known).
   */
  waitForMessage(roomId: string, predicate: (m: SeenMessage) => boolean, timeoutMs?: number): Promise<SeenMessage>;
  /** Every message of `roomId` the client has, as it shows them. */
  messages(roomId: string): Promise<SeenMessage[]>;
  stop(): void;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Register `localpart` on `synapse`, log in (a fresh device), start the Rust crypto and sync.
 * @throws the homeserver's error when registration or login fails; Error when the first sync does not come within 30 s
 */
export async function startE2eeClient(synapse: SynapseHandle, localpart: string, displayName?: string): Promise<E2eeClient> {
  const password = `pw-${localpart}-${Date.now()}`;
  await synapse.registerUser(localpart, { password, ...(displayName ? { displayName } : {}) });
  const anon = createClient({ baseUrl: synapse.url, logger: quietLogger });
  const login = (await anon.loginRequest({ type: "m.login.password", identifier: { type: "m.id.user", user: localpart }, password })) as {
    user_id: string;
    access_token: string;
    device_id: string;
  };
  const client = createClient({ baseUrl: synapse.url, userId: login.user_id, accessToken: login.access_token, deviceId: login.device_id, logger: quietLogger });
  await client.initRustCrypto({ useIndexedDB: false });
  const synced = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${login.user_id}: no first sync within 30 s`)), 30_000);
    client.once(ClientEvent.Sync, () => {
      clearTimeout(timer);
      resolve();
    });
  });
  await client.startClient({ initialSyncLimit: 50 });
  await synced;

  const seen = async (ev: MatrixEvent): Promise<SeenMessage | null> => {
    if (ev.isBeingDecrypted() || ev.shouldAttemptDecryption()) {
      await new Promise<void>((resolve) => {
        if (!ev.isBeingDecrypted() && !ev.shouldAttemptDecryption()) resolve();
        else ev.once(MatrixEventEvent.Decrypted, () => resolve());
        setTimeout(resolve, 2000);
      });
    }
    if (ev.getType() !== "m.room.message" || ev.isDecryptionFailure()) return null;
    const info = ev.isEncrypted() ? await client.getCrypto()!.getEncryptionInfoForEvent(ev) : null;
    const colour = info ? (info.shieldColour === EventShieldColour.NONE ? "none" : info.shieldColour === EventShieldColour.GREY ? "grey" : "red") : null;
    return {
      eventId: ev.getId() ?? "",
      sender: ev.getSender() ?? "",
      wireType: ev.getWireType(),
      content: ev.getContent(),
      shield: info && colour ? { colour, reason: info.shieldReason === null ? null : (EventShieldReason[info.shieldReason] ?? String(info.shieldReason)) } : null,
    };
  };
  const messages = async (roomId: string): Promise<SeenMessage[]> => {
    const events = client.getRoom(roomId)?.getLiveTimeline().getEvents() ?? [];
    const out: SeenMessage[] = [];
    for (const ev of events) {
      const m = await seen(ev);
      if (m) out.push(m);
    }
    return out;
  };

  return {
    userId: login.user_id,
    deviceId: login.device_id,
    client,
    async createEncryptedRoom(name, invite = []) {
      const { room_id } = await client.createRoom({
        name,
        preset: "private_chat" as never,
        invite,
        initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
      });
      for (let i = 0; i < 150 && !client.getRoom(room_id); i++) await sleep(100);
      return room_id;
    },
    async sendText(roomId, text) {
      const { event_id } = await client.sendTextMessage(roomId, text);
      return event_id;
    },
    async waitForMembership(roomId, userId, membership, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      while (client.getRoom(roomId)?.getMember(userId)?.membership !== membership) {
        if (Date.now() > deadline) throw new Error(`${userId} not ${membership} in ${roomId} within ${timeoutMs} ms`);
        await sleep(100);
      }
    },
    async waitForInvite(inviter, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const room = client.getRooms().find((r) => r.getMyMembership() === "invite" && r.getMember(login.user_id)?.events.member?.getSender() === inviter);
        if (room) return room.roomId;
        if (Date.now() > deadline) throw new Error(`no invite from ${inviter} within ${timeoutMs} ms`);
        await sleep(100);
      }
    },
    async join(roomId) {
      await client.joinRoom(roomId);
    },
    async waitForMessage(roomId, predicate, timeoutMs = 60_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = (await messages(roomId)).find(predicate);
        if (found) return found;
        if (Date.now() > deadline) {
          const all = (client.getRoom(roomId)?.getLiveTimeline().getEvents() ?? []).map((e) => `${e.getSender()} ${e.getWireType()}→${e.getType()}${e.isDecryptionFailure() ? " (undecryptable)" : ""}: ${JSON.stringify(e.getContent()).slice(0, 120)}`);
          throw new Error(`no matching message in ${roomId} within ${timeoutMs} ms; timeline:\n${all.join("\n")}`);
        }
        await sleep(200);
      }
    },
    messages,
    stop() {
      client.stopClient();
    },
  };
}
