/**
 * Migration 9: contact requests and personal settings.
 *
 * `user_settings`: per local user, how mail from a stranger to their personal mailbox is
 * handled (`contact_mode`: `invite` opens a DM invite at once, `hold` answers 451 4.7.1 until
 * the user decides), whether the personal mailbox is on, and the display name on their outgoing
 * mail (null: their Matrix display name).
 *
 * `contact_requests`: held mail from a stranger, one row per user and sender address: what the
 * user was shown (subject, first lines, verdict), how often the sending MTA retried, and the
 * decision (`pending`, then `accepted` or `refused`), and when the user was told of it
 * (`notified_at`; null: not yet, told again on the next attempt).
 *
 * `room_mailboxes` gains a `signature`: a line that ends the room's outgoing mail.
 * `inbound_mail` is indexed by its posted event (`!email headers` looks a mail up by it).
 *
 * `contact_rules` gains the refusal's reason and whether the refusal is quiet (a bare 550). Every
 * existing DM portal's (verified) address becomes an `allow` rule: those are people the user has already
 * exchanged mail with.
 */

/** SQL of migration 9 (shared dialect; see `db/dialect.ts`). */
export const sql009ContactRequests = `
CREATE TABLE user_settings (
  user_id           TEXT PRIMARY KEY,
  contact_mode      TEXT NOT NULL DEFAULT 'invite' CHECK (contact_mode IN ('invite', 'hold')),
  personal_mailbox  {{BOOL}} NOT NULL DEFAULT TRUE,
  display_name      TEXT,
  updated_at        BIGINT NOT NULL
);
CREATE TABLE contact_requests (
  user_id       TEXT NOT NULL,
  sender        TEXT NOT NULL,
  sender_name   TEXT,
  verified      {{BOOL}} NOT NULL,
  subject       TEXT,
  preview       TEXT,
  state         TEXT NOT NULL CHECK (state IN ('pending', 'accepted', 'refused')),
  attempts      INTEGER NOT NULL,
  first_at      BIGINT NOT NULL,
  last_at       BIGINT NOT NULL,
  notified_at   BIGINT,
  PRIMARY KEY (user_id, sender)
);
ALTER TABLE contact_rules ADD COLUMN reason TEXT;
ALTER TABLE room_mailboxes ADD COLUMN signature TEXT;
CREATE INDEX inbound_mail_event ON inbound_mail (event_id);
ALTER TABLE contact_rules ADD COLUMN quiet {{BOOL}} NOT NULL DEFAULT FALSE;
INSERT INTO contact_rules (user_id, pattern, rule, created_at, reason, quiet)
  SELECT DISTINCT local_user_id, remote_address, 'allow', 0, NULL, FALSE FROM portals
  WHERE kind = 'dm' AND local_user_id IS NOT NULL AND remote_address IS NOT NULL AND remote_verified
  ON CONFLICT DO NOTHING;
`;
