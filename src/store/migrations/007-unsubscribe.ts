/**
 * Migration 7: unsubscribing from a portal's mail (RFC 2369 `List-Unsubscribe`).
 *
 * - `portal_unsubscribe`: one random token per room; mail to `unsubscribe+<token>@<mail domain>`
 *   from an authenticated sender ends that sender's mail from the room.
 * - `portal_optouts`: the addresses that unsubscribed from a room's mail; the bridge sends
 *   them nothing more from it.
 */

/** SQL of migration 7 (shared dialect; see `db/dialect.ts`). */
export const sql007Unsubscribe = `
CREATE TABLE portal_unsubscribe (
  room_id     TEXT PRIMARY KEY,
  token       TEXT NOT NULL UNIQUE,
  created_at  BIGINT NOT NULL
);
CREATE TABLE portal_optouts (
  room_id     TEXT NOT NULL,
  address     TEXT NOT NULL,
  created_at  BIGINT NOT NULL,
  PRIMARY KEY (room_id, address)
);
`;
