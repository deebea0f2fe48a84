/**
 * User-facing notice texts the bridge bot posts that more than one part of
 * the bridge core needs.
 *
 * The wording belongs to the bridge core (src/bridge/), not to the Matrix
 * side: src/matrix/ only reports facts (e.g. that end-to-end encryption is
 * unavailable, see matrix/crypto.ts) and knows nothing of mail.
 */

/** The notice the bridge bot posts in an encrypted room it is asked to bridge. */
/**
 * What the bot says in an encrypted room when encrypted rooms are bridged (docs/encryption.md):
 * Matrix keeps the room encrypted, email does not.
 */
export const ENCRYPTED_ROOM_BRIDGED_NOTICE =
  "This room is end-to-end encrypted, and the email bridge takes part with its own devices. " +
  "Email itself travels in plaintext: what is sent from here by email leaves the encryption " +
  "(at best protected by TLS between mail servers) and can be read by the mail servers on the way. " +
  "Judge what you write accordingly.";

export const ENCRYPTED_ROOM_NOTICE =
  "This room is end-to-end encrypted, and this email bridge cannot read or send encrypted messages " +
  "(end-to-end encryption is off on this bridge). Messages here will not be bridged to email. " +
  "Use an unencrypted room to talk to email contacts.";
