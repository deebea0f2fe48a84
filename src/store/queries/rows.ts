/**
 * Row mappers: database rows (snake_case, engine-normalised values) to the Store.ts row types.
 */
import { dbBool, dbBuffer, dbNumber, parseStringArray } from "../db/dialect.ts";
import type {
  Direction,
  GhostRow,
  InboundRow,
  InboundState,
  MessageRow,
  OutboundRow,
  OutboundState,
  PortalKind,
  PortalRow,
  RoomMailboxRow,
} from "../Store.ts";

/** A result row, keyed by column name. */
export type DbRow = Record<string, unknown>;

function str(v: unknown): string {
  if (typeof v !== "string") throw new TypeError("expected a text column");
  return v;
}

function strOrNull(v: unknown): string | null {
  return v === null || v === undefined ? null : str(v);
}

/** Map a row of the matching table to its Store.ts type. @throws TypeError on a malformed row */
export function toGhost(r: DbRow): GhostRow {
  return {
    address: str(r.address),
    userId: str(r.user_id),
    displayName: strOrNull(r.display_name),
    updatedAt: dbNumber(r.updated_at),
  };
}

/** Map a row of the matching table to its Store.ts type. @throws TypeError on a malformed row */
export function toMailbox(r: DbRow): RoomMailboxRow {
  return {
    localpart: str(r.localpart),
    roomId: str(r.room_id),
    createdBy: str(r.created_by),
    createdAt: dbNumber(r.created_at),
  };
}

/** Map a row of the matching table to its Store.ts type. @throws TypeError on a malformed row */
export function toPortal(r: DbRow): PortalRow {
  return {
    roomId: str(r.room_id),
    kind: str(r.kind) as PortalKind,
    localUserId: strOrNull(r.local_user_id),
    remoteAddress: strOrNull(r.remote_address),
    subject: strOrNull(r.subject),
    encrypted: dbBool(r.encrypted),
    createdAt: dbNumber(r.created_at),
  };
}

/** Map a row of the matching table to its Store.ts type. @throws TypeError on a malformed row */
export function toMessage(r: DbRow): MessageRow {
  return {
    roomId: str(r.room_id),
    eventId: str(r.event_id),
    messageId: str(r.message_id),
    references: parseStringArray(r.refs),
    direction: str(r.direction) as Direction,
    sender: str(r.sender),
    subject: strOrNull(r.subject),
    createdAt: dbNumber(r.created_at),
  };
}

/** Map a row of the matching table to its Store.ts type. @throws TypeError on a malformed row */
export function toInbound(r: DbRow): InboundRow {
  return {
    id: dbNumber(r.id),
    roomId: strOrNull(r.room_id),
    dmLocalUserId: strOrNull(r.dm_local_user_id),
    replyToEventId: strOrNull(r.reply_to_event_id),
    messageId: str(r.message_id),
    sender: str(r.sender),
    raw: dbBuffer(r.raw),
    state: str(r.state) as InboundState,
    attempts: dbNumber(r.attempts),
    eventId: strOrNull(r.event_id),
    lastError: strOrNull(r.last_error),
    receivedAt: dbNumber(r.received_at),
  };
}

/** Map a row of the matching table to its Store.ts type. @throws TypeError on a malformed row */
export function toOutbound(r: DbRow): OutboundRow {
  return {
    id: dbNumber(r.id),
    roomId: str(r.room_id),
    eventId: str(r.event_id),
    messageId: str(r.message_id),
    envelopeFrom: str(r.envelope_from),
    recipients: parseStringArray(r.recipients),
    raw: dbBuffer(r.raw),
    state: str(r.state) as OutboundState,
    attempts: dbNumber(r.attempts),
    nextAttemptAt: dbNumber(r.next_attempt_at),
    lastError: strOrNull(r.last_error),
    createdAt: dbNumber(r.created_at),
  };
}
