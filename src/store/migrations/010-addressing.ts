/**
 * Migration 10: addressing (mail domains, aliases, catch-all, 1:N). Reserved; its SQL is
 * written with the addressing work.
 */

/** SQL of migration 10 (shared dialect; see `db/dialect.ts`). */
export const sql010Addressing = `
CREATE TABLE reserved_010 (id INTEGER PRIMARY KEY);
DROP TABLE reserved_010;
`;
