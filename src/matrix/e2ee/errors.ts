/**
 * The errors of decryption (./CryptoDevice.ts), in a module of their own: the bridge tells them
 * apart without loading the crypto library, which ./E2ee.ts loads only once the homeserver
 * turns out to support encrypted rooms.
 */

/** A room event that cannot be decrypted yet: its room key has not arrived (or not up to its index). Retried, never dropped. */
export class MissingRoomKeyError extends Error {
  override name = "MissingRoomKeyError";
  readonly roomId: string;
  readonly eventId: string;
  constructor(roomId: string, eventId: string, detail: string) {
    super(`room key of event ${eventId} in ${roomId} has not arrived yet: ${detail}`);
    this.roomId = roomId;
    this.eventId = eventId;
  }
}

/** A room event that can never be decrypted (forged sender, unknown device, damaged ciphertext). */
export class UndecryptableEventError extends Error {
  override name = "UndecryptableEventError";
}
