/**
 * Migration 10: addressing (several mail domains, aliases, catch-all, 1:N).
 *
 * - `mail_domains`: the bridge's mail domains besides `mail.domain` (which is always the
 *   primary one and is not stored). Room mailboxes and personal mailboxes exist on each of them.
 * - `mail_aliases`: an address (`local@domain`, lower-case) or a domain's catch-all
 *   (`*@domain`) and one target: a room ID (`!…`, a room with a room mailbox) or a local
 *   Matrix user ID (`@…`, their personal mailbox). Several rows for one address: the mail goes
 *   to each target (1:N). `domain` is the address's domain, for listing and for removing a
 *   domain with its aliases.
 * - `inbound_mail` gains what the routing decided about the recipient address, shown above
 *   the posted mail: `delivered_to` (the address the mail came to, when it is not its target's
 *   own address: a subaddress, an alias, a catch-all, another domain) and `recipient_tag` (the
 *   `+tag` of an RFC 5233 subaddress).
 */

/** SQL of migration 10 (shared dialect; see `db/dialect.ts`). */
export const sql010Addressing = `
CREATE TABLE mail_domains (
  domain      TEXT PRIMARY KEY,
  created_by  TEXT NOT NULL,
  created_at  BIGINT NOT NULL
);
CREATE TABLE mail_aliases (
  address     TEXT NOT NULL,
  domain      TEXT NOT NULL,
  target      TEXT NOT NULL,
  created_by  TEXT NOT NULL,
  created_at  BIGINT NOT NULL,
  PRIMARY KEY (address, target)
);
CREATE INDEX mail_aliases_domain ON mail_aliases (domain);
CREATE INDEX mail_aliases_target ON mail_aliases (target);
ALTER TABLE inbound_mail ADD COLUMN delivered_to TEXT;
ALTER TABLE inbound_mail ADD COLUMN recipient_tag TEXT;
`;
