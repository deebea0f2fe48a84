/**
 * Migration 8: who may mail a user's personal mailbox (contact rules).
 *
 * `contact_rules`: per local user, an address (`bob@example.org`) or a whole domain
 * (`example.org`) that is blocked (its mail gets 550 5.7.1) or allowed (an earlier block no
 * longer applies). An address rule wins over its domain's rule.
 */

/** SQL of migration 8 (shared dialect; see `db/dialect.ts`). */
export const sql008ContactRules = `
CREATE TABLE contact_rules (
  user_id     TEXT NOT NULL,
  pattern     TEXT NOT NULL,
  rule        TEXT NOT NULL CHECK (rule IN ('block', 'allow')),
  created_at  BIGINT NOT NULL,
  PRIMARY KEY (user_id, pattern)
);
`;
