/**
 * Migration 11: app passwords for SMTP submission (`src/mail/submission/`).
 *
 * `app_passwords`: per local user, named passwords a mail client or script logs in with on the
 * submission port (RFC 6409, AUTH per RFC 4954). Only a salted slow hash is kept
 * (`scrypt$<N>$<r>$<p>$<salt>$<key>`, see `src/mail/submission/appPasswords.ts`), never the
 * password. A label is unique per user; `last_used_at` is set on each successful login.
 */

/** SQL of migration 11 (shared dialect; see `db/dialect.ts`). */
export const sql011AppPasswords = `
CREATE TABLE app_passwords (
  id            {{AUTOID}},
  user_id       TEXT NOT NULL,
  label         TEXT NOT NULL,
  hash          TEXT NOT NULL,
  created_at    BIGINT NOT NULL,
  last_used_at  BIGINT,
  UNIQUE (user_id, label)
);
`;
