/**
 * Migration 11: app passwords for SMTP submission. Reserved; its SQL is written with the
 * submission work.
 */

/** SQL of migration 11 (shared dialect; see `db/dialect.ts`). */
export const sql011AppPasswords = `
CREATE TABLE reserved_011 (id INTEGER PRIMARY KEY);
DROP TABLE reserved_011;
`;
