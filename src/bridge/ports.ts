/**
 * What the bridge core needs from the Matrix side. matrix/MatrixGateway.ts implements it;
 * tests may pass another implementation.
 */
import type { Readable } from "node:stream";

/**
 * Media known as a stream of its bytes and their number (the homeserver wants a `Content-Length`
 * before the body): paused until the upload resumes it, read at most once.
 */
export interface MediaStream {
  /** Size in bytes; an upload fails when the stream gives more or fewer. */
  readonly bytes: number;
  readonly stream: Readable;
}

/** Matrix actions the bridge core performs, as the bot or as a ghost. */
export interface MatrixActions {
  /** The bridge bot's user ID. */
  readonly botUserId: string;
  /** Register a ghost if needed and set its display name when it changed. */
  ensureGhost(userId: string, displayName: string | null, previous: string | null): Promise<void>;
  /** Join a room (the bot invites the user first when the room is invite-only). */
  join(roomId: string, userId: string): Promise<void>;
  invite(roomId: string, inviter: string, invitee: string): Promise<void>;
  leave(roomId: string, userId: string, reason?: string): Promise<void>;
  /** Send an event; `txnId` makes it idempotent. Returns the event ID. */
  sendEvent(userId: string, roomId: string, type: string, content: Record<string, unknown>, txnId?: string): Promise<string>;
  /** Upload media as `userId`, whole or as a stream of known size ({@link MediaStream}); returns an `mxc://` URI. */
  uploadContent(userId: string, data: Buffer | MediaStream, contentType: string, filename: string): Promise<string>;
  /** The bot posts an m.notice (errors are logged, not thrown). */
  botNotice(roomId: string, text: string, replyTo?: string): Promise<void>;
  /** A ghost creates a DM room inviting a local user; returns the room ID. */
  createDm(ghostUserId: string, inviteeUserId: string, topic: string | null, reason?: string): Promise<string>;
  /** The bridge bot's DM with a local user, made when there is none (see MatrixGateway.botDm). */
  botDm(userId: string): Promise<string>;
  /** Record a room as the bot's DM with a user (the user gave a command there), for {@link botDm}. */
  rememberBotDm(userId: string, roomId: string): Promise<void>;
  joinedMembers(roomId: string, asUserId?: string): Promise<string[]>;
  /** The rooms `asUserId` (a ghost or the bot) is joined to. */
  joinedRooms(asUserId: string): Promise<string[]>;
  /** Who created a room (the sender of its `m.room.create`), read as `asUserId`, a member. */
  roomCreator(roomId: string, asUserId: string): Promise<string>;
  stateContent(roomId: string, type: string, stateKey: string, asUserId?: string): Promise<Record<string, unknown> | null>;
  /**
   * One event of a room (`GET /rooms/{roomId}/event/{eventId}`), read as `asUserId` (a member).
   * @returns its sender, time (epoch ms) and content, or null when the homeserver does not show it (404)
   * @throws the homeserver's error for anything else
   */
  roomEvent(roomId: string, eventId: string, asUserId?: string): Promise<{ sender: string; originServerTs: number; content: Record<string, unknown> } | null>;
  isEncrypted(roomId: string, asUserId?: string): Promise<boolean>;
  /**
   * Whether end-to-end-encrypted rooms are bridged now: encryption is on in the config, the
   * bot's device is ready and the homeserver pushes device data in transactions (MSC2409,
   * MSC3202; docs/encryption.md). When false, the bridge stays out of encrypted rooms.
   */
  bridgesEncryptedRooms(): boolean;
  powerLevel(roomId: string, userId: string, asUserId?: string): Promise<number>;
  displayName(roomId: string, userId: string, asUserId?: string): Promise<string>;
  userExists(userId: string): Promise<boolean>;
  /**
   * The homeserver's largest upload, in bytes (`m.upload.size` from
   * `/_matrix/client/v1/media/config`), or null when it sets none. Cached.
   */
  uploadLimitBytes(): Promise<number | null>;
  /**
   * Download media through the authenticated media API (`GET /_matrix/client/v1/media/download`)
   * as the bot, reading at most `maxBytes`.
   * @returns the bytes and the served Content-Type, or `tooLarge` when there are more than `maxBytes`
   * @throws Error for an `mxc://` URI that is not one; the homeserver's error (classify it with
   *   {@link classifyError}) when it refuses or cannot answer
   */
  downloadContent(mxc: string, maxBytes: number): Promise<{ tooLarge: false; data: Buffer; contentType: string | null } | { tooLarge: true }>;
  /** What a failed homeserver request means for a retry (see {@link HomeserverFailure}). */
  classifyError(err: unknown): HomeserverFailure;
}

/**
 * A failed homeserver request, judged for the queues (Client-Server API, "Standard error
 * response" and "Rate limiting").
 */
export interface HomeserverFailure {
  /**
   * True when the same request may succeed later: no answer (network), 5xx, 429 /
   * `M_LIMIT_EXCEEDED`, 408, or an unrecognised failure. False when the homeserver refused the
   * request itself (4xx such as `M_TOO_LARGE`, `M_FORBIDDEN`, `M_BAD_JSON`, `M_NOT_FOUND`).
   */
  temporary: boolean;
  /** The server's `retry_after_ms` (or `Retry-After`), in ms, when it gave one. */
  retryAfterMs: number | null;
  /** HTTP status, when there was an answer. */
  status: number | null;
  /** Matrix `errcode`, when there was one. */
  errcode: string | null;
  /** One line for logs and notices. */
  message: string;
}

/**
 * A room event of an appservice transaction, to journal (Application Service API › Pushing
 * events). `json` is the event as received, JSON text.
 */
export interface JournalEventInput {
  eventId: string;
  roomId: string;
  json: string;
}

/** A journaled event waiting to be handled (what the Matrix side reads back). */
export interface JournaledEvent {
  eventId: string;
  roomId: string;
  /** The homeserver's transaction ID that brought it. */
  txnId: string;
  /** The event as received, JSON text. */
  json: string;
  /** Handler runs that threw so far. */
  attempts: number;
  /** Epoch ms before which it is not retried. */
  nextAttemptAt: number;
  /** Epoch ms when it was journaled (temporary failures are retried for a window from here). */
  receivedAt: number;
}

/**
 * The durable journal of appservice transactions, written before the transaction's 200 and
 * read by the Matrix side to hand events to the bridge (src/matrix/appserviceTransactions.ts).
 * The bridge core passes its store (`BridgeStore` implements it; migration 4).
 */
export interface MatrixEventJournal {
  /**
   * Record a transaction and its events in one commit. A known transaction ID is a no-op
   * (`duplicate: true`); a known event ID is skipped. `recorded` counts new events.
   * @throws when the commit fails (nothing is recorded)
   */
  recordAppserviceTransaction(txnId: string, events: JournalEventInput[]): Promise<{ duplicate: boolean; recorded: number }>;
  /** The oldest pending event of each room, due or not, oldest first, at most `limit`. */
  listMatrixEventHeads(limit: number): Promise<JournaledEvent[]>;
  /** The event was handled: it becomes `done`. */
  markMatrixEventDone(eventId: string): Promise<void>;
  /** The handler threw; retry not before `nextAttemptAt` (epoch ms). */
  markMatrixEventRetry(eventId: string, error: string, nextAttemptAt: number): Promise<void>;
  /** The handler threw for the last time: the event becomes `failed`. */
  markMatrixEventFailed(eventId: string, error: string): Promise<void>;
  /** Delete finished events and transaction IDs older than `before` (epoch ms). */
  pruneMatrixJournal(before: number): Promise<{ events: number; txns: number }>;
}
