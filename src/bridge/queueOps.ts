/**
 * Operator actions on the bridge's two mail queues (`inbound_mail`, `outbound_mail`): list,
 * look at one item, retry it (due now), drop it. The one implementation behind the `queue`
 * command line (src/cli/queue.ts, which opens the store itself) and the admin HTTP API
 * (src/admin/, which uses the running bridge's store): each formats the results its own way.
 *
 * A refused action throws {@link QueueOpError} with a one-line reason that names the item and
 * why (e.g. "inbound mail 12 is posted (event $abc); nothing to retry"), without the command
 * or route in front: the caller adds that.
 */
import type { BridgeStore, InboundRow, InboundState, OutboundRecipientRow, OutboundRow, OutboundState } from "../store/Store.ts";

/** The two queues. */
export type QueueDirection = "inbound" | "outbound";

/** The states a row of each queue can be in (Store.ts `InboundState`, `OutboundState`). */
export const QUEUE_STATES: Readonly<Record<QueueDirection, readonly string[]>> = {
  inbound: ["pending", "posted", "failed"] satisfies InboundState[],
  outbound: ["queued", "deferred", "sent", "bounced"] satisfies OutboundState[],
};

/**
 * A queue action that cannot be done: `not_found` (no such item) or `conflict` (the item is in a
 * state the action does not apply to: posted, sent, purged, nothing left to try).
 */
export class QueueOpError extends Error {
  readonly code: "not_found" | "conflict";
  constructor(code: "not_found" | "conflict", message: string) {
    super(message);
    this.name = "QueueOpError";
    this.code = code;
  }
}

/** An outbound mail with the delivery state of each of its recipients. */
export interface OutboundItem {
  mail: OutboundRow;
  /** Per-recipient state (empty for a mail queued before migration 3 and not attempted since). */
  recipients: OutboundRecipientRow[];
}

/**
 * The newest rows of the inbound queue.
 * @param state only rows in this state; null: all
 * @param limit at most this many rows
 * @returns rows, newest first
 */
export function listInboundQueue(store: BridgeStore, state: InboundState | null, limit: number): Promise<InboundRow[]> {
  return store.listInbound(state, limit);
}

/**
 * The newest mails of the outbound queue, each with its recipients.
 * @param state only mails in this state; null: all
 * @param limit at most this many mails
 * @returns mails, newest first
 */
export async function listOutboundQueue(store: BridgeStore, state: OutboundState | null, limit: number): Promise<OutboundItem[]> {
  const out: OutboundItem[] = [];
  for (const mail of await store.listOutbound(state, limit)) out.push({ mail, recipients: await store.listOutboundRecipients(mail.id) });
  return out;
}

/**
 * One inbound mail.
 * @throws QueueOpError `not_found`
 */
export async function getInboundItem(store: BridgeStore, id: number): Promise<InboundRow> {
  const row = await store.getInbound(id);
  if (!row) throw new QueueOpError("not_found", `there is no inbound mail ${id}`);
  return row;
}

/**
 * One outbound mail with its recipients.
 * @throws QueueOpError `not_found`
 */
export async function getOutboundItem(store: BridgeStore, id: number): Promise<OutboundItem> {
  const mail = await store.getOutboundById(id);
  if (!mail) throw new QueueOpError("not_found", `there is no outbound mail ${id}`);
  return { mail, recipients: await store.listOutboundRecipients(id) };
}

/**
 * Make an inbound mail that is not posted (pending or failed) due now: the running bridge posts
 * it at its next pass (it is tried again for `inbound.retry_hours` after it arrived).
 * @throws QueueOpError `not_found`; `conflict` when it was posted
 */
export async function retryInbound(store: BridgeStore, id: number): Promise<void> {
  if (await store.requeueInbound(id)) return;
  const row = await getInboundItem(store, id);
  throw new QueueOpError("conflict", `inbound mail ${id} is ${row.state}${row.eventId ? ` (event ${row.eventId})` : ""}; nothing to retry`);
}

/**
 * Make an outbound mail due now for every recipient not delivered yet (a failed recipient is
 * tried again and its failure reported again): see {@link BridgeStore.requeueOutbound}.
 * @throws QueueOpError `not_found`; `conflict` when it was sent, its message was purged, or no
 *   recipient is left to try
 */
export async function retryOutbound(store: BridgeStore, id: number): Promise<void> {
  if (await store.requeueOutbound(id)) return;
  const { mail } = await getOutboundItem(store, id);
  if (mail.state === "sent") throw new QueueOpError("conflict", `outbound mail ${id} was sent to every recipient; nothing to retry`);
  if (mail.rawPurgedAt !== null) {
    throw new QueueOpError("conflict", `the message of outbound mail ${id} was purged (storage.raw_retention_days); it cannot be sent again`);
  }
  throw new QueueOpError("conflict", `outbound mail ${id} has no recipient left to try`);
}

/**
 * The inbound mail `drop` would delete: it exists and was not posted.
 * @throws QueueOpError `not_found`; `conflict` when it was posted
 */
export async function droppableInbound(store: BridgeStore, id: number): Promise<InboundRow> {
  const row = await getInboundItem(store, id);
  if (row.state === "posted") {
    throw new QueueOpError("conflict", `inbound mail ${id} was posted (event ${row.eventId ?? "?"}); only mail not posted can be dropped`);
  }
  return row;
}

/**
 * The outbound mail `drop` would delete: it exists and was not sent.
 * @throws QueueOpError `not_found`; `conflict` when it was sent
 */
export async function droppableOutbound(store: BridgeStore, id: number): Promise<OutboundRow> {
  const { mail } = await getOutboundItem(store, id);
  if (mail.state === "sent") throw new QueueOpError("conflict", `outbound mail ${id} was sent; only mail not sent can be dropped`);
  return mail;
}

/**
 * Delete an inbound mail that was not posted, with its message, for good.
 * @returns the row as it was before deletion
 * @throws QueueOpError `not_found`; `conflict` when it was posted (also when it was posted or
 *   deleted between the check and the delete)
 */
export async function dropInbound(store: BridgeStore, id: number): Promise<InboundRow> {
  const row = await droppableInbound(store, id);
  if (!(await store.dropInbound(id))) throw new QueueOpError("conflict", `inbound mail ${id} was posted or deleted meanwhile; nothing dropped`);
  return row;
}

/**
 * Delete an outbound mail that was not sent, with its recipients and message, for good:
 * recipients not delivered yet get nothing.
 * @returns the mail as it was before deletion
 * @throws QueueOpError `not_found`; `conflict` when it was sent (also when it was sent or
 *   deleted between the check and the delete)
 */
export async function dropOutbound(store: BridgeStore, id: number): Promise<OutboundRow> {
  const mail = await droppableOutbound(store, id);
  if (!(await store.dropOutbound(id))) throw new QueueOpError("conflict", `outbound mail ${id} was sent or deleted meanwhile; nothing dropped`);
  return mail;
}
