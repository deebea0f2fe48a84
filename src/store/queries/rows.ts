/**
 * Row mappers: database rows (snake_case, engine-normalised values) to the Store.ts row types.
 */
import { dbBool, dbBuffer, dbNumber, parseStringArray } from "../db/dialect.ts";
import type {
  AppPasswordRow,
  MailAliasRow,
  MailboxPolicy,
  MailDomainRow,
  SubscriberRow,
  AuthFields,
  SpamFields,
  Direction,
  GhostRow,
  InboundRow,
  QueuedInbound,
  InboundState,
  MatrixEventRow,
  MatrixEventState,
  MessageRow,
  OutboundRecipientRow,
  OutboundRecipientState,
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
    policy: str(r.policy) as MailboxPolicy,
    createdAt: dbNumber(r.created_at),
    signature: r.signature === null || r.signature === undefined ? null : str(r.signature),
  };
}

/** Map a row of the matching table to its Store.ts type. @throws TypeError on a malformed row */
export function toSubscriber(r: DbRow): SubscriberRow {
  return {
    roomId: str(r.room_id),
    address: str(r.address),
    state: str(r.state) as SubscriberRow["state"],
    token: strOrNull(r.token),
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
    remoteVerified: dbBool(r.remote_verified),
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
    participants: parseStringArray(r.participants),
    viaList: dbBool(r.via_list),
    createdAt: dbNumber(r.created_at),
  };
}

/** Parse a JSON column holding an object, or null. @throws TypeError when it is not an object */
function jsonObjectOrNull<T>(v: unknown): T | null {
  if (v === null || v === undefined) return null;
  const parsed: unknown = JSON.parse(str(v));
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new TypeError("expected a JSON object column");
  return parsed as T;
}

/** Map a row of the matching table to its Store.ts type. @throws TypeError on a malformed row */
export function toInbound(r: DbRow): InboundRow {
  // As stored (maybe an encrypted envelope): SqlStore decrypts it (src/store/rawCipher.ts).
  return { ...toQueuedInbound(r), raw: dbBuffer(r.raw) };
}

/** Map an inbound row selected without `raw` (see `INBOUND_COLS_BUT_RAW`). @throws TypeError on a malformed row */
export function toQueuedInbound(r: DbRow): QueuedInbound {
  return {
    id: dbNumber(r.id),
    roomId: strOrNull(r.room_id),
    dmLocalUserId: strOrNull(r.dm_local_user_id),
    replyToEventId: strOrNull(r.reply_to_event_id),
    messageId: str(r.message_id),
    sender: str(r.sender),
    senderVerified: dbBool(r.sender_verified),
    senderName: strOrNull(r.sender_name),
    auth: jsonObjectOrNull<AuthFields>(r.auth),
    spam: jsonObjectOrNull<SpamFields>(r.spam),
    participants: parseStringArray(r.participants),
    contentHash: str(r.content_hash),
    nextAttemptAt: dbNumber(r.next_attempt_at),
    envelopeFrom: strOrNull(r.envelope_from),
    kind: str(r.kind) as InboundRow["kind"],
    deliveredTo: strOrNull(r.delivered_to),
    recipientTag: strOrNull(r.recipient_tag),
    rawPurgedAt: r.raw_purged_at === null || r.raw_purged_at === undefined ? null : dbNumber(r.raw_purged_at),
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
    // As stored (maybe an encrypted envelope): SqlStore decrypts it (src/store/rawCipher.ts).
    raw: dbBuffer(r.raw),
    rawPurgedAt: r.raw_purged_at === null || r.raw_purged_at === undefined ? null : dbNumber(r.raw_purged_at),
    state: str(r.state) as OutboundState,
    attempts: dbNumber(r.attempts),
    nextAttemptAt: dbNumber(r.next_attempt_at),
    lastError: strOrNull(r.last_error),
    createdAt: dbNumber(r.created_at),
    delayWarnedAt: r.delay_warned_at === null || r.delay_warned_at === undefined ? null : dbNumber(r.delay_warned_at),
  };
}

/** Map an `outbound_recipients` row to its Store.ts type. @throws TypeError on a malformed row */
export function toOutboundRecipient(r: DbRow): OutboundRecipientRow {
  return {
    outboundId: dbNumber(r.outbound_id),
    address: str(r.address),
    state: str(r.state) as OutboundRecipientState,
    attempts: dbNumber(r.attempts),
    lastCode: r.last_code === null || r.last_code === undefined ? null : dbNumber(r.last_code),
    lastReply: strOrNull(r.last_reply),
    nextAttemptAt: r.next_attempt_at === null || r.next_attempt_at === undefined ? null : dbNumber(r.next_attempt_at),
    reported: dbBool(r.reported),
    updatedAt: dbNumber(r.updated_at),
  };
}

/** Map a `mail_domains` row to its Store.ts type. @throws TypeError on a malformed row */
export function toMailDomain(r: DbRow): MailDomainRow {
  return { domain: str(r.domain), createdBy: str(r.created_by), createdAt: dbNumber(r.created_at) };
}

/** Map a `mail_aliases` row to its Store.ts type. @throws TypeError on a malformed row */
export function toMailAlias(r: DbRow): MailAliasRow {
  return { address: str(r.address), target: str(r.target), createdBy: str(r.created_by), createdAt: dbNumber(r.created_at) };
}

/** Map a `matrix_events` row to its Store.ts type. @throws TypeError on a malformed row */
export function toMatrixEvent(r: DbRow): MatrixEventRow {
  return {
    seq: dbNumber(r.seq),
    eventId: str(r.event_id),
    roomId: str(r.room_id),
    txnId: str(r.txn_id),
    json: str(r.event),
    state: str(r.state) as MatrixEventState,
    attempts: dbNumber(r.attempts),
    lastError: strOrNull(r.last_error),
    nextAttemptAt: dbNumber(r.next_attempt_at),
    receivedAt: dbNumber(r.received_at),
    doneAt: r.done_at === null || r.done_at === undefined ? null : dbNumber(r.done_at),
  };
}

/** Map an `app_passwords` row to its Store.ts type. @throws TypeError on a malformed row */
export function toAppPassword(r: DbRow): AppPasswordRow {
  return {
    id: dbNumber(r.id),
    userId: str(r.user_id),
    label: str(r.label),
    hash: str(r.hash),
    createdAt: dbNumber(r.created_at),
    lastUsedAt: r.last_used_at === null || r.last_used_at === undefined ? null : dbNumber(r.last_used_at),
  };
}
