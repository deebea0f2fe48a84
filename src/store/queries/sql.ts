/**
 * The store's SQL statements, in the shared dialect (`$n` placeholders; see `db/dialect.ts`).
 * Column names are snake_case; `queries/rows.ts` maps result rows to the Store.ts types.
 */

const GHOST_COLS = "address, user_id, display_name, updated_at";
/** Insert or update a ghost. $1 address, $2 user_id, $3 display_name, $4 updated_at (ms). */
export const SQL_UPSERT_GHOST = `
INSERT INTO ghosts (address, user_id, display_name, updated_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (address) DO UPDATE SET user_id = excluded.user_id, display_name = excluded.display_name,
  updated_at = excluded.updated_at`;
/** Ghost by $1 address. */
export const SQL_GHOST_BY_ADDRESS = `SELECT ${GHOST_COLS} FROM ghosts WHERE address = $1`;
/** Ghost by $1 user_id. */
export const SQL_GHOST_BY_USER = `SELECT ${GHOST_COLS} FROM ghosts WHERE user_id = $1`;

const MAILBOX_COLS = "localpart, room_id, created_by, created_at, policy, signature";
/** Room mailbox by $1 localpart. */
export const SQL_MAILBOX_BY_LOCALPART = `SELECT ${MAILBOX_COLS} FROM room_mailboxes WHERE localpart = $1`;
/** Room mailbox by $1 room_id. */
export const SQL_MAILBOX_BY_ROOM = `SELECT ${MAILBOX_COLS} FROM room_mailboxes WHERE room_id = $1`;
/** Set policy $2 of the mailbox of $1 room_id. */
export const SQL_SET_MAILBOX_POLICY = "UPDATE room_mailboxes SET policy = $2 WHERE room_id = $1";
/** Set room $1's mailbox signature to $2 (NULL: none). */
export const SQL_SET_MAILBOX_SIGNATURE = "UPDATE room_mailboxes SET signature = $2 WHERE room_id = $1";

const SUBSCRIBER_COLS = "room_id, address, state, token, created_at";
/**
 * Add a subscriber ($1 room, $2 address, $3 state, $4 token, $5 created_at) or refresh it: a
 * pending one takes the new state and token; an active one stays active.
 */
export const SQL_PUT_SUBSCRIBER = `
INSERT INTO room_subscribers (room_id, address, state, token, created_at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (room_id, address) DO UPDATE SET
  state = CASE WHEN room_subscribers.state = 'active' THEN 'active' ELSE excluded.state END,
  token = CASE WHEN room_subscribers.state = 'active' OR excluded.state = 'active' THEN NULL ELSE excluded.token END
RETURNING ${SUBSCRIBER_COLS}`;
/** Activate the pending subscription with token $1. */
export const SQL_ACTIVATE_SUBSCRIBER = `UPDATE room_subscribers SET state = 'active', token = NULL WHERE token = $1 AND state = 'pending' RETURNING ${SUBSCRIBER_COLS}`;
/** Delete subscriber $2 of room $1. */
export const SQL_DELETE_SUBSCRIBER = "DELETE FROM room_subscribers WHERE room_id = $1 AND address = $2";
/** Active subscribers of room $1. */
export const SQL_ACTIVE_SUBSCRIBERS = "SELECT address FROM room_subscribers WHERE room_id = $1 AND state = 'active' ORDER BY address";

/** Mails queued by $1 envelope_from since $2 (ms). */
export const SQL_COUNT_OUTBOUND_SINCE = "SELECT COUNT(*) AS n FROM outbound_mail WHERE envelope_from = $1 AND created_at >= $2";
/** Whether $1 envelope_from has mailed $2 address before. */
export const SQL_KNOWN_RECIPIENT = `
SELECT 1 AS known FROM outbound_recipients r JOIN outbound_mail m ON m.id = r.outbound_id
WHERE m.envelope_from = $1 AND r.address = $2 LIMIT 1`;
/** Addresses $1 envelope_from mailed for the first time since $2 (ms). */
export const SQL_COUNT_NEW_RECIPIENTS = `
SELECT COUNT(*) AS n FROM (
  SELECT r.address, MIN(m.created_at) AS first_at FROM outbound_recipients r JOIN outbound_mail m ON m.id = r.outbound_id
  WHERE m.envelope_from = $1 GROUP BY r.address
) t WHERE t.first_at >= $2`;

/** Delete the mailbox of $1 room_id. */
export const SQL_DELETE_MAILBOX_OF_ROOM = "DELETE FROM room_mailboxes WHERE room_id = $1";
/** Insert a mailbox, returning it. $1 localpart, $2 room_id, $3 created_by, $4 created_at (ms). */
export const SQL_INSERT_MAILBOX = `
INSERT INTO room_mailboxes (localpart, room_id, created_by, created_at) VALUES ($1, $2, $3, $4)
RETURNING ${MAILBOX_COLS}`;
/** Every room mailbox, by localpart. */
export const SQL_ALL_MAILBOXES = `SELECT ${MAILBOX_COLS} FROM room_mailboxes ORDER BY localpart`;

/** Mail domains, by name (migration 10). */
export const SQL_MAIL_DOMAINS = "SELECT domain, created_by, created_at FROM mail_domains ORDER BY domain";
/** Add mail domain $1 by $2 at $3 (ms); nothing when it exists. */
export const SQL_ADD_MAIL_DOMAIN = "INSERT INTO mail_domains (domain, created_by, created_at) VALUES ($1, $2, $3) ON CONFLICT (domain) DO NOTHING";
/** Remove mail domain $1. */
export const SQL_REMOVE_MAIL_DOMAIN = "DELETE FROM mail_domains WHERE domain = $1";
const ALIAS_COLS = "address, target, created_by, created_at";
/** Add alias $1 (domain $2) → target $3 by $4 at $5 (ms); nothing when it exists. */
export const SQL_ADD_MAIL_ALIAS = `
INSERT INTO mail_aliases (address, domain, target, created_by, created_at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (address, target) DO NOTHING`;
/**
 * Aliases where each given filter matches: $1 address, $2 domain, $3 target (NULL: any), by
 * address then target. The `CAST`s give PostgreSQL the type of a parameter that is only NULL-tested.
 */
export const SQL_MAIL_ALIASES = `
SELECT ${ALIAS_COLS} FROM mail_aliases
WHERE (CAST($1 AS TEXT) IS NULL OR address = $1) AND (CAST($2 AS TEXT) IS NULL OR domain = $2) AND (CAST($3 AS TEXT) IS NULL OR target = $3)
ORDER BY address, target`;
/** Remove the aliases where each given filter matches, as {@link SQL_MAIL_ALIASES}. */
export const SQL_REMOVE_MAIL_ALIASES = `
DELETE FROM mail_aliases
WHERE (CAST($1 AS TEXT) IS NULL OR address = $1) AND (CAST($2 AS TEXT) IS NULL OR domain = $2) AND (CAST($3 AS TEXT) IS NULL OR target = $3)`;

const PORTAL_COLS = "room_id, kind, local_user_id, remote_address, subject, encrypted, created_at, remote_verified";
/** Insert a portal or update kind/subject/encrypted, returning it. $1..$8 in column order. */
export const SQL_UPSERT_PORTAL = `
INSERT INTO portals (room_id, kind, local_user_id, remote_address, subject, encrypted, created_at, remote_verified)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (room_id) DO UPDATE SET kind = excluded.kind, subject = excluded.subject, encrypted = excluded.encrypted
RETURNING ${PORTAL_COLS}`;
/** Portal by $1 room_id. */
export const SQL_PORTAL_BY_ROOM = `SELECT ${PORTAL_COLS} FROM portals WHERE room_id = $1`;
/** DM portal by $1 local_user_id, $2 remote_address, $3 remote_verified. */
export const SQL_DM_PORTAL = `SELECT ${PORTAL_COLS} FROM portals WHERE kind = 'dm' AND local_user_id = $1 AND remote_address = $2 AND remote_verified = $3`;
/** Delete the portal of $1 room_id. */
export const SQL_DELETE_PORTAL = "DELETE FROM portals WHERE room_id = $1";

const MESSAGE_COLS = "room_id, event_id, message_id, refs, direction, sender, subject, created_at, participants, via_list";
/** Insert a message mapping unless (room_id, event_id) exists. $1..$10 in column order; refs and participants are JSON text. */
export const SQL_INSERT_MESSAGE = `
INSERT INTO messages (room_id, event_id, message_id, refs, direction, sender, subject, created_at, participants, via_list)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (room_id, event_id) DO NOTHING`;
/** The newest inbound message of $1 room_id. */
export const SQL_LATEST_INBOUND_OF_ROOM = `SELECT ${MESSAGE_COLS} FROM messages WHERE room_id = $1 AND direction = 'inbound' ORDER BY created_at DESC, event_id DESC LIMIT 1`;
/** All mappings of $1 message_id, oldest first. */
export const SQL_MESSAGES_BY_MESSAGE_ID = `SELECT ${MESSAGE_COLS} FROM messages WHERE message_id = $1 ORDER BY created_at, room_id, event_id`;
/** Mapping of $1 room_id, $2 event_id. */
export const SQL_MESSAGE_BY_EVENT = `SELECT ${MESSAGE_COLS} FROM messages WHERE room_id = $1 AND event_id = $2`;
/**
 * The newest mapping in $1 room_id that is the message $2 message_id or has it in its References:
 * $3 is $2 as a JSON string, found exactly in the refs JSON text (`replace` is case-sensitive on
 * both engines, where SQLite's LIKE is not).
 */
export const SQL_LATEST_IN_THREAD = `SELECT ${MESSAGE_COLS} FROM messages
WHERE room_id = $1 AND (message_id = $2 OR length(replace(refs, $3, '')) < length(refs))
ORDER BY created_at DESC, event_id DESC LIMIT 1`;
/**
 * Mappings whose sender is $1 or whose participants hold $2 ($1 as a JSON string, found exactly
 * in the participants JSON text, as in SQL_LATEST_IN_THREAD), newest first, at most $3.
 */
export const SQL_MESSAGES_BY_ADDRESS = `SELECT ${MESSAGE_COLS} FROM messages
WHERE sender = $1 OR length(replace(participants, $2, '')) < length(participants)
ORDER BY created_at DESC, room_id DESC, event_id DESC LIMIT $3`;
/** Mappings of $1 room_id, newest first, at most $2. */
export const SQL_MESSAGES_IN_ROOM = `SELECT ${MESSAGE_COLS} FROM messages WHERE room_id = $1 ORDER BY created_at DESC, event_id DESC LIMIT $2`;

const INBOUND_COLS =
  "id, room_id, dm_local_user_id, reply_to_event_id, message_id, sender, raw, state, attempts, event_id, last_error, received_at, " +
  "sender_verified, sender_name, auth, spam, participants, content_hash, next_attempt_at, envelope_from, raw_purged_at, kind, delivered_to, recipient_tag, raw_chunks";
/**
 * {@link INBOUND_COLS} but `raw`: an insert does not read back the bytes it just wrote (a 25 MiB
 * mail would be copied twice more), and the poster reads them as it goes (`readInboundRaw`).
 */
export const INBOUND_COLS_BUT_RAW = INBOUND_COLS.replace(" raw,", "");
/**
 * The inbound queue target of a mail (SQL expression): for a room that is a DM portal, that
 * DM's key, spelled as `dmTarget` in SqlStore.ts spells it (`dm:<local user> <remote address>
 * v|u`), so mail posted into the DM's room queues behind, and is deduplicated against, mail that
 * was waiting for the DM to be created; otherwise `fallback` (the room ID, or the DM key of a
 * mail for a DM not yet created). The decision is made by the insert itself: no round trip of
 * its own.
 * @param room the placeholder of the mail's room_id (NULL for a mail for a DM not yet created)
 * @param fallback the placeholder of the target when the room is not a DM portal
 */
function inboundTarget(room: string, fallback: string): string {
  return `COALESCE((SELECT 'dm:' || p.local_user_id || ' ' || p.remote_address || ' ' || CASE WHEN p.remote_verified THEN 'v' ELSE 'u' END
  FROM portals p WHERE p.room_id = ${room} AND p.kind = 'dm' AND p.local_user_id IS NOT NULL AND p.remote_address IS NOT NULL), ${fallback})`;
}
/**
 * Insert a pending inbound mail unless (target, message_id, content_hash) exists, returning it
 * (no row on conflict; `raw` is not returned). The target is the DM key when $2 room_id is a DM
 * portal, else $1 (see {@link inboundTarget}). $1 target .. $8 received_at, $9 sender_verified,
 * $10 sender_name, $11 auth (JSON), $12 spam (JSON), $13 participants (JSON), $14 content_hash,
 * $15 envelope_from, $16 kind, $17 delivered_to, $18 recipient_tag, $19 raw_chunks ($7 raw is
 * then the first chunk).
 */
export const SQL_INSERT_INBOUND = `
INSERT INTO inbound_mail (target, room_id, dm_local_user_id, reply_to_event_id, message_id, sender, raw, state, attempts, received_at,
  sender_verified, sender_name, auth, spam, participants, content_hash, envelope_from, kind, delivered_to, recipient_tag, raw_chunks)
VALUES (${inboundTarget("$2", "$1")}, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
ON CONFLICT (target, message_id, content_hash) DO NOTHING
RETURNING ${INBOUND_COLS_BUT_RAW}`;
/**
 * The inbound mail an insert of SQL_INSERT_INBOUND conflicted with: by its target (the DM key
 * when $4 room_id is a DM portal, else $1), $2 message_id and $3 content_hash.
 */
export const SQL_INBOUND_BY_KEY = `SELECT ${INBOUND_COLS} FROM inbound_mail WHERE target = ${inboundTarget("$4", "$1")} AND message_id = $2 AND content_hash = $3`;
/** Pending inbound mail, oldest first, at most $1 rows. */
export const SQL_PENDING_INBOUND = `SELECT ${INBOUND_COLS} FROM inbound_mail WHERE state = 'pending' ORDER BY id LIMIT $1`;
/** The oldest pending row of each target, if due at $1 (ms), without `raw`; oldest first, at most $2 rows. */
export const SQL_DUE_INBOUND = `
SELECT ${INBOUND_COLS_BUT_RAW} FROM inbound_mail m
WHERE m.state = 'pending' AND m.next_attempt_at <= $1
  AND NOT EXISTS (SELECT 1 FROM inbound_mail p WHERE p.state = 'pending' AND p.target = m.target AND p.id < m.id)
ORDER BY m.id LIMIT $2`;
/** Earliest next_attempt_at of pending inbound mail (NULL when none). */
export const SQL_NEXT_INBOUND_DUE = "SELECT MIN(next_attempt_at) AS due FROM inbound_mail WHERE state = 'pending'";
/** Inbound mail by $1 id. */
export const SQL_INBOUND_BY_ID = `SELECT ${INBOUND_COLS} FROM inbound_mail WHERE id = $1`;
/** The inbound mail posted as event $2 in room $1. */
export const SQL_INBOUND_BY_EVENT = `SELECT ${INBOUND_COLS} FROM inbound_mail WHERE event_id = $2 AND room_id = $1`;
/** Inbound mail in state $1, newest first, at most $2 rows. */
export const SQL_INBOUND_IN_STATE = `SELECT ${INBOUND_COLS} FROM inbound_mail WHERE state = $1 ORDER BY id DESC LIMIT $2`;
/** Any inbound mail, newest first, at most $1 rows. */
export const SQL_INBOUND_ALL = `SELECT ${INBOUND_COLS} FROM inbound_mail ORDER BY id DESC LIMIT $1`;
/** A temporary failure of $1: error $2, next attempt $3 (ms). */
export const SQL_INBOUND_RETRY = "UPDATE inbound_mail SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3 WHERE id = $1 AND state = 'pending'";
/** A permanent failure of $1 with error $2. */
export const SQL_INBOUND_FAILED = "UPDATE inbound_mail SET state = 'failed', attempts = attempts + 1, last_error = $2 WHERE id = $1 AND state = 'pending'";
/** Requeue $1 (not posted), due at $2 (ms). */
export const SQL_INBOUND_REQUEUE = "UPDATE inbound_mail SET state = 'pending', next_attempt_at = $2 WHERE id = $1 AND state <> 'posted'";
/** Delete $1 unless posted. */
export const SQL_INBOUND_DROP = "DELETE FROM inbound_mail WHERE id = $1 AND state <> 'posted'";
/** Insert chunk $2 (seq) of inbound mail $1: $3 data. */
export const SQL_INSERT_INBOUND_CHUNK = "INSERT INTO inbound_raw_chunk (inbound_id, seq, data) VALUES ($1, $2, $3)";
/** The first column `raw` of inbound mail $1 and its chunk count (no row when there is no such mail). */
export const SQL_INBOUND_RAW_HEAD = "SELECT raw, raw_chunks FROM inbound_mail WHERE id = $1";
/** Chunk $2 (seq) of inbound mail $1. */
export const SQL_INBOUND_CHUNK = "SELECT data FROM inbound_raw_chunk WHERE inbound_id = $1 AND seq = $2";
/** Delete the chunks of inbound mail $1 (once the row is gone). */
export const SQL_DROP_INBOUND_CHUNKS = "DELETE FROM inbound_raw_chunk WHERE inbound_id = $1 AND NOT EXISTS (SELECT 1 FROM inbound_mail WHERE id = $1)";
/** Delete the chunks of inbound mail purged at $1 (ms, the purge's now). */
export const SQL_PURGE_INBOUND_CHUNKS = "DELETE FROM inbound_raw_chunk WHERE inbound_id IN (SELECT id FROM inbound_mail WHERE raw_purged_at = $1)";
/** Chunks of kept inbound mail after ($1 inbound_id, $2 seq), in order, at most $3: for re-encryption. */
export const SQL_INBOUND_CHUNK_PAGE = `SELECT c.inbound_id, c.seq, c.data FROM inbound_raw_chunk c
WHERE c.inbound_id > $1 OR (c.inbound_id = $1 AND c.seq > $2) ORDER BY c.inbound_id, c.seq LIMIT $3`;
/** Replace chunk ($1 inbound_id, $2 seq) when it still holds $3 with $4. */
export const SQL_INBOUND_CHUNK_SWAP = "UPDATE inbound_raw_chunk SET data = $4 WHERE inbound_id = $1 AND seq = $2 AND data = $3";
/** Set room_id $2 of inbound mail $1. */
export const SQL_SET_INBOUND_ROOM = "UPDATE inbound_mail SET room_id = $2 WHERE id = $1";
/** Mark inbound mail $1 posted as event $2. */
export const SQL_INBOUND_POSTED = "UPDATE inbound_mail SET state = 'posted', event_id = $2 WHERE id = $1";
const OUTBOUND_COLS =
  "id, room_id, event_id, message_id, envelope_from, recipients, raw, state, attempts, next_attempt_at, last_error, created_at, delay_warned_at, " +
  "raw_purged_at";
/**
 * Queue an outbound mail unless event_id exists, returning it (no row on conflict): $7 = now
 * (ms), due at $8 (ms; now, or later for a mail held open for batching), $9 batch_key and
 * $10 batch_state (sealed JSON), both NULL for a mail that is not batched.
 */
export const SQL_ENQUEUE_OUTBOUND = `
INSERT INTO outbound_mail (room_id, event_id, message_id, envelope_from, recipients, raw, state, attempts, next_attempt_at, created_at, batch_key, batch_state)
VALUES ($1, $2, $3, $4, $5, $6, 'queued', 0, $8, $7, $9, $10)
ON CONFLICT (event_id) DO NOTHING
RETURNING ${OUTBOUND_COLS}`;
/** The columns of an open batch. */
const BATCH_COLS = "id, message_id, batch_key, batch_state, next_attempt_at, created_at";
/** The open batch mail of $1 batch_key at $2 (ms): queued, never attempted, not yet due; newest first. */
export const SQL_OPEN_BATCH = `
SELECT ${BATCH_COLS} FROM outbound_mail
WHERE batch_key = $1 AND state = 'queued' AND attempts = 0 AND next_attempt_at > $2
ORDER BY id DESC LIMIT 1`;
/** The open batch mail with $1 message_id at $2 (ms). */
export const SQL_OPEN_BATCH_BY_MESSAGE_ID = `
SELECT ${BATCH_COLS} FROM outbound_mail
WHERE message_id = $1 AND batch_key IS NOT NULL AND state = 'queued' AND attempts = 0 AND next_attempt_at > $2
ORDER BY id DESC LIMIT 1`;
/** Change open batch $1: $2 raw, $3 batch_state, $4 next_attempt_at, only while still open at $5 (ms). */
export const SQL_UPDATE_BATCH = `
UPDATE outbound_mail SET raw = $2, batch_state = $3, next_attempt_at = $4
WHERE id = $1 AND batch_key IS NOT NULL AND state = 'queued' AND attempts = 0 AND next_attempt_at > $5`;
/** Delete open batch $1 (its recipients cascade), only while still open at $2 (ms). */
export const SQL_CANCEL_BATCH = `
DELETE FROM outbound_mail WHERE id = $1 AND batch_key IS NOT NULL AND state = 'queued' AND attempts = 0 AND next_attempt_at > $2`;
/** The event and batch state of the outbound mail(s) with $1 message_id. */
export const SQL_OUTBOUND_EVENTS_BY_MESSAGE_ID = "SELECT id, event_id, batch_state FROM outbound_mail WHERE message_id = $1";
/** Forget the Matrix → mail mapping of $1 room_id, $2 event_id. */
export const SQL_DELETE_MESSAGE = "DELETE FROM messages WHERE room_id = $1 AND event_id = $2";
/** Outbound mail by $1 event_id. */
export const SQL_OUTBOUND_BY_EVENT = `SELECT ${OUTBOUND_COLS} FROM outbound_mail WHERE event_id = $1`;
/** Queued/deferred outbound mail due at $1 (ms), oldest first, at most $2 rows. */
export const SQL_DUE_OUTBOUND = `
SELECT ${OUTBOUND_COLS} FROM outbound_mail
WHERE state IN ('queued', 'deferred') AND next_attempt_at <= $1
ORDER BY id LIMIT $2`;
/** Mark outbound mail $1 sent (recipients emptied). */
export const SQL_OUTBOUND_SENT = `
UPDATE outbound_mail SET state = 'sent', recipients = '[]', attempts = attempts + 1, last_error = NULL WHERE id = $1`;
/** Defer outbound mail $1: $2 remaining recipients (JSON), $3 next attempt (ms), $4 error. */
export const SQL_OUTBOUND_DEFERRED = `
UPDATE outbound_mail SET state = 'deferred', recipients = $2, next_attempt_at = $3, last_error = $4, attempts = attempts + 1
WHERE id = $1`;
/** Mark outbound mail $1 bounced with error $2. */
export const SQL_OUTBOUND_BOUNCED = "UPDATE outbound_mail SET state = 'bounced', last_error = $2, attempts = attempts + 1 WHERE id = $1";
/** Outbound mail by $1 id. */
export const SQL_OUTBOUND_BY_ID = `SELECT ${OUTBOUND_COLS} FROM outbound_mail WHERE id = $1`;
/** Remaining recipients (JSON) of outbound mail $1. */
export const SQL_OUTBOUND_RECIPIENT_LIST = "SELECT recipients FROM outbound_mail WHERE id = $1";
/**
 * Record one attempt of outbound mail $1: $2 state, $3 remaining recipients (JSON), $4 next
 * attempt (ms), $5 last error.
 */
export const SQL_OUTBOUND_ATTEMPT = `
UPDATE outbound_mail SET state = $2, recipients = $3, next_attempt_at = $4, last_error = $5, attempts = attempts + 1
WHERE id = $1`;
/** Remember the delay notice of outbound mail $1 at $2 (ms). */
export const SQL_OUTBOUND_DELAY_WARNED = "UPDATE outbound_mail SET delay_warned_at = $2 WHERE id = $1";
/** Earliest next_attempt_at after $1 (ms) of queued/deferred outbound mail, as `t` (NULL when none). */
export const SQL_NEXT_OUTBOUND_ATTEMPT = `
SELECT MIN(next_attempt_at) AS t FROM outbound_mail WHERE state IN ('queued', 'deferred') AND next_attempt_at > $1`;

const RECIPIENT_COLS = "outbound_id, address, state, attempts, last_code, last_reply, next_attempt_at, reported, updated_at";
/** A pending recipient of a new outbound mail: $1 outbound_id, $2 address, $3 now (ms); duplicates ignored. */
export const SQL_INSERT_OUTBOUND_RECIPIENT = `
INSERT INTO outbound_recipients (outbound_id, address, state, attempts, last_code, last_reply, next_attempt_at, reported, updated_at)
VALUES ($1, $2, 'pending', 0, NULL, NULL, $3, FALSE, $3)
ON CONFLICT (outbound_id, address) DO NOTHING`;
/**
 * Upsert the outcome of one attempt for one recipient: $1 outbound_id, $2 address, $3 state,
 * $4 last_code, $5 last_reply, $6 next_attempt_at (ms or NULL), $7 now (ms). Counts the attempt;
 * keeps `reported`.
 */
export const SQL_UPSERT_OUTBOUND_RECIPIENT = `
INSERT INTO outbound_recipients (outbound_id, address, state, attempts, last_code, last_reply, next_attempt_at, reported, updated_at)
VALUES ($1, $2, $3, 1, $4, $5, $6, FALSE, $7)
ON CONFLICT (outbound_id, address) DO UPDATE SET state = excluded.state, attempts = outbound_recipients.attempts + 1,
  last_code = excluded.last_code, last_reply = excluded.last_reply, next_attempt_at = excluded.next_attempt_at,
  updated_at = excluded.updated_at`;
/** Recipients of outbound mail $1, by address. */
export const SQL_OUTBOUND_RECIPIENTS = `SELECT ${RECIPIENT_COLS} FROM outbound_recipients WHERE outbound_id = $1 ORDER BY address`;
/** Failed, unreported recipients of all outbound mail, by mail then address, at most $1 rows. */
export const SQL_UNREPORTED_OUTBOUND_FAILURES = `
SELECT ${RECIPIENT_COLS} FROM outbound_recipients WHERE state = 'failed' AND reported = FALSE
ORDER BY outbound_id, address LIMIT $1`;
/** Mark the failure of recipient $2 of outbound mail $1 reported; $3 now (ms). */
export const SQL_OUTBOUND_RECIPIENT_REPORTED = `
UPDATE outbound_recipients SET reported = TRUE, updated_at = $3 WHERE outbound_id = $1 AND address = $2`;

// Queue administration (the `queue` CLI) and queue gauges

/** Outbound mail in state $1, newest first, at most $2 rows. */
export const SQL_OUTBOUND_IN_STATE = `SELECT ${OUTBOUND_COLS} FROM outbound_mail WHERE state = $1 ORDER BY id DESC LIMIT $2`;
/** Any outbound mail, newest first, at most $1 rows. */
export const SQL_OUTBOUND_ALL = `SELECT ${OUTBOUND_COLS} FROM outbound_mail ORDER BY id DESC LIMIT $1`;
/** State, attempts and remaining recipients (JSON) of outbound mail $1; no row once its raw bytes were purged (migration 5). */
export const SQL_OUTBOUND_REQUEUE_READ = "SELECT state, attempts, recipients FROM outbound_mail WHERE id = $1 AND raw_purged_at IS NULL";
/**
 * Every recipient of outbound mail $1 not accepted yet becomes due at $2 (ms): `failed` turns
 * `deferred`, failures unreported.
 */
export const SQL_OUTBOUND_RECIPIENTS_REQUEUE = `
UPDATE outbound_recipients SET state = CASE WHEN state = 'failed' THEN 'deferred' ELSE state END,
  next_attempt_at = $2, reported = FALSE, updated_at = $2
WHERE outbound_id = $1 AND state <> 'sent'`;
/** Requeue outbound mail $1 (not sent): $2 state, $3 recipients (JSON), due at $4 (ms). */
export const SQL_OUTBOUND_REQUEUE = "UPDATE outbound_mail SET state = $2, recipients = $3, next_attempt_at = $4 WHERE id = $1 AND state <> 'sent'";
/** Delete outbound mail $1 unless sent (its recipients first: SQL_OUTBOUND_DROP_RECIPIENTS). */
export const SQL_OUTBOUND_DROP = "DELETE FROM outbound_mail WHERE id = $1 AND state <> 'sent'";
/** Delete the recipients of outbound mail $1 unless it was sent. */
export const SQL_OUTBOUND_DROP_RECIPIENTS = `
DELETE FROM outbound_recipients WHERE outbound_id = $1 AND EXISTS (SELECT 1 FROM outbound_mail m WHERE m.id = $1 AND m.state <> 'sent')`;
/** Sizes of both queues: waiting items, the oldest waiting item's arrival (ms, NULL when none), given-up items. */
export const SQL_QUEUE_COUNTS = `
SELECT
  (SELECT COUNT(*) FROM inbound_mail WHERE state = 'pending') AS inbound_waiting,
  (SELECT MIN(received_at) FROM inbound_mail WHERE state = 'pending') AS inbound_oldest,
  (SELECT COUNT(*) FROM inbound_mail WHERE state = 'failed') AS inbound_failed,
  (SELECT COUNT(*) FROM outbound_mail WHERE state IN ('queued', 'deferred')) AS outbound_waiting,
  (SELECT MIN(created_at) FROM outbound_mail WHERE state IN ('queued', 'deferred')) AS outbound_oldest,
  (SELECT COUNT(*) FROM outbound_mail WHERE state = 'bounced') AS outbound_failed`;

// Appservice transaction journal (migration 4)

/** Record transaction $1 unless known; $2 received_at (ms). Returns a row only when it is new. */
export const SQL_INSERT_APPSERVICE_TXN = `
INSERT INTO appservice_txns (txn_id, received_at) VALUES ($1, $2)
ON CONFLICT (txn_id) DO NOTHING
RETURNING txn_id`;
const MATRIX_EVENT_COLS = "seq, event_id, room_id, txn_id, event, state, attempts, last_error, next_attempt_at, received_at, done_at";
/**
 * Journal a pending event unless its event ID is known: $1 event_id, $2 room_id, $3 txn_id,
 * $4 event (JSON text), $5 now (ms: received_at and next_attempt_at). Returns a row only when it is new.
 */
export const SQL_INSERT_MATRIX_EVENT = `
INSERT INTO matrix_events (event_id, room_id, txn_id, event, state, attempts, next_attempt_at, received_at)
VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5)
ON CONFLICT (event_id) DO NOTHING
RETURNING seq`;
/** The oldest pending event of each room, due or not, oldest first, at most $1 rows. */
export const SQL_MATRIX_EVENT_HEADS = `
SELECT ${MATRIX_EVENT_COLS} FROM matrix_events e
WHERE e.state = 'pending'
  AND NOT EXISTS (SELECT 1 FROM matrix_events p WHERE p.state = 'pending' AND p.room_id = e.room_id AND p.seq < e.seq)
ORDER BY e.seq LIMIT $1`;
/** Journaled event by $1 event_id. */
export const SQL_MATRIX_EVENT_BY_ID = `SELECT ${MATRIX_EVENT_COLS} FROM matrix_events WHERE event_id = $1`;
/** Pending event $1 handled; $2 now (ms). */
export const SQL_MATRIX_EVENT_DONE = `
UPDATE matrix_events SET state = 'done', done_at = $2 WHERE event_id = $1 AND state = 'pending'`;
/** Pending event $1 failed, to retry: $2 error, $3 next_attempt_at (ms). */
export const SQL_MATRIX_EVENT_RETRY = `
UPDATE matrix_events SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3 WHERE event_id = $1 AND state = 'pending'`;
/** Pending event $1 failed for good: $2 error, $3 now (ms). */
export const SQL_MATRIX_EVENT_FAILED = `
UPDATE matrix_events SET state = 'failed', attempts = attempts + 1, last_error = $2, done_at = $3 WHERE event_id = $1 AND state = 'pending'`;
/** Delete done/failed events finished before $1 (ms). */
export const SQL_PRUNE_MATRIX_EVENTS = "DELETE FROM matrix_events WHERE state <> 'pending' AND done_at < $1";
/** Delete transaction IDs received before $1 (ms). */
export const SQL_PRUNE_APPSERVICE_TXNS = "DELETE FROM appservice_txns WHERE received_at < $1";

// Stored mail retention and re-encryption (migration 5; src/store/retention.ts, src/store/reencrypt.ts)

/**
 * Empty the raw bytes of posted inbound mail received before $3 (ms): raw = $1 (empty),
 * raw_purged_at = $2 (now, ms); oldest first, at most $4 rows. The outer conditions repeat the
 * inner ones so a row that changed meanwhile is left alone.
 */
export const SQL_PURGE_INBOUND_RAW = `
UPDATE inbound_mail SET raw = $1, raw_purged_at = $2, raw_chunks = 0
WHERE state = 'posted' AND raw_purged_at IS NULL AND id IN (
  SELECT id FROM inbound_mail WHERE state = 'posted' AND raw_purged_at IS NULL AND received_at < $3 ORDER BY id LIMIT $4)`;
/**
 * Empty the raw bytes of outbound mail queued before $3 (ms) that is sent, or bounced with every
 * failed recipient reported: raw = $1 (empty), raw_purged_at = $2 (now, ms); oldest first, at
 * most $4 rows.
 */
export const SQL_PURGE_OUTBOUND_RAW = `
UPDATE outbound_mail SET raw = $1, batch_state = NULL, raw_purged_at = $2
WHERE state IN ('sent', 'bounced') AND raw_purged_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM outbound_recipients r WHERE r.outbound_id = outbound_mail.id AND r.state = 'failed' AND r.reported = FALSE)
  AND id IN (
    SELECT m.id FROM outbound_mail m
    WHERE m.state IN ('sent', 'bounced') AND m.raw_purged_at IS NULL AND m.created_at < $3
      AND NOT EXISTS (SELECT 1 FROM outbound_recipients f WHERE f.outbound_id = m.id AND f.state = 'failed' AND f.reported = FALSE)
    ORDER BY m.id LIMIT $4)`;
/** Inbound rows with id > $1 whose raw is kept, by id, at most $2: id and raw. */
export const SQL_INBOUND_RAW_PAGE = "SELECT id, raw FROM inbound_mail WHERE id > $1 AND raw_purged_at IS NULL ORDER BY id LIMIT $2";
/** Outbound rows with id > $1 whose raw is kept, by id, at most $2: id and raw. */
export const SQL_OUTBOUND_RAW_PAGE = "SELECT id, raw FROM outbound_mail WHERE id > $1 AND raw_purged_at IS NULL ORDER BY id LIMIT $2";
/** Replace raw of inbound row $1 with $3 if it still is $2 (not purged or rewritten meanwhile). */
export const SQL_INBOUND_RAW_SWAP = "UPDATE inbound_mail SET raw = $3 WHERE id = $1 AND raw = $2 AND raw_purged_at IS NULL";
/** Replace raw of outbound row $1 with $3 if it still is $2 (not purged or rewritten meanwhile). */
export const SQL_OUTBOUND_RAW_SWAP = "UPDATE outbound_mail SET raw = $3 WHERE id = $1 AND raw = $2 AND raw_purged_at IS NULL";

/** Give room $1 the unsubscribe token $2 unless it has one; $3 = now (ms). */
export const SQL_PUT_UNSUBSCRIBE_TOKEN = "INSERT INTO portal_unsubscribe (room_id, token, created_at) VALUES ($1, $2, $3) ON CONFLICT (room_id) DO NOTHING";
/** The unsubscribe token of room $1. */
export const SQL_UNSUBSCRIBE_TOKEN_OF_ROOM = "SELECT token FROM portal_unsubscribe WHERE room_id = $1";
/** The room of unsubscribe token $1. */
export const SQL_ROOM_OF_UNSUBSCRIBE_TOKEN = "SELECT room_id FROM portal_unsubscribe WHERE token = $1";
/** Record that $2 address unsubscribed from room $1; $3 = now (ms). */
export const SQL_ADD_OPTOUT = "INSERT INTO portal_optouts (room_id, address, created_at) VALUES ($1, $2, $3) ON CONFLICT (room_id, address) DO NOTHING";
/** The addresses that unsubscribed from room $1. */
export const SQL_OPTOUTS_OF_ROOM = "SELECT address FROM portal_optouts WHERE room_id = $1";

/** Set user $1's rule for $2 pattern to $3 (`block`/`allow`); $4 = now (ms). */
export const SQL_PUT_CONTACT_RULE = `
INSERT INTO contact_rules (user_id, pattern, rule, created_at, reason, quiet) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (user_id, pattern) DO UPDATE SET rule = excluded.rule, created_at = excluded.created_at, reason = excluded.reason, quiet = excluded.quiet`;
const CONTACT_RULE_COLS = "pattern, rule, reason, quiet, created_at";
/** User $1's contact rules, by pattern. */
export const SQL_CONTACT_RULES_OF_USER = `SELECT ${CONTACT_RULE_COLS} FROM contact_rules WHERE user_id = $1 ORDER BY pattern`;
/** User $1's rules for $2 address and $3 domain. */
export const SQL_CONTACT_RULES_FOR = `SELECT ${CONTACT_RULE_COLS} FROM contact_rules WHERE user_id = $1 AND pattern IN ($2, $3)`;

/** User $1's settings row. */
export const SQL_USER_SETTINGS = "SELECT user_id, contact_mode, personal_mailbox, display_name FROM user_settings WHERE user_id = $1";
/** Insert or replace user $1's settings. */
export const SQL_PUT_USER_SETTINGS = `
INSERT INTO user_settings (user_id, contact_mode, personal_mailbox, display_name, updated_at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (user_id) DO UPDATE SET contact_mode = excluded.contact_mode, personal_mailbox = excluded.personal_mailbox,
  display_name = excluded.display_name, updated_at = excluded.updated_at`;

const CONTACT_REQUEST_COLS = "user_id, sender, sender_name, verified, subject, preview, state, attempts, first_at, last_at, notified_at";
/** A new contact request ($1..$6 user, sender, name, verified, subject, preview; $7 now); nothing when one exists. */
export const SQL_INSERT_CONTACT_REQUEST = `
INSERT INTO contact_requests (user_id, sender, sender_name, verified, subject, preview, state, attempts, first_at, last_at)
VALUES ($1, $2, $3, $4, $5, $6, 'pending', 1, $7, $7) ON CONFLICT (user_id, sender) DO NOTHING`;
/** Count another attempt of a known request ($1 user, $2 sender, $3 now). */
export const SQL_BUMP_CONTACT_REQUEST = "UPDATE contact_requests SET attempts = attempts + 1, last_at = $3 WHERE user_id = $1 AND sender = $2";
/** User $1's request from $2. */
export const SQL_CONTACT_REQUEST = `SELECT ${CONTACT_REQUEST_COLS} FROM contact_requests WHERE user_id = $1 AND sender = $2`;
/** User $1's requests, newest attempt first. */
export const SQL_CONTACT_REQUESTS_OF_USER = `SELECT ${CONTACT_REQUEST_COLS} FROM contact_requests WHERE user_id = $1 ORDER BY last_at DESC, sender`;
/** User $1's requests in state $2, newest attempt first. */
export const SQL_CONTACT_REQUESTS_IN_STATE = `SELECT ${CONTACT_REQUEST_COLS} FROM contact_requests WHERE user_id = $1 AND state = $2 ORDER BY last_at DESC, sender`;
/** How many of user $1's requests they were told of since $2. */
export const SQL_COUNT_CONTACT_REQUEST_NOTICES = "SELECT COUNT(*) AS n FROM contact_requests WHERE user_id = $1 AND notified_at >= $2";
/** User $1 was told of the request from $2 at $3. */
export const SQL_CONTACT_REQUEST_NOTIFIED = "UPDATE contact_requests SET notified_at = $3 WHERE user_id = $1 AND sender = $2";
/** Decide user $1's request from $2: state $3. */
export const SQL_SET_CONTACT_REQUEST_STATE = "UPDATE contact_requests SET state = $3 WHERE user_id = $1 AND sender = $2";

/** Add app password: $1 user, $2 label, $3 hash, $4 now (ms); nothing when the label is taken. */
export const SQL_ADD_APP_PASSWORD = `
INSERT INTO app_passwords (user_id, label, hash, created_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (user_id, label) DO NOTHING
RETURNING id, user_id, label, hash, created_at, last_used_at`;
/** User $1's app passwords, by label. */
export const SQL_APP_PASSWORDS_OF_USER = "SELECT id, user_id, label, hash, created_at, last_used_at FROM app_passwords WHERE user_id = $1 ORDER BY label";
/** Delete user $1's app password labelled $2. */
export const SQL_REVOKE_APP_PASSWORD = "DELETE FROM app_passwords WHERE user_id = $1 AND label = $2";
/** App password $1 was used at $2 (ms). */
export const SQL_APP_PASSWORD_USED = "UPDATE app_passwords SET last_used_at = $2 WHERE id = $1";

/** The crypto store snapshot of Matrix user $1 (migration 12). */
export const SQL_CRYPTO_STORE_OF_USER = "SELECT device_id, state FROM crypto_store WHERE user_id = $1";
/** Save user $1's device $2 snapshot $3 at $4 (ms), replacing the previous one. */
export const SQL_SAVE_CRYPTO_STORE = `
INSERT INTO crypto_store (user_id, device_id, state, updated_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (user_id) DO UPDATE SET device_id = excluded.device_id, state = excluded.state, updated_at = excluded.updated_at`;
/** Forget user $1's crypto store. */
export const SQL_DELETE_CRYPTO_STORE = "DELETE FROM crypto_store WHERE user_id = $1";
