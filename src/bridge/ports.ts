/**
 * What the bridge core needs from the Matrix side. matrix/MatrixGateway.ts implements it;
 * tests may pass another implementation.
 */

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
  /** Upload media as `userId`; returns an `mxc://` URI. */
  uploadContent(userId: string, data: Buffer, contentType: string, filename: string): Promise<string>;
  /** The bot posts an m.notice (errors are logged, not thrown). */
  botNotice(roomId: string, text: string, replyTo?: string): Promise<void>;
  /** A ghost creates a DM room inviting a local user; returns the room ID. */
  createDm(ghostUserId: string, inviteeUserId: string, topic: string | null): Promise<string>;
  joinedMembers(roomId: string, asUserId?: string): Promise<string[]>;
  stateContent(roomId: string, type: string, stateKey: string, asUserId?: string): Promise<Record<string, unknown> | null>;
  isEncrypted(roomId: string, asUserId?: string): Promise<boolean>;
  powerLevel(roomId: string, userId: string, asUserId?: string): Promise<number>;
  displayName(roomId: string, userId: string, asUserId?: string): Promise<string>;
  userExists(userId: string): Promise<boolean>;
}
