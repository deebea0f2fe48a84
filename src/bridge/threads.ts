/**
 * Where a received reply goes in Matrix: a rich reply (Client-Server API, "Rich replies") in DM
 * and group portals, a thread message (Client-Server API, "Threading") in room mailboxes, where
 * each email conversation is one thread rooted at its first message.
 */
import type { BridgeStore, MessageRow } from "../store/Store.ts";

/** Message-IDs looked up at most while walking a References chain (a hostile header can name thousands). */
const MAX_LOOKUPS = 64;

/** The store reads the thread relation needs. */
export type ThreadStore = Pick<BridgeStore, "getMessagesByMessageId" | "latestMessageInThread">;

/** A rich reply: `m.relates_to` with `m.in_reply_to` only. */
export interface ReplyRelation {
  "m.in_reply_to": { event_id: string };
}

/**
 * A thread relation with its reply part (Client-Server API, "Threading": "Fallback for
 * unthreaded clients" and "Replies within threads").
 */
export interface ThreadRelation extends ReplyRelation {
  rel_type: "m.thread";
  /** The thread root. */
  event_id: string;
  /** True when `m.in_reply_to` is only the fallback (the latest known thread message), false for a genuine reply. */
  is_falling_back: boolean;
}

/**
 * The Message-IDs a mail's thread headers name, in the order a parent is looked for: In-Reply-To,
 * then References newest first (RFC 5322 §3.6.4: the last of References is the parent), each
 * once, at most {@link MAX_LOOKUPS} (a hostile References can name thousands).
 */
export function threadIdsOf(mail: { inReplyTo: string | null; references: readonly string[] }): string[] {
  const ids = [mail.inReplyTo, ...[...mail.references].reverse()].filter((x): x is string => Boolean(x));
  return [...new Set(ids)].slice(0, MAX_LOOKUPS);
}

/**
 * The known messages a mail from `sender` may continue, in the order of `threadIds`: those whose
 * sender or participants include `sender`. Knowing a Message-ID grants nothing: a message
 * `sender` took no part in is skipped. The caller decides the rest (a verified sender only, the
 * room, membership: bridge/InboundRouter.ts at DATA time, bridge/InboundPoster.ts when posting).
 * @param threadIds from {@link threadIdsOf}
 * @param sender the mail's normalized From address
 */
export async function* continuableMessages(store: Pick<BridgeStore, "getMessagesByMessageId">, threadIds: readonly string[], sender: string): AsyncGenerator<MessageRow> {
  for (const id of threadIds) {
    for (const known of await store.getMessagesByMessageId(id)) {
      if (known.sender === sender || known.participants.includes(sender)) yield known;
    }
  }
}

/** The reply relation of a message replying to `parentEventId`. */
export function replyRelation(parentEventId: string): ReplyRelation {
  return { "m.in_reply_to": { event_id: parentEventId } };
}

/**
 * The thread root of a reply in `roomId`: the oldest message known in that room among the
 * reply's References (and In-Reply-To), the parent's, and, transitively, those of each message
 * found (a client that trims References still reaches the root through the stored chain);
 * the parent itself when none is known. At most {@link MAX_LOOKUPS} Message-IDs are looked up,
 * oldest first.
 * @param parent the parent's mapping, or null when the store does not know the parent event
 * @returns the root's mapping, or null when it is the unmapped parent
 */
export async function threadRoot(store: ThreadStore, roomId: string, parent: MessageRow | null, references: readonly string[]): Promise<MessageRow | null> {
  let oldest = parent;
  const queue = [...references, ...(parent?.references ?? [])];
  const seen = new Set<string>(parent ? [parent.messageId] : []);
  let lookups = 0;
  while (queue.length > 0 && lookups < MAX_LOOKUPS) {
    const id = queue.shift()!;
    if (seen.has(id)) continue;
    seen.add(id);
    lookups++;
    // Oldest first: a Message-ID reused in one room counts with its first message.
    const known = (await store.getMessagesByMessageId(id)).find((m) => m.roomId === roomId);
    if (!known) continue;
    queue.push(...known.references);
    if (!oldest || known.createdAt < oldest.createdAt) oldest = known;
  }
  return oldest;
}

/**
 * The thread relation of a reply in a room mailbox: thread root from {@link threadRoot}; a reply
 * to the root or to the latest known thread message has `is_falling_back: true` with
 * `m.in_reply_to` the latest known thread message (what an unthreaded client shows it replying
 * to); a reply to an earlier message in the thread has `is_falling_back: false` with
 * `m.in_reply_to` that message.
 * @param roomId the room mailbox's room
 * @param parentEventId the event the mail replies to (found at DATA time from In-Reply-To/References)
 * @param parent that event's mapping (`getMessageByEvent`), or null when the store does not know it
 * @param mail the reply's own In-Reply-To and References (oldest first)
 */
export async function threadRelation(
  store: ThreadStore,
  roomId: string,
  parentEventId: string,
  parent: MessageRow | null,
  mail: { inReplyTo: string | null; references: readonly string[] },
): Promise<ThreadRelation> {
  const references = mail.inReplyTo && !mail.references.includes(mail.inReplyTo) ? [...mail.references, mail.inReplyTo] : mail.references;
  const root = await threadRoot(store, roomId, parent, references);
  const rootEventId = root?.eventId ?? parentEventId;
  let latest = root ? await store.latestMessageInThread(roomId, root.messageId) : null;
  // The parent is in the thread even when its own References do not name the root.
  if (parent && (!latest || parent.createdAt > latest.createdAt)) latest = parent;
  const latestEventId = latest?.eventId ?? rootEventId;
  const fallingBack = parentEventId === rootEventId || parentEventId === latestEventId;
  return {
    rel_type: "m.thread",
    event_id: rootEventId,
    is_falling_back: fallingBack,
    "m.in_reply_to": { event_id: fallingBack ? latestEventId : parentEventId },
  };
}

/**
 * The References chain to store for a received mail: its own, or, when it has none but replies
 * to a known message, the parent's chain followed by the parent (RFC 5322 §3.6.4, as the
 * sender's client should have written it). Keeps the chain walkable for {@link threadRoot} and
 * for the References of answers sent from Matrix.
 */
export function storedReferences(own: readonly string[], parent: MessageRow | null): string[] {
  if (own.length > 0 || !parent) return [...own];
  return [...parent.references, parent.messageId];
}
