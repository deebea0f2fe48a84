/**
 * Migration 2: sender authentication travels as data.
 *
 * - `inbound_mail`: the decisions made before the 250, as columns instead of bytes prepended
 *   to the raw message: whether the sender authenticated (`sender_verified`), the authentication
 *   verdict (`auth`, JSON `{spf, dkim, dmarc, arc, verified}`), the spam verdict (`spam`, JSON
 *   `{action, score, requiredScore}` or NULL when no check ran), the From display name as
 *   claimed (`sender_name`, shown only for verified senders), the mail's To/Cc addresses
 *   (`participants`, JSON array), and a hash of envelope sender and message (`content_hash`):
 *   the dedupe key becomes (target, Message-ID, content hash), so only a true retransmission is
 *   deduplicated. Rows from before this migration count as unverified.
 * - `messages`: who took part in a message besides its sender (`participants`), so a reply
 *   may join a thread only if its sender took part; `via_list` when it went to a room
 *   mailbox's subscribers (each hidden from the others), so replies to it do too.
 * - `portals`: a DM with an unverified sender is a portal of its own (`remote_verified`).
 * - `room_mailboxes.policy`: who may post to a room mailbox (`open`, `members`, `verified`).
 * - `room_subscribers`: who receives a room mailbox's top-level messages; an address becomes a
 *   subscriber by confirming a mail (`pending` with a token, then `active`) or by a moderator.
 * - `outbound_mail_sender`: an index for the per-user sending limits.
 * - `inbound_mail.kind`: `dsn` for a delivery report about mail the bridge sent, shown as a
 *   notice replying to that message; `mail` otherwise.
 * - `inbound_mail.envelope_from`: the MAIL FROM reverse-path (NULL for `<>`), where a DSN goes.
 * - `inbound_mail.next_attempt_at`: posting is a queue with backoff; a row waits until then.
 *   The head of each target (the oldest pending row) blocks only its own target, so per-room
 *   order is kept and a failing room never holds back another. DM targets now name the remote
 *   party too (`dm:<user> <address> v|u`), so one failing DM never holds back another DM.
 */

/** SQL of migration 2. */
export const sql002SenderAuth = `
ALTER TABLE inbound_mail ADD COLUMN sender_verified {{BOOL}} NOT NULL DEFAULT FALSE;
ALTER TABLE inbound_mail ADD COLUMN sender_name TEXT;
ALTER TABLE inbound_mail ADD COLUMN auth TEXT;
ALTER TABLE inbound_mail ADD COLUMN spam TEXT;
ALTER TABLE inbound_mail ADD COLUMN participants TEXT NOT NULL DEFAULT '[]';
ALTER TABLE inbound_mail ADD COLUMN content_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE inbound_mail ADD COLUMN next_attempt_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE inbound_mail ADD COLUMN envelope_from TEXT;
ALTER TABLE inbound_mail ADD COLUMN kind TEXT NOT NULL DEFAULT 'mail' CHECK (kind IN ('mail', 'dsn'));
CREATE INDEX inbound_mail_head ON inbound_mail (state, target, id);
DROP INDEX inbound_mail_dedupe;
CREATE UNIQUE INDEX inbound_mail_dedupe ON inbound_mail (target, message_id, content_hash);

ALTER TABLE messages ADD COLUMN participants TEXT NOT NULL DEFAULT '[]';
ALTER TABLE messages ADD COLUMN via_list {{BOOL}} NOT NULL DEFAULT FALSE;

ALTER TABLE room_mailboxes ADD COLUMN policy TEXT NOT NULL DEFAULT 'open' CHECK (policy IN ('open', 'members', 'verified'));
CREATE TABLE room_subscribers (
  room_id     TEXT NOT NULL,
  address     TEXT NOT NULL,
  state       TEXT NOT NULL CHECK (state IN ('pending', 'active')),
  token       TEXT,
  created_at  BIGINT NOT NULL,
  PRIMARY KEY (room_id, address)
);
CREATE UNIQUE INDEX room_subscribers_token ON room_subscribers (token);

CREATE INDEX outbound_mail_sender ON outbound_mail (envelope_from, created_at);

ALTER TABLE portals ADD COLUMN remote_verified {{BOOL}} NOT NULL DEFAULT TRUE;
DROP INDEX portals_dm_key;
CREATE UNIQUE INDEX portals_dm_key ON portals (local_user_id, remote_address, remote_verified) WHERE kind = 'dm';
`;
