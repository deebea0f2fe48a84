/**
 * Migration 4: the journal of appservice transactions.
 *
 * The homeserver pushes room events to the bridge in transactions (Application Service API ›
 * Pushing events, `PUT /_matrix/app/v1/transactions/{txnId}`) and retries a transaction until
 * it is answered 200. The bridge answers 200 only once the transaction's events are committed
 * here, and handles them afterwards from this table, so a crash between the 200 and the end of
 * the handling loses nothing (src/matrix/appserviceTransactions.ts).
 *
 * - `appservice_txns`: one row per transaction ID seen (`txn_id`, the homeserver's, unique per
 *   appservice), with `received_at` (epoch ms). A replayed transaction ID is a no-op, also after
 *   a restart ("the application service should … ignore a transaction ID it has already
 *   processed", same section). Rows older than the retention are pruned.
 * - `matrix_events`: one row per room event of a transaction.
 *   - `seq`: arrival order (the primary key). Events are handled in `seq` order per room.
 *   - `event_id`: UNIQUE: an event that comes again (in another transaction) is not recorded
 *     again, so it is handled once.
 *   - `room_id`, `txn_id` (the transaction that brought it), `event` (the event as received,
 *     JSON text).
 *   - `state`: `pending` (to handle), `done` (the handler resolved), `failed` (the handler threw
 *     on every one of its attempts). `done` and `failed` are final.
 *   - `attempts`: handler runs that threw; `last_error`: the last one's message;
 *     `next_attempt_at`: epoch ms before which a pending event is not retried (backoff).
 *   - `received_at`: epoch ms of the commit; `done_at`: epoch ms when it became `done` or
 *     `failed` (NULL while pending).
 *   The head of each room (its oldest pending event) blocks only that room: one room's events
 *   are handled in order, different rooms independently (index `matrix_events_head`).
 */

/** SQL of migration 4 (shared dialect; see `db/dialect.ts`). */
export const sql004AppserviceTransactions = `
CREATE TABLE appservice_txns (
  txn_id       TEXT PRIMARY KEY,
  received_at  BIGINT NOT NULL
);
CREATE INDEX appservice_txns_received ON appservice_txns (received_at);

CREATE TABLE matrix_events (
  seq              {{AUTOID}},
  event_id         TEXT NOT NULL UNIQUE,
  room_id          TEXT NOT NULL,
  txn_id           TEXT NOT NULL,
  event            TEXT NOT NULL,
  state            TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
  attempts         INTEGER NOT NULL DEFAULT 0,
  last_error       TEXT,
  next_attempt_at  BIGINT NOT NULL,
  received_at      BIGINT NOT NULL,
  done_at          BIGINT
);
CREATE INDEX matrix_events_head ON matrix_events (room_id, seq) WHERE state = 'pending';
CREATE INDEX matrix_events_finished ON matrix_events (done_at) WHERE state <> 'pending';
`;
