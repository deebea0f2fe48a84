/**
 * User-facing notice texts the bridge bot posts that more than one part of
 * the bridge core needs.
 *
 * The wording belongs to the bridge core (src/bridge/), not to the Matrix
 * side: src/matrix/ only reports facts (e.g. that end-to-end encryption is
 * unavailable, see matrix/crypto.ts) and knows nothing of mail.
 */

/** The notice the bridge bot posts in an encrypted room it is asked to bridge. */
export const ENCRYPTED_ROOM_NOTICE =
  "This room is end-to-end encrypted, and this email bridge cannot read or send encrypted messages " +
  "(end-to-end encryption is off on this bridge). Messages here will not be bridged to email. " +
  "Use an unencrypted room to talk to email contacts.";
