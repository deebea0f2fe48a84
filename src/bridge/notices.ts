/**
 * User-facing notice texts the bridge bot posts that more than one part of
 * the bridge core needs.
 *
 * The wording belongs to the bridge core (src/bridge/), not to the Matrix
 * side: src/matrix/ only reports facts (e.g. that end-to-end encryption is
 * unavailable, see matrix/crypto.ts) and knows nothing of mail.
 */

/**
 * What the bot says in an encrypted room when encrypted rooms are bridged (docs/encryption.md):
 * Matrix keeps the room encrypted, email does not.
 */
export const ENCRYPTED_ROOM_BRIDGED_NOTICE =
  "This room is end-to-end encrypted, and the email bridge takes part with its own devices. " +
  "Email itself travels in plaintext: what is sent from here by email leaves the encryption " +
  "(at best protected by TLS between mail servers) and can be read by the mail servers on the way. " +
  "Judge what you write accordingly.";

/** The notice the bridge bot posts in an encrypted room it is asked to bridge but cannot (encryption off, or the homeserver lacks what it needs). */
export const ENCRYPTED_ROOM_NOTICE =
  "This room is end-to-end encrypted, and this email bridge cannot read or send encrypted messages " +
  "(end-to-end encryption is off on this bridge, or the homeserver does not give the bridge what it needs). Messages here will not be bridged to email. " +
  "Use an unencrypted room to talk to email contacts.";

/** What the bot says in a room whose encrypted messages it cannot decrypt yet (their keys have not reached it). */
export const MISSING_KEYS_NOTICE =
  "Some messages in this room cannot be decrypted by the email bridge yet: their keys have not reached it. " +
  "They will be sent by email as soon as the keys arrive. If this notice stays, check that your client shares keys with the bridge's devices (do not restrict sending to verified devices only).";

/** What the bot says in its encrypted rooms after its device was made anew (its crypto state was lost; docs/encryption.md). */
export const DEVICE_REPLACED_NOTICE =
  "The email bridge lost its encryption keys and has a new device now. Messages sent here before this notice " +
  "may not be readable by the bridge and then not sent by email: resend what should still go out.";
