/**
 * Migration 1: the initial schema (ghosts, room mailboxes, portals, message mappings,
 * inbound and outbound queues). Written in the shared dialect (see `db/dialect.ts`).
 */

/** SQL of migration 1. Times are epoch ms (BIGINT); JSON columns are TEXT. */
export const sql001Initial = `
CREATE TABLE ghosts (
  address       TEXT PRIMARY KEY,
  user_id       TEXT NOT NULL UNIQUE,
  display_name  TEXT,
  updated_at    BIGINT NOT NULL
);

CREATE TABLE room_mailboxes (
  localpart   TEXT PRIMARY KEY,
  room_id     TEXT NOT NULL UNIQUE,
  created_by  TEXT NOT NULL,
  created_at  BIGINT NOT NULL
);

CREATE TABLE portals (
  room_id         TEXT PRIMARY KEY,
  kind            TEXT NOT NULL CHECK (kind IN ('group', 'mailbox', 'dm')),
  local_user_id   TEXT,
  remote_address  TEXT,
  subject         TEXT,
  encrypted       {{BOOL}} NOT NULL,
  created_at      BIGINT NOT NULL
);
CREATE UNIQUE INDEX portals_dm_key ON portals (local_user_id, remote_address) WHERE kind = 'dm';

CREATE TABLE messages (
  room_id     TEXT NOT NULL,
  event_id    TEXT NOT NULL,
  message_id  TEXT NOT NULL,
  refs        TEXT NOT NULL,
  direction   TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
  sender      TEXT NOT NULL,
  subject     TEXT,
  created_at  BIGINT NOT NULL,
  PRIMARY KEY (room_id, event_id)
);
CREATE INDEX messages_message_id ON messages (message_id);

CREATE TABLE inbound_mail (
  id                 {{AUTOID}},
  target             TEXT NOT NULL,
  room_id            TEXT,
  dm_local_user_id   TEXT,
  reply_to_event_id  TEXT,
  message_id         TEXT NOT NULL,
  sender             TEXT NOT NULL,
  raw                {{BLOB}} NOT NULL,
  state              TEXT NOT NULL CHECK (state IN ('pending', 'posted', 'failed')),
  attempts           INTEGER NOT NULL DEFAULT 0,
  event_id           TEXT,
  last_error         TEXT,
  received_at        BIGINT NOT NULL,
  CHECK (room_id IS NOT NULL OR dm_local_user_id IS NOT NULL)
);
CREATE UNIQUE INDEX inbound_mail_dedupe ON inbound_mail (target, message_id);
CREATE INDEX inbound_mail_state ON inbound_mail (state, id);

CREATE TABLE outbound_mail (
  id               {{AUTOID}},
  room_id          TEXT NOT NULL,
  event_id         TEXT NOT NULL UNIQUE,
  message_id       TEXT NOT NULL,
  envelope_from    TEXT NOT NULL,
  recipients       TEXT NOT NULL,
  raw              {{BLOB}} NOT NULL,
  state            TEXT NOT NULL CHECK (state IN ('queued', 'deferred', 'sent', 'bounced')),
  attempts         INTEGER NOT NULL DEFAULT 0,
  next_attempt_at  BIGINT NOT NULL,
  last_error       TEXT,
  created_at       BIGINT NOT NULL
);
CREATE INDEX outbound_mail_due ON outbound_mail (state, next_attempt_at);
`;
