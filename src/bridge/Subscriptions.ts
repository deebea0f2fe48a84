/**
 * Subscribers of a room mailbox: the addresses that receive the room's top-level messages
 * (a reply in an email conversation goes to that conversation's participants instead).
 *
 * An address becomes a subscriber only by asking and proving it reads that mailbox (double
 * opt-in): a mail to `<mailbox>+subscribe@<mail domain>` is answered with a confirmation mail
 * whose reply address carries a secret token, `<mailbox>+confirm-<token>@…`; mail to that
 * address from the same sender confirms. Or a room moderator adds it (`!email invite`). A mail
 * to `<mailbox>+unsubscribe@…` from an authenticated sender ends it, as does the
 * `List-Unsubscribe` address every list mail carries (RFC 2369).
 */
import { randomBytes } from "node:crypto";
import type { BridgeStore } from "../store/Store.ts";
import { composeMail, type DkimSigner } from "../mail/outbound/compose.ts";
import { mintMessageId, type IdContext } from "./ids.ts";
import { getLogger } from "../util/logger.ts";

const log = getLogger("bridge/subscriptions");

/** Options of {@link Subscriptions}. */
export interface SubscriptionsOptions {
  store: Pick<BridgeStore, "putSubscriber" | "activateSubscriber" | "removeSubscriber" | "enqueueOutbound" | "addOptOut">;
  ids: IdContext;
  dkim: DkimSigner | null;
  /** Wake the outbound queue. */
  onQueued: () => void;
  /**
   * After an address unsubscribed from a room ({@link Subscriptions.optOut}): its ghost leaves
   * the room and the room is told. Throwing makes the SMTP side answer 451 (the sender retries).
   */
  onOptedOut?: (roomId: string, address: string) => Promise<void>;
}

/** The plus-address commands of a room mailbox (RFC 5233 subaddressing). */
export type MailboxCommand = { kind: "subscribe" } | { kind: "unsubscribe" } | { kind: "confirm"; token: string };

/**
 * Read the detail of a plus address (`team+subscribe` → subscribe).
 * @returns the command, or null when `detail` is not one
 */
export function parseMailboxCommand(detail: string): MailboxCommand | null {
  if (detail === "subscribe") return { kind: "subscribe" };
  if (detail === "unsubscribe") return { kind: "unsubscribe" };
  const m = /^confirm-([a-z0-9]{16,64})$/.exec(detail);
  return m ? { kind: "confirm", token: m[1]! } : null;
}

/** Subscribing, confirming and unsubscribing. */
export class Subscriptions {
  private readonly opts: SubscriptionsOptions;

  constructor(opts: SubscriptionsOptions) {
    this.opts = opts;
  }

  /** The list address of a room mailbox and its command addresses. */
  addresses(localpart: string): { list: string; unsubscribe: string; subscribe: string } {
    const d = this.opts.ids.mailDomain;
    return { list: `${localpart}@${d}`, unsubscribe: `${localpart}+unsubscribe@${d}`, subscribe: `${localpart}+subscribe@${d}` };
  }

  /**
   * A subscription request: record it as pending with a fresh token and queue the confirmation
   * mail (from the null reverse-path, `Auto-Submitted: auto-replied`, RFC 3834 §5). An address
   * that is already active gets no mail.
   * @throws the store's error (the SMTP side answers 451 and the request is retried)
   */
  async request(roomId: string, localpart: string, address: string): Promise<void> {
    const token = randomBytes(16).toString("hex");
    const row = await this.opts.store.putSubscriber({ roomId, address, state: "pending", token });
    if (row.state === "active") {
      log.info("subscription request for an active subscriber", { roomId, address });
      return;
    }
    const { list } = this.addresses(localpart);
    const confirm = `${localpart}+confirm-${token}@${this.opts.ids.mailDomain}`;
    const messageId = mintMessageId(this.opts.ids.mailDomain);
    const raw = await composeMail(
      {
        from: { name: null, address: list },
        to: [{ name: null, address }],
        replyTo: { name: null, address: confirm },
        subject: `Confirm your subscription to ${list}`,
        text: [
          `Someone (hopefully you) asked for ${address} to receive the messages of ${list}, a Matrix room bridged to email.`,
          "",
          `To confirm, reply to this mail (it goes to ${confirm}).`,
          "If you did not ask for this, ignore this mail: nothing will be sent to you.",
        ].join("\n"),
        html: null,
        messageId,
        inReplyTo: null,
        references: [],
        date: new Date(),
        autoSubmitted: "auto-replied",
      },
      this.opts.dkim,
    );
    await this.opts.store.enqueueOutbound({ roomId: "", eventId: `subscribe:${token}`, messageId, envelopeFrom: "", recipients: [address], raw });
    log.info("subscription confirmation queued", { roomId, address });
    this.opts.onQueued();
  }

  /**
   * Confirm a pending subscription.
   * @param sender the (normalised) address the confirming mail came from: it must be the one
   *   that asked, so a token forwarded elsewhere subscribes nobody else
   * @returns true when the subscription is now active
   */
  async confirm(token: string, sender: string): Promise<boolean> {
    const row = await this.opts.store.activateSubscriber(token);
    if (!row) return false;
    if (row.address !== sender) {
      // Someone else replied with the token: undo, the address did not confirm.
      await this.opts.store.removeSubscriber(row.roomId, row.address);
      log.warn("subscription confirmed by another address, not activated", { roomId: row.roomId, address: row.address, sender });
      return false;
    }
    log.info("subscription confirmed", { roomId: row.roomId, address: row.address });
    return true;
  }

  /** End a subscription; returns false when there was none. */
  async unsubscribe(roomId: string, address: string): Promise<boolean> {
    const removed = await this.opts.store.removeSubscriber(roomId, address);
    log.info("unsubscribed", { roomId, address, removed });
    return removed;
  }

  /**
   * An address unsubscribes from everything a room mails (the `List-Unsubscribe` address of a
   * DM or group portal, `unsubscribe+<token>@<mail domain>`, RFC 2369 §3.2): it is recorded so
   * the room mails it nothing more, a room-mailbox subscription ends too, then
   * `onOptedOut` runs (its ghost leaves, the room is told). Idempotent.
   * @throws the store's or homeserver's error (the SMTP side answers 451 and the mail is retried)
   */
  async optOut(roomId: string, address: string): Promise<void> {
    await this.opts.store.addOptOut(roomId, address);
    await this.opts.store.removeSubscriber(roomId, address);
    await this.opts.onOptedOut?.(roomId, address);
    log.info("unsubscribed from a room's mail", { roomId, address });
  }

  /** A moderator adds a subscriber directly (`!email invite` in a room with a mailbox). */
  async add(roomId: string, address: string): Promise<void> {
    await this.opts.store.putSubscriber({ roomId, address, state: "active", token: null });
  }
}
