/**
 * Migration 3: per-recipient delivery state of outbound mail, persisted.
 *
 * Before, what happened to each recipient lived in the queue's memory: a 550 for one
 * recipient was reported only when the whole message was done (up to `max_retry_hours`),
 * and a restart lost it. Now:
 *
 * - `outbound_recipients`: one row per (outbound mail, envelope recipient).
 *   - `state`: `pending` (not attempted yet), `sent` (a server accepted it), `deferred`
 *     (temporary failure, retried at `next_attempt_at`), `failed` (permanent: 5yz, a domain
 *     that cannot receive mail, or retries exhausted). `sent` and `failed` are final.
 *   - `attempts`: delivery attempts made for this recipient.
 *   - `last_code`: SMTP reply code of the last attempt (or the synthetic code of a routing
 *     error, e.g. 556 for a null MX); NULL when no server answered (network error).
 *   - `last_reply`: the remote server's reply text (or the local error) of the last attempt;
 *     shown to users in failure and delay notices.
 *   - `next_attempt_at`: epoch ms of the next try while `pending`/`deferred`; NULL when final.
 *   - `reported`: for `failed`, whether the failure notice went out. A failure recorded but not
 *     yet reported (crash, Matrix down) is reported after a restart; a reported one never again.
 *   - `updated_at`: epoch ms of the last change.
 *   Rows are written at enqueue (`pending`) and with every attempt, in the same transaction
 *   as the mail's own row. Mails queued before this migration get their rows on their next
 *   attempt (the recording upserts).
 * - `outbound_mail.delay_warned_at`: epoch ms when the "delivery is delayed" notice went out
 *   (once per message), NULL before.
 */

/** SQL of migration 3 (shared dialect; see `db/dialect.ts`). */
export const sql003OutboundRecipients = `
CREATE TABLE outbound_recipients (
  outbound_id      BIGINT NOT NULL REFERENCES outbound_mail (id) ON DELETE CASCADE,
  address          TEXT NOT NULL,
  state            TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'deferred', 'failed')),
  attempts         INTEGER NOT NULL DEFAULT 0,
  last_code        INTEGER,
  last_reply       TEXT,
  next_attempt_at  BIGINT,
  reported         {{BOOL}} NOT NULL DEFAULT FALSE,
  updated_at       BIGINT NOT NULL,
  PRIMARY KEY (outbound_id, address)
);
CREATE INDEX outbound_recipients_unreported ON outbound_recipients (outbound_id) WHERE state = 'failed' AND reported = FALSE;

ALTER TABLE outbound_mail ADD COLUMN delay_warned_at BIGINT;
`;
