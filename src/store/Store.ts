/**
 * The bridge's persistent state, grouped by aggregate. One SQL implementation
 * (SqlStore) runs on two engines: PostgreSQL (pg) and embedded SQLite (node:sqlite).
 *
 * All addresses passed in are already normalised by bridge/ids.ts (lower-case
 * domain, IDN as A-labels). Times are epoch milliseconds.
 */

/** A ghost: the Matrix user that stands for one email address. */
export interface GhostRow {
  /** Normalised email address, e.g. `bob@example.org`. */
  address: string;
  /** Full Matrix user ID, e.g. `@email_bob=40example.org:hs.example`. */
  userId: string;
  /** Last display name set on the ghost (from the From header), or null. */
  displayName: string | null;
  updatedAt: number;
}

/** A room mailbox: `<localpart>@<mail domain>` delivers into `roomId`. */
export interface RoomMailboxRow {
  /** Lower-case localpart, unique across the bridge. */
  localpart: string;
  roomId: string;
  /** Matrix user who turned the mailbox on. */
  createdBy: string;
  /** Who may post: anyone (`open`), ghosts already in the room (`members`), authenticated senders (`verified`). */
  policy: MailboxPolicy;
  createdAt: number;
  /** A line that ends the room's outgoing mail (`mailbox signature`), or null (migration 9). */
  signature: string | null;
}

/** Who may post to a room mailbox. */
export type MailboxPolicy = "open" | "members" | "verified";

/** A mail domain of the bridge besides `mail.domain` (migration 10). */
export interface MailDomainRow {
  /** Lower-case domain name (IDNs as A-labels). */
  domain: string;
  /** Who added it (a Matrix user ID, or what the admin API names). */
  createdBy: string;
  createdAt: number;
}

/**
 * One target of an alias (migration 10): mail to `address` goes to `target`. Several rows for
 * one address: the mail goes to each (1:N).
 */
export interface MailAliasRow {
  /** `local@domain`, lower-case, or `*@domain`: the domain's catch-all. */
  address: string;
  /** A room ID (`!…`, a room with a room mailbox) or a local Matrix user ID (`@…`, their personal mailbox). */
  target: string;
  createdBy: string;
  createdAt: number;
}

/** Which aliases {@link BridgeStore.listMailAliases} and {@link BridgeStore.removeMailAliases} take; every given field must match. */
export interface MailAliasFilter {
  /** Exactly this address (`local@domain` or `*@domain`). */
  address?: string;
  /** Addresses on this domain. */
  domain?: string;
  /** This target. */
  target?: string;
}

/** An address that receives a room mailbox's top-level messages (once `active`). */
export interface SubscriberRow {
  roomId: string;
  /** Normalised address. */
  address: string;
  /** `pending` until the address confirms (or a moderator adds it: `active` at once). */
  state: "pending" | "active";
  /** The confirmation token of a pending subscription; null once active. */
  token: string | null;
  createdAt: number;
}

/**
 * Portal kinds:
 * - `group`: a room where Matrix users invited ghosts (scenario "invite a ghost");
 * - `mailbox`: a room with a room mailbox (mailing-list style);
 * - `dm`: a DM portal between one local user's personal mailbox and one remote address.
 */
export type PortalKind = "group" | "mailbox" | "dm";

/** A portal: a Matrix room bridged to an email conversation. */
export interface PortalRow {
  roomId: string;
  kind: PortalKind;
  /** For `dm`: the local user's Matrix ID (owner of the personal mailbox). */
  localUserId: string | null;
  /** For `dm`: the remote address. */
  remoteAddress: string | null;
  /** Subject of the conversation, used for outbound mail that has no parent. */
  subject: string | null;
  /** Whether the room is end-to-end encrypted (the bridge cannot read it). */
  encrypted: boolean;
  /**
   * For `dm`: whether the remote party is the verified ghost of `remoteAddress` (true) or its
   * unverified ghost (false): a DM with an unverified sender is a portal of its own.
   */
  remoteVerified: boolean;
  createdAt: number;
}

/** Direction of a mapped message. */
export type Direction = "inbound" | "outbound";

/** Message-ID ↔ event ID mapping: one row per (room, event). */
export interface MessageRow {
  roomId: string;
  eventId: string;
  /** Message-ID without angle brackets, e.g. `abc.123@mail.example`. */
  messageId: string;
  /** The message's References chain (Message-IDs without brackets, oldest first). */
  references: string[];
  direction: Direction;
  /** Email address (inbound: sender; outbound: the Matrix sender's personal address). */
  sender: string;
  /** Subject line of the mail. */
  subject: string | null;
  /**
   * Who else took part (normalised addresses): inbound, the mail's To and Cc; outbound, the
   * envelope recipients. With `sender`, the addresses that may continue this thread.
   */
  participants: string[];
  /** Sent to a room mailbox's subscribers as a list mail (recipients hidden from each other). */
  viaList: boolean;
  createdAt: number;
}

/**
 * The authentication verdict shown on a posted event (docs/formats.md): SPF, DKIM, DMARC and
 * ARC results (RFC 8601 result words) and whether the sender is verified.
 */
export interface AuthFields {
  spf: string;
  dkim: string;
  dmarc: string;
  arc: string;
  verified: boolean;
}

/** The spam verdict a mail was accepted with (rspamd action and scores), when a check ran. */
export interface SpamFields {
  action: string;
  score: number;
  requiredScore: number;
}

/** State of a received mail waiting to be posted into Matrix. */
export type InboundState = "pending" | "posted" | "failed";

/**
 * A received mail with its routing decision, committed before the SMTP 250.
 * A worker posts pending rows into Matrix (again after a crash).
 */
export interface InboundRow {
  id: number;
  /** Target room; null when a DM portal must be created first (see `dmLocalUserId`). */
  roomId: string | null;
  /** For a new DM portal: the local user the mail is addressed to. */
  dmLocalUserId: string | null;
  /** Event the mail replies to (from In-Reply-To/References), or null. */
  replyToEventId: string | null;
  /** Message-ID of the mail without brackets (minted by the bridge if the mail had none). */
  messageId: string;
  /** Normalised address of the author (the From mailbox): whose ghost posts it. */
  sender: string;
  /** Whether the author authenticated (aligned SPF or DKIM pass): the verified ghost posts it, else the unverified one. */
  senderVerified: boolean;
  /** The From display name as claimed; shown only for verified senders. */
  senderName: string | null;
  /** The authentication verdict, or null for rows from before sender authentication. */
  auth: AuthFields | null;
  /** The spam verdict, or null when no check ran. */
  spam: SpamFields | null;
  /** The mail's To and Cc addresses, normalised. */
  participants: string[];
  /** Hash of envelope sender and message: with the Message-ID, the dedupe key. */
  contentHash: string;
  /** The MAIL FROM reverse-path, or null for the null reverse-path `<>`: where a DSN would go. */
  envelopeFrom: string | null;
  /** `dsn`: a delivery report (RFC 3464) about mail the bridge sent, posted as a notice replying to it; else `mail`. */
  kind: "mail" | "dsn";
  /**
   * The recipient address the mail came to, when it is not its target's own address: a
   * subaddress (`bob+shop@`), an alias, a catch-all, or a mailbox on another of the bridge's
   * domains (migration 10); shown above the posted mail. Null otherwise.
   */
  deliveredTo: string | null;
  /** The `+tag` of that address (RFC 5233 subaddress), without the `+`; null when there is none. */
  recipientTag: string | null;
  /**
   * The raw RFC 5322 message, as received (with the bridge's Received header on top);
   * decrypted when stored encrypted. Empty once purged (see `rawPurgedAt`).
   */
  raw: Buffer;
  /** Epoch ms when the retention purge emptied `raw` (migration 5), or null while it is kept. */
  rawPurgedAt: number | null;
  state: InboundState;
  attempts: number;
  /** Epoch ms before which a pending row is not tried again (backoff after a temporary failure). */
  nextAttemptAt: number;
  /** Posted event ID once `state` is `posted`. */
  eventId: string | null;
  lastError: string | null;
  receivedAt: number;
}

/** An inbound row as the poster takes it: without its bytes, which it reads as it goes ({@link BridgeStore.readInboundRaw}). */
export type QueuedInbound = Omit<InboundRow, "raw">;

/**
 * Bytes above which an inbound mail is stored in chunks of this size (migration 13): 1 MiB.
 * Each layer a blob crosses (the SQLite worker, SQLite's record, pg's parameter) copies it whole,
 * so a large mail is written and read one chunk at a time.
 */
export const RAW_CHUNK_BYTES = 1024 * 1024;

/** The stored bytes of one inbound mail, read one chunk at a time (see {@link RAW_CHUNK_BYTES}). */
export interface StoredRaw {
  /** The first chunk: the whole message when it is not larger than a chunk; empty once purged. */
  readonly head: Buffer;
  /** Whether chunks follow {@link head}. */
  readonly chunked: boolean;
  /**
   * An upper bound of the message's size, in bytes: no chunk is larger than {@link head}, so
   * `head.length × (1 + chunks after it)`; exact when the message is not chunked.
   */
  readonly maxBytes: number;
  /**
   * Every chunk in order, {@link head} first; each is read (and decrypted) only when the one
   * before it was taken, so one chunk is in memory at a time.
   * @throws RawDecryptError naming the row, the driver's error, or Error when a chunk is missing
   */
  chunks(): AsyncIterable<Buffer>;
  /** The whole message in one Buffer (as {@link chunks} throws). */
  whole(): Promise<Buffer>;
}

/** What {@link BridgeStore.insertInbound} takes (`kind` defaults to `mail`, `deliveredTo` and `recipientTag` to null). */
export type NewInbound = Pick<
  InboundRow,
  "roomId" | "dmLocalUserId" | "replyToEventId" | "messageId" | "sender" | "senderVerified" | "senderName" | "auth" | "spam" | "participants" | "contentHash" | "envelopeFrom" | "raw"
> &
  Partial<Pick<InboundRow, "kind" | "deliveredTo" | "recipientTag">>;

/** State of an outbound mail. `deferred` will be retried at `nextAttemptAt`. */
export type OutboundState = "queued" | "deferred" | "sent" | "bounced";

/** A composed, signed mail waiting for delivery. Keyed by the Matrix event it came from. */
export interface OutboundRow {
  id: number;
  roomId: string;
  eventId: string;
  messageId: string;
  /** Envelope sender (MAIL FROM). */
  envelopeFrom: string;
  /** Envelope recipients (RCPT TO) not yet delivered. */
  recipients: string[];
  /** The signed RFC 5322 message; decrypted when stored encrypted. Empty once purged (see `rawPurgedAt`). */
  raw: Buffer;
  /** Epoch ms when the retention purge emptied `raw` (migration 5), or null while it is kept. */
  rawPurgedAt: number | null;
  state: OutboundState;
  attempts: number;
  nextAttemptAt: number;
  lastError: string | null;
  createdAt: number;
  /** When the "delivery is delayed" notice went out (once per mail), or null. */
  delayWarnedAt: number | null;
}

/** What {@link BridgeStore.enqueueOutbound} takes. */
export type NewOutbound = Pick<OutboundRow, "roomId" | "eventId" | "messageId" | "envelopeFrom" | "recipients" | "raw">;

/** An app password of a local user, for SMTP submission (migration 11). */
export interface AppPasswordRow {
  id: number;
  /** The local Matrix user it logs in as. */
  userId: string;
  /** The user's name for it (unique per user), e.g. `laptop`. */
  label: string;
  /** Its salted slow hash (`src/mail/submission/appPasswords.ts`); never the password. */
  hash: string;
  createdAt: number;
  /** Last successful login with it (epoch ms), or null when never used. */
  lastUsedAt: number | null;
}

/**
 * A contact rule: `block` refuses a sender's mail (550 5.7.1); `allow` lifts a block and marks
 * the sender as known (a contact request is not needed).
 */
export type ContactRule = "block" | "allow";

/** A contact rule as stored (migrations 8 and 9). */
export interface ContactRuleRow {
  /** An address (`bob@example.org`) or a domain (`example.org`). */
  pattern: string;
  rule: ContactRule;
  /** For a block: the short reason the sending MTA is told (`refuse <address> [reason]`), or null. */
  reason: string | null;
  /** For a block: refuse with a bare 550 that names no user and no reason (`refuse-quietly`). */
  quiet: boolean;
  /** When the rule was set (epoch ms; 0 for rules made from DM portals by migration 9). */
  createdAt: number;
}

/**
 * How mail from a stranger to a user's personal mailbox is handled:
 * - `invite`: a DM invite from the sender's ghost at once, with a preview (the default);
 * - `hold`: the SMTP transaction gets 451 4.7.1 until the user accepts or refuses.
 */
export type ContactMode = "invite" | "hold";

/** A local user's personal settings (migration 9); defaults when the user never changed any. */
export interface UserSettings {
  userId: string;
  contactMode: ContactMode;
  /** Whether the user's personal mailbox takes mail (off: 550 5.1.1, as if there were none). */
  personalMailbox: boolean;
  /** Display name on the user's outgoing mail; null: their Matrix display name. */
  displayName: string | null;
}

/** The state of a contact request: waiting for the user, or decided. */
export type ContactRequestState = "pending" | "accepted" | "refused";

/** Held mail from a stranger to a user in `hold` mode, one per user and sender (migration 9). */
export interface ContactRequestRow {
  userId: string;
  /** The sender's normalised address. */
  sender: string;
  /** The From display name, if any. */
  senderName: string | null;
  /** Whether the first held mail's sender authenticated (SPF/DKIM aligned, DMARC). */
  verified: boolean;
  subject: string | null;
  /** The first lines of the first held mail's text, at most 300 characters. */
  preview: string | null;
  state: ContactRequestState;
  /** How many times the sending MTA tried (each got 451 while pending). */
  attempts: number;
  /** First and latest attempt (epoch ms). */
  firstAt: number;
  lastAt: number;
  /** When the user was told of the request (epoch ms), or null: not yet. */
  notifiedAt: number | null;
}

/** What {@link BridgeStore.noteContactRequest} records of one held mail. */
export type NewContactRequest = Pick<ContactRequestRow, "userId" | "sender" | "senderName" | "verified" | "subject" | "preview">;

/** One Matrix message inside a batched mail. */
export interface BatchPart {
  eventId: string;
  /** Its text and HTML (null: text only), as they go into the mail. */
  text: string;
  html: string | null;
}

/**
 * What a batched mail is made of (`outbound_mail.batch_state`, migration 6): the messages in
 * it, in order, and what the mail is composed from besides them (the handler's own shape,
 * stored as given).
 */
export interface BatchState {
  parts: BatchPart[];
  mail: Record<string, unknown>;
}

/** A queued mail still open for more messages of its sender (outbound batching). */
export interface OpenBatch {
  outboundId: number;
  messageId: string;
  /** Room, sender and thread it collects messages for. */
  key: string;
  state: BatchState;
  /** Epoch ms when it goes out, unless more messages come. */
  closesAt: number;
  /** Epoch ms when it was opened. */
  openedAt: number;
}

/**
 * State of one recipient of an outbound mail: `pending` (not attempted yet), `sent` (accepted
 * by a server), `deferred` (temporary failure, retried), `failed` (permanent). `sent` and
 * `failed` are final.
 */
export type OutboundRecipientState = "pending" | "sent" | "deferred" | "failed";

/** Delivery state of one envelope recipient of an outbound mail (table `outbound_recipients`, migration 3). */
export interface OutboundRecipientRow {
  /** {@link OutboundRow.id} of the mail. */
  outboundId: number;
  /** Envelope recipient (normalised address). */
  address: string;
  state: OutboundRecipientState;
  /** Delivery attempts made for this recipient. */
  attempts: number;
  /** SMTP reply code of the last attempt (or a routing error's synthetic code); null when no server answered. */
  lastCode: number | null;
  /** The remote server's reply (or the local error) of the last attempt; null before the first. */
  lastReply: string | null;
  /** Next try in epoch ms while pending/deferred; null when final. */
  nextAttemptAt: number | null;
  /** For `failed`: whether the failure was reported (the notice went out). */
  reported: boolean;
  updatedAt: number;
}

/** The outcome of one recipient in one attempt, for {@link BridgeStore.recordOutboundAttempt}. */
export interface OutboundRecipientUpdate {
  address: string;
  state: "sent" | "deferred" | "failed";
  /** SMTP reply code, or null when no server answered. */
  code: number | null;
  /** Reply text or error message (shown to users on failure). */
  reply: string;
  /** Next try in epoch ms for `deferred`; null otherwise. */
  nextAttemptAt: number | null;
}

/** What {@link BridgeStore.recordOutboundAttempt} leaves behind. */
export interface OutboundAttemptResult {
  /** The mail's new state: `deferred` while any recipient is pending/deferred, else `bounced` if any failed, else `sent`. */
  state: "deferred" | "sent" | "bounced";
  /** Every recipient of the mail after the update, by address. */
  recipients: OutboundRecipientRow[];
}

/** The size of one queue, for metrics and `/health`. */
export interface QueueCounts {
  /** Items waiting: inbound rows `pending`; outbound mails `queued` or `deferred`. */
  waiting: number;
  /** When the oldest waiting item arrived, epoch ms (inbound `receivedAt`, outbound `createdAt`); null when none waits. */
  oldestWaitingAt: number | null;
  /** Items given up and kept: inbound rows `failed`; outbound mails `bounced`. */
  failed: number;
}

/** What {@link BridgeStore.queueCounts} returns. */
export interface QueueCountsSnapshot {
  inbound: QueueCounts;
  outbound: QueueCounts;
}

/**
 * State of a journaled Matrix event (table `matrix_events`, migration 4): `pending` (to be
 * handled), `done` (the handler resolved), `failed` (the handler threw on every attempt).
 * `done` and `failed` are final.
 */
export type MatrixEventState = "pending" | "done" | "failed";

/** A room event of an appservice transaction, as journaled before the transaction's 200. */
export interface MatrixEventRow {
  /** Arrival order across all transactions (per room, events are handled in this order). */
  seq: number;
  eventId: string;
  roomId: string;
  /** The transaction that brought it (the homeserver's transaction ID). */
  txnId: string;
  /** The event as received, JSON text. */
  json: string;
  state: MatrixEventState;
  /** Handler runs that threw. */
  attempts: number;
  /** The last failure's message, or null. */
  lastError: string | null;
  /** Epoch ms before which a pending event is not retried (backoff). */
  nextAttemptAt: number;
  /** Epoch ms of the journal commit. */
  receivedAt: number;
  /** Epoch ms when it became `done` or `failed`; null while pending. */
  doneAt: number | null;
}

/** What {@link BridgeStore.recordAppserviceTransaction} takes per event. */
export type NewMatrixEvent = Pick<MatrixEventRow, "eventId" | "roomId" | "json">;

/** What {@link BridgeStore.recordAppserviceTransaction} did. */
export interface RecordedAppserviceTransaction {
  /** The transaction ID was recorded before: nothing was written. */
  duplicate: boolean;
  /** Events newly recorded (0 for a duplicate; events already journaled by another transaction are not counted). */
  recorded: number;
}

/** What {@link BridgeStore.purgeRawMail} emptied. */
export interface RawPurgeResult {
  /** Inbound rows whose `raw` was emptied. */
  inbound: number;
  /** Outbound rows whose `raw` was emptied. */
  outbound: number;
}

/** Raised when a room mailbox localpart is already taken by another room. */
export class MailboxTakenError extends Error {
  readonly localpart: string;
  readonly roomId: string;
  constructor(localpart: string, roomId: string) {
    super(`mailbox ${localpart} already belongs to room ${roomId}`);
    this.name = "MailboxTakenError";
    this.localpart = localpart;
    this.roomId = roomId;
  }
}

/** The bridge's store. Every method is one committed statement or transaction. */
export interface BridgeStore {
  /** Engine name, for logs: `postgres` or `sqlite`. */
  readonly engine: "postgres" | "sqlite";
  /** Close the connection(s). */
  close(): Promise<void>;

  // Ghosts
  /** Insert or update a ghost (display name and updatedAt). */
  upsertGhost(ghost: Omit<GhostRow, "updatedAt">): Promise<void>;
  getGhostByAddress(address: string): Promise<GhostRow | null>;
  getGhostByUserId(userId: string): Promise<GhostRow | null>;

  // Room mailboxes
  /**
   * Give `roomId` the mailbox `localpart`. Replaces the room's previous mailbox, if any.
   * @throws MailboxTakenError if another room holds `localpart`
   */
  setRoomMailbox(localpart: string, roomId: string, createdBy: string): Promise<RoomMailboxRow>;
  getRoomMailboxByLocalpart(localpart: string): Promise<RoomMailboxRow | null>;
  getRoomMailboxByRoom(roomId: string): Promise<RoomMailboxRow | null>;
  /** Remove the room's mailbox; returns false if it had none. */
  removeRoomMailbox(roomId: string): Promise<boolean>;
  /** Set who may post to the room's mailbox; returns false if the room has none. */
  setMailboxPolicy(roomId: string, policy: MailboxPolicy): Promise<boolean>;
  /** Set the line that ends the room's outgoing mail (null: none); returns false if the room has no mailbox. */
  setMailboxSignature(roomId: string, signature: string | null): Promise<boolean>;
  /** Every room mailbox, by localpart. */
  listRoomMailboxes(): Promise<RoomMailboxRow[]>;

  // Mail domains and aliases (migration 10)
  /** The stored mail domains (not `mail.domain`), by name. */
  listMailDomains(): Promise<MailDomainRow[]>;
  /** Add a mail domain. @returns false when it was there already (nothing changes) */
  addMailDomain(domain: string, createdBy: string): Promise<boolean>;
  /** Remove a mail domain and every alias on it, in one transaction. @returns false when there was no such domain */
  removeMailDomain(domain: string): Promise<boolean>;
  /** Add one target to an alias. @returns the row, the existing one when it was there already */
  addMailAlias(address: string, target: string, createdBy: string): Promise<MailAliasRow>;
  /** Aliases matching `filter` (all when empty), by address then target. */
  listMailAliases(filter?: MailAliasFilter): Promise<MailAliasRow[]>;
  /**
   * Remove the aliases matching `filter`. @returns how many rows were removed
   * @throws Error when the filter is empty (that would remove every alias)
   */
  removeMailAliases(filter: MailAliasFilter): Promise<number>;

  // Room mailbox subscribers
  /**
   * Add or refresh a subscriber. An `active` subscriber stays active (a new pending request
   * does not demote it); a pending one gets the new token.
   */
  putSubscriber(row: Omit<SubscriberRow, "createdAt">): Promise<SubscriberRow>;
  /** Confirm a pending subscription by its token; returns the now active row, or null for an unknown token. */
  activateSubscriber(token: string): Promise<SubscriberRow | null>;
  /** Remove a subscriber (pending or active); returns false when there was none. */
  removeSubscriber(roomId: string, address: string): Promise<boolean>;
  /** Active subscribers of a room, by address. */
  listSubscribers(roomId: string): Promise<string[]>;

  // Per-user sending limits
  /** How many mails `envelopeFrom` queued since `since` (epoch ms). */
  countOutboundSince(envelopeFrom: string, since: number): Promise<number>;
  /** Which of `addresses` `envelopeFrom` has mailed before (any time). */
  knownOutboundRecipients(envelopeFrom: string, addresses: readonly string[]): Promise<Set<string>>;
  /** How many addresses `envelopeFrom` mailed for the first time since `since` (epoch ms). */
  countNewRecipientsSince(envelopeFrom: string, since: number): Promise<number>;

  // Portals
  /** Insert a portal, or update kind/subject/encrypted of an existing one (room_id is the key). */
  upsertPortal(portal: Omit<PortalRow, "createdAt">): Promise<PortalRow>;
  getPortalByRoom(roomId: string): Promise<PortalRow | null>;
  /** The DM portal of `localUserId` with the verified (or, `remoteVerified` false, the unverified) ghost of `remoteAddress`, if any. */
  getDmPortal(localUserId: string, remoteAddress: string, remoteVerified: boolean): Promise<PortalRow | null>;
  /** Forget a portal (e.g. when the room is left by everyone). */
  deletePortal(roomId: string): Promise<void>;

  // Message mappings
  /** Record a mapping; a second insert of the same (roomId, eventId) is ignored. */
  insertMessage(msg: Omit<MessageRow, "createdAt">): Promise<void>;
  /** All rooms/events a Message-ID is known in (a mail may reach several portals). */
  getMessagesByMessageId(messageId: string): Promise<MessageRow[]>;
  /** The newest received mail (direction `inbound`) posted in a room, or null. */
  latestInboundMessage(roomId: string): Promise<MessageRow | null>;
  getMessageByEvent(roomId: string, eventId: string): Promise<MessageRow | null>;
  /**
   * The newest mapping in `roomId` of the conversation rooted at `rootMessageId`: that message
   * itself or any message whose References contain it (exact match), by `createdAt`.
   * @returns the row, or null when the room knows neither
   */
  latestMessageInThread(roomId: string, rootMessageId: string): Promise<MessageRow | null>;
  /**
   * The message log of an address (the admin API): mappings whose sender is `address` or whose
   * participants include it (exact match on the normalised address), newest first, at most `limit`.
   */
  listMessagesByAddress(address: string, limit: number): Promise<MessageRow[]>;
  /** The message log of a room (the admin API): its mappings, newest first, at most `limit`. */
  listMessagesInRoom(roomId: string, limit: number): Promise<MessageRow[]>;

  // Inbound queue
  /**
   * Commit a received mail with its routing. Idempotent on (roomId or dmLocalUserId, messageId,
   * contentHash): a replay of the same mail to the same target returns the existing row with
   * `duplicate: true`; a different mail reusing a Message-ID is a new row.
   */
  insertInbound(mail: NewInbound): Promise<{ row: InboundRow; duplicate: boolean }>;
  /** Pending rows, oldest first (due or not). */
  listPendingInbound(limit: number): Promise<InboundRow[]>;
  /**
   * Pending rows due at `now` (epoch ms) that are the oldest pending row of their target (room,
   * or DM partner): per-target order is kept, and a row waiting for its retry holds back only
   * its own target. Oldest first, at most `limit`. Without their bytes: see {@link readInboundRaw}.
   */
  listDueInbound(now: number, limit: number): Promise<QueuedInbound[]>;
  /**
   * The stored bytes of inbound row `id`, to be read a chunk at a time, or null when there is
   * no such row. Empty (`head` of 0 bytes) once purged.
   * @throws RawDecryptError naming the row when the first chunk cannot be decrypted
   */
  readInboundRaw(id: number): Promise<StoredRaw | null>;
  /** The earliest `nextAttemptAt` of a pending row, or null when none is pending. */
  nextInboundAttemptAt(): Promise<number | null>;
  /** One row by id, or null. */
  getInbound(id: number): Promise<InboundRow | null>;
  /** The inbound mail that was posted as `eventId` in `roomId`, or null. */
  getInboundByEvent(roomId: string, eventId: string): Promise<InboundRow | null>;
  /** Rows in `state` (all states when null), newest first, at most `limit` (for the `queue` CLI). */
  listInbound(state: InboundState | null, limit: number): Promise<InboundRow[]>;
  /** Set the room of a pending row once its DM portal exists. */
  setInboundRoom(id: number, roomId: string): Promise<void>;
  markInboundPosted(id: number, eventId: string): Promise<void>;
  /** A temporary failure: attempts + 1, `error` kept, not tried again before `nextAttemptAt` (epoch ms). */
  markInboundRetry(id: number, error: string, nextAttemptAt: number): Promise<void>;
  /** A permanent failure, handled (DSN sent, notice posted): `failed`, attempts + 1, `error` kept. */
  markInboundFailed(id: number, error: string): Promise<void>;
  /** Put a row back in the queue, due now (the `queue retry` CLI). Returns false when there is no such row or it was posted. */
  requeueInbound(id: number): Promise<boolean>;
  /** Delete a row that is not posted (the `queue drop` CLI). Returns false when there is no such row or it was posted. */
  dropInbound(id: number): Promise<boolean>;

  // Outbound queue
  /**
   * Queue a mail, with a `pending` row per recipient. Idempotent on eventId: a replayed event
   * returns the existing row with `duplicate: true`.
   */
  enqueueOutbound(mail: NewOutbound): Promise<{ row: OutboundRow; duplicate: boolean }>;
  /**
   * Queue a mail held open for batching: like {@link enqueueOutbound}, but due at `closesAt`
   * (epoch ms), with its batch key and state. Idempotent on eventId.
   */
  enqueueOutboundBatch(mail: NewOutbound, batch: { key: string; state: BatchState; closesAt: number }): Promise<{ row: OutboundRow; duplicate: boolean }>;
  /** The open batch of `key` at `now` (queued, never attempted, due later), or null. */
  openBatch(key: string, now: number): Promise<OpenBatch | null>;
  /** The open batch whose mail has `messageId` at `now`, or null. */
  openBatchByMessageId(messageId: string, now: number): Promise<OpenBatch | null>;
  /**
   * Change an open batch: its mail bytes, state and due time. Only while it is still open at
   * `now` (the queue never took it), in one statement.
   * @returns false when it was no longer open (the caller treats the message as new)
   */
  updateBatch(outboundId: number, raw: Buffer, state: BatchState, closesAt: number, now: number): Promise<boolean>;
  /**
   * Delete an open batch (its last message was redacted), with its recipients, only while it is
   * still open at `now`. @returns false when it was no longer open
   */
  cancelBatch(outboundId: number, now: number): Promise<boolean>;
  /**
   * Whether the outbound mail with `messageId` carries the Matrix event `eventId`: it is the
   * mail's own event, or one of its batched messages. False when there is no such mail.
   */
  outboundIncludes(messageId: string, eventId: string): Promise<boolean>;
  /**
   * The room's unsubscribe token (made and kept on first use; concurrent callers get the same).
   * @param fresh a new random token, used when the room has none yet
   */
  unsubscribeToken(roomId: string, fresh: string): Promise<string>;
  /** The room an unsubscribe token belongs to, or null. */
  roomOfUnsubscribeToken(token: string): Promise<string | null>;
  /** Record that `address` unsubscribed from the room's mail (idempotent). */
  addOptOut(roomId: string, address: string): Promise<void>;
  /** The addresses that unsubscribed from the room's mail. */
  listOptOuts(roomId: string): Promise<Set<string>>;
  /**
   * Set a user's contact rule for an address (`bob@example.org`) or a domain (`example.org`),
   * replacing an earlier one for the same pattern (migration 8).
   */
  setContactRule(userId: string, pattern: string, rule: ContactRule, refusal?: { reason: string | null; quiet: boolean }): Promise<void>;
  /** A user's contact rules, by pattern. */
  listContactRules(userId: string): Promise<ContactRuleRow[]>;
  /**
   * The rule that decides mail from `address` to `userId`: the address's own rule, else its
   * domain's, else null (no rule).
   */
  contactRuleFor(userId: string, address: string): Promise<ContactRuleRow | null>;
  /** A user's settings; the defaults (`invite`, mailbox on, no display name) when never set. */
  getUserSettings(userId: string): Promise<UserSettings>;
  /** Change some of a user's settings. @returns the settings after the change */
  updateUserSettings(userId: string, patch: Partial<Omit<UserSettings, "userId">>): Promise<UserSettings>;
  /**
   * Record one attempt of held mail: a new request is `pending` with attempts 1; a known one
   * keeps its state, subject and preview, and counts the attempt.
   * @returns the request after the attempt, and whether it is new
   */
  noteContactRequest(request: NewContactRequest): Promise<{ row: ContactRequestRow; created: boolean }>;
  /** A user's request from `sender`, or null. */
  getContactRequest(userId: string, sender: string): Promise<ContactRequestRow | null>;
  /** A user's requests in `state` (all when null), newest attempt first. */
  listContactRequests(userId: string, state: ContactRequestState | null): Promise<ContactRequestRow[]>;
  /** How many of a user's requests they were told of since `since` (epoch ms). */
  countContactRequestNotices(userId: string, since: number): Promise<number>;
  /** Record that the user was told of the request (they are not told again). */
  markContactRequestNotified(userId: string, sender: string): Promise<void>;
  /** Decide a request. @returns false when there is none */
  setContactRequestState(userId: string, sender: string, state: ContactRequestState): Promise<boolean>;
  /** Forget the Matrix → mail mapping of one event (a redacted message of a cancelled batch). */
  deleteMessage(roomId: string, eventId: string): Promise<void>;
  /** Rows in `queued` or `deferred` whose nextAttemptAt <= now, oldest first. */
  listDueOutbound(now: number, limit: number): Promise<OutboundRow[]>;
  /** All delivered: state `sent`, recipients emptied. */
  markOutboundSent(id: number): Promise<void>;
  /** Temporary failure: keep `recipients` (those still to do), retry at `nextAttemptAt`. */
  markOutboundDeferred(id: number, recipients: string[], nextAttemptAt: number, error: string): Promise<void>;
  /** Permanent failure (5xx or retries exhausted). */
  markOutboundBounced(id: number, error: string): Promise<void>;
  getOutboundByEvent(eventId: string): Promise<OutboundRow | null>;
  /** The outbound mail with this id, or null. */
  getOutboundById(id: number): Promise<OutboundRow | null>;
  /**
   * Record one delivery attempt of mail `id`, in one transaction: each update is upserted into
   * its recipient's row (attempts + 1; a recipient without a row, e.g. queued before migration 3,
   * gets one; `reported` is kept), then the mail's row gets attempts + 1, `recipients` = those
   * of its current list still pending or deferred (in list order), `nextAttemptAt`, `lastError`
   * (the deferred and failed replies of this attempt, or null) and the state of
   * {@link OutboundAttemptResult.state}.
   * @param nextAttemptAt epoch ms of the next try (used while the mail stays deferred).
   * @throws Error if there is no mail `id` (nothing is written).
   */
  recordOutboundAttempt(id: number, updates: OutboundRecipientUpdate[], nextAttemptAt: number): Promise<OutboundAttemptResult>;
  /** The recipients of mail `id`, by address (empty for a mail queued before migration 3 and not attempted since). */
  listOutboundRecipients(id: number): Promise<OutboundRecipientRow[]>;
  /**
   * Failed recipients whose failure was not reported yet, across all mails, ordered by mail id
   * then address; at most `limit` rows.
   */
  listUnreportedOutboundFailures(limit: number): Promise<OutboundRecipientRow[]>;
  /** Mark the failures of these recipients of mail `id` reported (unknown addresses are ignored). */
  markOutboundRecipientsReported(id: number, addresses: string[]): Promise<void>;
  /** Remember that the delay notice of mail `id` went out at `at` (epoch ms). */
  markOutboundDelayWarned(id: number, at: number): Promise<void>;
  /** The earliest `nextAttemptAt` (epoch ms) of a queued/deferred mail that is later than `after`, or null. */
  nextOutboundAttemptAt(after: number): Promise<number | null>;
  /** Mails in `state` (all states when null), newest first, at most `limit` (for the `queue` CLI). */
  listOutbound(state: OutboundState | null, limit: number): Promise<OutboundRow[]>;
  /**
   * Try mail `id` again, due now (the `queue retry` CLI), in one transaction: every recipient
   * not accepted yet is due now (a `failed` one becomes `deferred`, its failure unreported, so
   * a new failure is reported again); the mail becomes `queued` (never attempted) or `deferred`
   * with those recipients. Returns false when there is no such mail, it is `sent`, its raw
   * bytes were purged ({@link BridgeStore.purgeRawMail}), or no recipient is left to try.
   */
  requeueOutbound(id: number): Promise<boolean>;
  /** Delete a mail that is not `sent`, with its recipients (the `queue drop` CLI). Returns false when there is no such mail or it was sent. */
  dropOutbound(id: number): Promise<boolean>;

  // Queue gauges (metrics, /health)
  /** How many items wait and how old the oldest is, per queue; one consistent read. */
  queueCounts(): Promise<QueueCountsSnapshot>;

  // Appservice transaction journal (migration 4; src/matrix/appserviceTransactions.ts)
  /**
   * Record an appservice transaction and its room events, in one transaction (Application
   * Service API › Pushing events: the 200 may only follow this commit). A transaction ID
   * recorded before is a no-op (`duplicate: true`, nothing written); an event ID journaled
   * before (by another transaction) is skipped. New events are `pending`, due now, in
   * `events` order.
   * @throws the driver's error (nothing is written)
   */
  recordAppserviceTransaction(txnId: string, events: NewMatrixEvent[]): Promise<RecordedAppserviceTransaction>;
  /**
   * The oldest pending event of each room, due or not, oldest first (by `seq`), at most `limit`:
   * the only event of its room that may be handled now.
   */
  listMatrixEventHeads(limit: number): Promise<MatrixEventRow[]>;
  /** One journaled event by ID, or null. */
  getMatrixEvent(eventId: string): Promise<MatrixEventRow | null>;
  /** The handler resolved: `done`, `doneAt` now. Only a pending event changes. */
  markMatrixEventDone(eventId: string): Promise<void>;
  /** The handler threw, to retry: attempts + 1, `error` kept, not retried before `nextAttemptAt` (epoch ms). Only a pending event changes. */
  markMatrixEventRetry(eventId: string, error: string, nextAttemptAt: number): Promise<void>;
  /** The handler threw for the last time: `failed`, attempts + 1, `error` kept, `doneAt` now. Only a pending event changes. */
  markMatrixEventFailed(eventId: string, error: string): Promise<void>;
  /**
   * Forget what is old: `done`/`failed` events finished before `before` and transaction IDs
   * received before `before` (epoch ms). Pending events are never deleted.
   * @returns how many rows of each were deleted
   */
  pruneMatrixJournal(before: number): Promise<{ events: number; txns: number }>;

  // App passwords for SMTP submission (migration 11; src/mail/submission/)
  /**
   * Store a new app password hash under `label` for `userId`.
   * @returns the row, or null when the user already has a password with that label
   */
  addAppPassword(userId: string, label: string, hash: string): Promise<AppPasswordRow | null>;
  /** A user's app passwords, by label. */
  listAppPasswords(userId: string): Promise<AppPasswordRow[]>;
  /** Delete a user's app password by label. @returns false when there was none */
  revokeAppPassword(userId: string, label: string): Promise<boolean>;
  /** Record a successful login with app password `id` at `at` (epoch ms). */
  markAppPasswordUsed(id: number, at: number): Promise<void>;

  // End-to-end-encryption state of the bridge's Matrix devices (migration 12; src/matrix/e2ee/)
  /** The sealed crypto store snapshot of Matrix user `userId` and its device ID, or null when none is saved. */
  loadCryptoStore(userId: string): Promise<{ deviceId: string; state: Buffer } | null>;
  /** Save (replace) the sealed crypto store snapshot `state` of `userId`'s device `deviceId`; durable once resolved. */
  saveCryptoStore(userId: string, deviceId: string, state: Buffer): Promise<void>;
  /** Forget `userId`'s crypto store (its device is gone). */
  deleteCryptoStore(userId: string): Promise<void>;

  // Stored mail retention (migration 5; src/store/retention.ts)
  /**
   * Empty the raw bytes of resolved mail that arrived before `before` (epoch ms): inbound mail
   * that is `posted` (by `receivedAt`); outbound mail that is `sent`, or `bounced` with every
   * failed recipient reported (by `createdAt`). `raw` becomes empty and `rawPurgedAt` is set
   * to now; the rows stay (dedupe, queue history). Mail still pending, queued, deferred, failed
   * inbound (it may be retried) and bounces not yet reported are never touched. At most
   * `limit` rows of each table, oldest first; one transaction.
   * @returns how many rows of each table were emptied
   * @throws RangeError when `before` is not finite or `limit` is not a non-negative integer
   */
  purgeRawMail(before: number, limit: number): Promise<RawPurgeResult>;
}
