/**
 * {@link BridgeStore} in SQL, one implementation for both engines (see `db/dialect.ts`).
 * Statements live in `queries/sql.ts`, row mappers in `queries/rows.ts`.
 */
import type { Database, Queryable, SqlValue } from "./db/Database.ts";
import { dbBool, dbBuffer, dbNumber, isUniqueViolation, jsonText, parseStringArray } from "./db/dialect.ts";
import * as Q from "./queries/sql.ts";
import { toAppPassword } from "./queries/rows.ts";
import { toMailAlias, toMailDomain } from "./queries/rows.ts";
import { toGhost, toInbound, toQueuedInbound, toMailbox, toSubscriber, toMatrixEvent, toMessage, toOutbound, toOutboundRecipient, toPortal } from "./queries/rows.ts";
import type { DbRow } from "./queries/rows.ts";
import { MailboxTakenError, RAW_CHUNK_BYTES } from "./Store.ts";
import { RawCipher } from "./rawCipher.ts";
import type {
  AppPasswordRow,
  BatchState,
  BridgeStore,
  ContactMode,
  ContactRequestRow,
  ContactRequestState,
  ContactRule,
  ContactRuleRow,
  GhostRow,
  NewContactRequest,
  UserSettings,
  InboundRow,
  InboundState,
  QueuedInbound,
  StoredRaw,
  RawPurgeResult,
  MailboxPolicy,
  MailAliasFilter,
  MailAliasRow,
  MailDomainRow,
  SubscriberRow,
  MatrixEventRow,
  MessageRow,
  NewInbound,
  NewMatrixEvent,
  NewOutbound,
  OpenBatch,
  OutboundAttemptResult,
  OutboundRecipientRow,
  OutboundRecipientUpdate,
  OutboundRow,
  OutboundState,
  QueueCountsSnapshot,
  PortalRow,
  RecordedAppserviceTransaction,
  RoomMailboxRow,
} from "./Store.ts";

/** A user's settings from their row; the defaults when there is none. */
function toUserSettings(userId: string, r: DbRow | undefined): UserSettings {
  if (!r) return { userId, contactMode: "invite", personalMailbox: true, displayName: null };
  return {
    userId,
    contactMode: String(r.contact_mode) as ContactMode,
    personalMailbox: dbBool(r.personal_mailbox),
    displayName: r.display_name === null || r.display_name === undefined ? null : String(r.display_name),
  };
}

function toContactRule(r: DbRow): ContactRuleRow {
  return {
    pattern: String(r.pattern),
    rule: String(r.rule) as ContactRule,
    reason: r.reason === null || r.reason === undefined ? null : String(r.reason),
    quiet: dbBool(r.quiet),
    createdAt: dbNumber(r.created_at),
  };
}

function toContactRequest(r: DbRow): ContactRequestRow {
  const text = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));
  return {
    userId: String(r.user_id),
    sender: String(r.sender),
    senderName: text(r.sender_name),
    verified: dbBool(r.verified),
    subject: text(r.subject),
    preview: text(r.preview),
    state: String(r.state) as ContactRequestState,
    attempts: dbNumber(r.attempts),
    firstAt: dbNumber(r.first_at),
    lastAt: dbNumber(r.last_at),
    notifiedAt: r.notified_at === null || r.notified_at === undefined ? null : dbNumber(r.notified_at),
  };
}

/** Epoch ms as an integer (BIGINT columns reject fractions on postgres). */
function ms(t: number): number {
  if (!Number.isFinite(t)) throw new RangeError("time must be a finite number of epoch ms");
  return Math.trunc(t);
}

function limitOf(n: number): number {
  if (!Number.isInteger(n) || n < 0) throw new RangeError("limit must be a non-negative integer");
  return n;
}

async function one<T>(db: Queryable, sql: string, params: readonly SqlValue[], map: (r: DbRow) => T): Promise<T | null> {
  const rows = await db.query<DbRow>(sql, params);
  const row = rows[0];
  return row === undefined ? null : map(row);
}

/** How often setRoomMailbox retries after losing a race on the room's own row. */
const MAILBOX_RETRIES = 3;

/**
 * The inbound queue target of a DM: one per local user, remote address and ghost kind, so
 * mail for one DM never waits behind, or is deduplicated against, another DM's. The insert
 * spells the same key in SQL for mail to a DM portal's room (`inboundTarget` in queries/sql.ts).
 */
function dmTarget(localUserId: string, remoteAddress: string, remoteVerified: boolean): string {
  return `dm:${localUserId} ${remoteAddress} ${remoteVerified ? "v" : "u"}`;
}

// ---------------------------------------------------------------- store

/**
 * The bridge's store over a {@link Database} (PostgreSQL or SQLite). The schema must be
 * migrated already (see `migrate.ts`; `openStore` does both).
 *
 * Every method is one statement or one transaction, committed when its promise resolves.
 * Times are epoch milliseconds, taken from `now()` (default `Date.now`).
 */
export class SqlStore implements BridgeStore {
  /** The underlying database (for migrations and tests). */
  readonly db: Database;
  readonly engine: "postgres" | "sqlite";
  readonly #now: () => number;
  /** Encrypts `raw` on write, decrypts it on read (src/store/rawCipher.ts). */
  readonly #cipher: RawCipher;

  /**
   * @param db an open, migrated database; the store owns it and closes it in {@link close}
   * @param opts.now clock in epoch ms (tests)
   * @param opts.cipher encryption at rest of `inbound_mail.raw` and `outbound_mail.raw`
   *   (default: none, plaintext written; an encrypted row then fails to read, loudly)
   */
  constructor(db: Database, opts: { now?: () => number; cipher?: RawCipher; rawChunkBytes?: number } = {}) {
    this.db = db;
    this.engine = db.engine;
    this.#now = opts.now ?? Date.now;
    this.#cipher = opts.cipher ?? RawCipher.plaintext();
    this.#chunkBytes = opts.rawChunkBytes ?? RAW_CHUNK_BYTES;
    if (!Number.isInteger(this.#chunkBytes) || this.#chunkBytes < 1) throw new RangeError(`rawChunkBytes must be an integer >= 1, got ${this.#chunkBytes}`);
  }

  /** Chunk size of large inbound mail, in bytes ({@link RAW_CHUNK_BYTES}; smaller in tests). */
  readonly #chunkBytes: number;

  /** Map an inbound row, decrypting `raw` (the first chunk only). @throws RawDecryptError naming the row and key ID */
  readonly #toInbound = (r: DbRow): InboundRow => {
    const row = toInbound(r);
    row.raw = this.#cipher.open(row.raw, "inbound_mail", row.id);
    return row;
  };

  /**
   * Map inbound rows with their whole message: `raw` decrypted and, for a chunked mail, joined
   * with its chunks.
   * @throws RawDecryptError naming the row and key ID; Error when a chunk is missing
   */
  async #inboundRows(q: Queryable, rows: DbRow[]): Promise<InboundRow[]> {
    const out: InboundRow[] = [];
    for (const r of rows) {
      const row = this.#toInbound(r);
      const chunks = r.raw_chunks === null || r.raw_chunks === undefined ? 0 : dbNumber(r.raw_chunks);
      if (chunks > 0) row.raw = await this.#storedRaw(q, row.id, row.raw, chunks).whole();
      out.push(row);
    }
    return out;
  }

  /** One inbound row with its whole message, or null. */
  async #inboundRow(q: Queryable, sql: string, params: readonly SqlValue[]): Promise<InboundRow | null> {
    return (await this.#inboundRows(q, await q.query<DbRow>(sql, params)))[0] ?? null;
  }

  /**
   * The bytes of inbound mail `id`: `head` (its decrypted `raw`) and `chunks` more, read one at
   * a time from `inbound_raw_chunk`.
   */
  #storedRaw(q: Queryable, id: number, head: Buffer, chunks: number): StoredRaw {
    const cipher = this.#cipher;
    async function* read(): AsyncGenerator<Buffer> {
      yield head;
      for (let seq = 1; seq <= chunks; seq++) {
        const r = (await q.query<DbRow>(Q.SQL_INBOUND_CHUNK, [id, seq]))[0];
        if (!r) throw new Error(`inbound mail ${id}: chunk ${seq} of ${chunks} is missing`);
        yield cipher.open(dbBuffer(r.data), "inbound_raw_chunk", id, `${id}/${seq}`);
      }
    }
    return {
      head,
      chunked: chunks > 0,
      maxBytes: head.length * (1 + chunks),
      chunks: read,
      async whole(): Promise<Buffer> {
        const parts: Buffer[] = [];
        for await (const chunk of read()) parts.push(chunk);
        return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
      },
    };
  }

  async readInboundRaw(id: number): Promise<StoredRaw | null> {
    const r = (await this.db.query<DbRow>(Q.SQL_INBOUND_RAW_HEAD, [id]))[0];
    if (!r) return null;
    return this.#storedRaw(this.db, id, this.#cipher.open(dbBuffer(r.raw), "inbound_mail", id), dbNumber(r.raw_chunks));
  }

  /** Map an outbound row, decrypting `raw`. @throws RawDecryptError naming the row and key ID */
  readonly #toOutbound = (r: DbRow): OutboundRow => {
    const row = toOutbound(r);
    row.raw = this.#cipher.open(row.raw, "outbound_mail", row.id);
    return row;
  };

  /** Close the database. */
  async close(): Promise<void> {
    await this.db.close();
  }

  // Ghosts

  async upsertGhost(ghost: Omit<GhostRow, "updatedAt">): Promise<void> {
    await this.db.execute(Q.SQL_UPSERT_GHOST, [ghost.address, ghost.userId, ghost.displayName, ms(this.#now())]);
  }

  getGhostByAddress(address: string): Promise<GhostRow | null> {
    return one(this.db, Q.SQL_GHOST_BY_ADDRESS, [address], toGhost);
  }

  getGhostByUserId(userId: string): Promise<GhostRow | null> {
    return one(this.db, Q.SQL_GHOST_BY_USER, [userId], toGhost);
  }

  // Room mailboxes

  /**
   * Give `roomId` the mailbox `localpart`, replacing the room's previous one. Setting the
   * mailbox a room already has returns the existing row unchanged.
   * @throws MailboxTakenError if another room holds `localpart` (also when another process
   *   claims it concurrently)
   */
  async setRoomMailbox(localpart: string, roomId: string, createdBy: string): Promise<RoomMailboxRow> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.db.transaction(async (tx) => {
          const existing = await one(tx, Q.SQL_MAILBOX_BY_LOCALPART, [localpart], toMailbox);
          if (existing) {
            if (existing.roomId !== roomId) throw new MailboxTakenError(localpart, existing.roomId);
            return existing;
          }
          await tx.execute(Q.SQL_DELETE_MAILBOX_OF_ROOM, [roomId]);
          const rows = await tx.query<DbRow>(Q.SQL_INSERT_MAILBOX, [localpart, roomId, createdBy, ms(this.#now())]);
          return toMailbox(rows[0]!);
        });
      } catch (err) {
        if (!isUniqueViolation(err)) throw err;
        // Lost a race: either the localpart was just claimed, or this room just got another mailbox.
        const holder = await this.getRoomMailboxByLocalpart(localpart);
        if (holder && holder.roomId !== roomId) throw new MailboxTakenError(localpart, holder.roomId);
        if (attempt >= MAILBOX_RETRIES) throw err;
      }
    }
  }

  getRoomMailboxByLocalpart(localpart: string): Promise<RoomMailboxRow | null> {
    return one(this.db, Q.SQL_MAILBOX_BY_LOCALPART, [localpart], toMailbox);
  }

  getRoomMailboxByRoom(roomId: string): Promise<RoomMailboxRow | null> {
    return one(this.db, Q.SQL_MAILBOX_BY_ROOM, [roomId], toMailbox);
  }

  async removeRoomMailbox(roomId: string): Promise<boolean> {
    const { changes } = await this.db.execute(Q.SQL_DELETE_MAILBOX_OF_ROOM, [roomId]);
    return changes > 0;
  }

  async setMailboxSignature(roomId: string, signature: string | null): Promise<boolean> {
    return (await this.db.execute(Q.SQL_SET_MAILBOX_SIGNATURE, [roomId, signature])).changes > 0;
  }

  async setMailboxPolicy(roomId: string, policy: MailboxPolicy): Promise<boolean> {
    return (await this.db.execute(Q.SQL_SET_MAILBOX_POLICY, [roomId, policy])).changes > 0;
  }

  async listRoomMailboxes(): Promise<RoomMailboxRow[]> {
    return (await this.db.query<DbRow>(Q.SQL_ALL_MAILBOXES, [])).map(toMailbox);
  }

  // Mail domains and aliases (migration 10)

  async listMailDomains(): Promise<MailDomainRow[]> {
    return (await this.db.query<DbRow>(Q.SQL_MAIL_DOMAINS, [])).map(toMailDomain);
  }

  async addMailDomain(domain: string, createdBy: string): Promise<boolean> {
    return (await this.db.execute(Q.SQL_ADD_MAIL_DOMAIN, [domain, createdBy, ms(this.#now())])).changes > 0;
  }

  async removeMailDomain(domain: string): Promise<boolean> {
    return this.db.transaction(async (tx) => {
      await tx.execute(Q.SQL_REMOVE_MAIL_ALIASES, [null, domain, null]);
      return (await tx.execute(Q.SQL_REMOVE_MAIL_DOMAIN, [domain])).changes > 0;
    });
  }

  async addMailAlias(address: string, target: string, createdBy: string): Promise<MailAliasRow> {
    const domain = address.slice(address.lastIndexOf("@") + 1);
    await this.db.execute(Q.SQL_ADD_MAIL_ALIAS, [address, domain, target, createdBy, ms(this.#now())]);
    const row = (await this.listMailAliases({ address, target }))[0];
    if (!row) throw new Error(`alias ${address} → ${target} was added but cannot be read back`);
    return row;
  }

  async listMailAliases(filter: MailAliasFilter = {}): Promise<MailAliasRow[]> {
    return (await this.db.query<DbRow>(Q.SQL_MAIL_ALIASES, [filter.address ?? null, filter.domain ?? null, filter.target ?? null])).map(toMailAlias);
  }

  async removeMailAliases(filter: MailAliasFilter): Promise<number> {
    if (filter.address === undefined && filter.domain === undefined && filter.target === undefined) throw new Error("removeMailAliases needs an address, domain or target");
    return (await this.db.execute(Q.SQL_REMOVE_MAIL_ALIASES, [filter.address ?? null, filter.domain ?? null, filter.target ?? null])).changes;
  }

  // Room mailbox subscribers

  async putSubscriber(row: Omit<SubscriberRow, "createdAt">): Promise<SubscriberRow> {
    const rows = await this.db.write<DbRow>(Q.SQL_PUT_SUBSCRIBER, [row.roomId, row.address, row.state, row.state === "active" ? null : row.token, ms(this.#now())]);
    return toSubscriber(rows[0]!);
  }

  async activateSubscriber(token: string): Promise<SubscriberRow | null> {
    const rows = await this.db.write<DbRow>(Q.SQL_ACTIVATE_SUBSCRIBER, [token]);
    return rows[0] ? toSubscriber(rows[0]) : null;
  }

  async removeSubscriber(roomId: string, address: string): Promise<boolean> {
    return (await this.db.execute(Q.SQL_DELETE_SUBSCRIBER, [roomId, address])).changes > 0;
  }

  async countOutboundSince(envelopeFrom: string, since: number): Promise<number> {
    return dbNumber((await this.db.query<DbRow>(Q.SQL_COUNT_OUTBOUND_SINCE, [envelopeFrom, ms(since)]))[0]?.n ?? 0);
  }

  async knownOutboundRecipients(envelopeFrom: string, addresses: readonly string[]): Promise<Set<string>> {
    const known = new Set<string>();
    for (const address of new Set(addresses)) {
      if ((await this.db.query<DbRow>(Q.SQL_KNOWN_RECIPIENT, [envelopeFrom, address])).length > 0) known.add(address);
    }
    return known;
  }

  async countNewRecipientsSince(envelopeFrom: string, since: number): Promise<number> {
    return dbNumber((await this.db.query<DbRow>(Q.SQL_COUNT_NEW_RECIPIENTS, [envelopeFrom, ms(since)]))[0]?.n ?? 0);
  }

  async listSubscribers(roomId: string): Promise<string[]> {
    const rows = await this.db.query<DbRow>(Q.SQL_ACTIVE_SUBSCRIBERS, [roomId]);
    return rows.map((r) => String(r.address));
  }

  // Portals

  /**
   * Insert a portal, or update kind/subject/encrypted of the existing one (its localUserId,
   * remoteAddress and createdAt are kept).
   * @returns the stored row
   * @throws the driver's unique-violation error if another `dm` portal has the same
   *   (localUserId, remoteAddress)
   */
  async upsertPortal(portal: Omit<PortalRow, "createdAt">): Promise<PortalRow> {
    const rows = await this.db.write<DbRow>(Q.SQL_UPSERT_PORTAL, [
      portal.roomId,
      portal.kind,
      portal.localUserId,
      portal.remoteAddress,
      portal.subject,
      portal.encrypted,
      ms(this.#now()),
      portal.remoteVerified,
    ]);
    return toPortal(rows[0]!);
  }

  getPortalByRoom(roomId: string): Promise<PortalRow | null> {
    return one(this.db, Q.SQL_PORTAL_BY_ROOM, [roomId], toPortal);
  }

  getDmPortal(localUserId: string, remoteAddress: string, remoteVerified: boolean): Promise<PortalRow | null> {
    return one(this.db, Q.SQL_DM_PORTAL, [localUserId, remoteAddress, remoteVerified], toPortal);
  }

  async deletePortal(roomId: string): Promise<void> {
    await this.db.execute(Q.SQL_DELETE_PORTAL, [roomId]);
  }

  // Message mappings

  async insertMessage(msg: Omit<MessageRow, "createdAt">): Promise<void> {
    await this.db.execute(Q.SQL_INSERT_MESSAGE, [
      msg.roomId,
      msg.eventId,
      msg.messageId,
      jsonText(msg.references),
      msg.direction,
      msg.sender,
      msg.subject,
      ms(this.#now()),
      jsonText(msg.participants),
      msg.viaList,
    ]);
  }

  /** All mappings of `messageId`, oldest first. */
  async getMessagesByMessageId(messageId: string): Promise<MessageRow[]> {
    const rows = await this.db.query<DbRow>(Q.SQL_MESSAGES_BY_MESSAGE_ID, [messageId]);
    return rows.map(toMessage);
  }

  getMessageByEvent(roomId: string, eventId: string): Promise<MessageRow | null> {
    return one(this.db, Q.SQL_MESSAGE_BY_EVENT, [roomId, eventId], toMessage);
  }

  latestMessageInThread(roomId: string, rootMessageId: string): Promise<MessageRow | null> {
    return one(this.db, Q.SQL_LATEST_IN_THREAD, [roomId, rootMessageId, jsonText(rootMessageId)], toMessage);
  }

  async listMessagesByAddress(address: string, limit: number): Promise<MessageRow[]> {
    const rows = await this.db.query<DbRow>(Q.SQL_MESSAGES_BY_ADDRESS, [address, jsonText(address), limit]);
    return rows.map(toMessage);
  }

  async listMessagesInRoom(roomId: string, limit: number): Promise<MessageRow[]> {
    const rows = await this.db.query<DbRow>(Q.SQL_MESSAGES_IN_ROOM, [roomId, limit]);
    return rows.map(toMessage);
  }

  // Inbound queue

  /**
   * Commit a received mail as `pending`. The dedupe target is `dm:<localUserId>` for mail
   * to a new DM portal (`dmLocalUserId`) AND for mail into an existing `dm` portal room, so a
   * replay that arrives after the worker created the DM portal is still recognised; for any
   * other room it is the room ID.
   * @throws Error if neither roomId nor dmLocalUserId is set
   */
  async insertInbound(mail: NewInbound): Promise<{ row: InboundRow; duplicate: boolean }> {
    if (mail.roomId === null && mail.dmLocalUserId === null) {
      throw new Error("inbound mail needs a roomId or a dmLocalUserId");
    }
    // Mail for a room that is a DM portal queues under the DM's key: the insert decides that
    // itself (Q.SQL_INSERT_INBOUND), in the same statement.
    const target = mail.roomId ?? dmTarget(mail.dmLocalUserId!, mail.sender, mail.senderVerified);
    // A large mail is stored in chunks (migration 13): the row holds the first.
    const size = this.#chunkBytes;
    const chunks = mail.raw.length > size ? Math.ceil(mail.raw.length / size) - 1 : 0;
    const params: SqlValue[] = [
      target,
      mail.roomId,
      mail.dmLocalUserId,
      mail.replyToEventId,
      mail.messageId,
      mail.sender,
      this.#cipher.seal(chunks > 0 ? mail.raw.subarray(0, size) : mail.raw, "inbound_mail"),
      ms(this.#now()),
      mail.senderVerified,
      mail.senderName,
      mail.auth === null ? null : jsonText(mail.auth),
      mail.spam === null ? null : jsonText(mail.spam),
      jsonText(mail.participants),
      mail.contentHash,
      mail.envelopeFrom,
      mail.kind ?? "mail",
      mail.deliveredTo ?? null,
      mail.recipientTag ?? null,
      chunks,
    ];
    // The insert does not read the bytes back: the row carries the caller's plaintext.
    const fresh = (inserted: DbRow): { row: InboundRow; duplicate: boolean } => ({ row: { ...toInbound({ ...inserted, raw: Buffer.alloc(0) }), raw: mail.raw }, duplicate: false });
    const existing = async (q: Queryable): Promise<{ row: InboundRow; duplicate: boolean }> => {
      const row = await this.#inboundRow(q, Q.SQL_INBOUND_BY_KEY, [target, mail.messageId, mail.contentHash, mail.roomId]);
      if (!row) throw new Error("inbound insert conflicted but no row was found");
      return { row, duplicate: true };
    };
    if (chunks === 0) {
      // One statement, a transaction of its own: mails stored at the same time share one round
      // trip to the database and one commit (Database.write). The row it conflicted with, if
      // any, is committed: it is read afterwards.
      const inserted = await this.db.write<DbRow>(Q.SQL_INSERT_INBOUND, params);
      return inserted[0] ? fresh(inserted[0]) : existing(this.db);
    }
    return this.db.transaction(async (tx) => {
      const inserted = await tx.query<DbRow>(Q.SQL_INSERT_INBOUND, params);
      if (!inserted[0]) return existing(tx);
      const id = dbNumber(inserted[0].id);
      // One chunk at a time: each crosses to the database (and is copied there) on its own.
      for (let seq = 1; seq <= chunks; seq++) {
        const chunk = mail.raw.subarray(seq * size, (seq + 1) * size);
        await tx.execute(Q.SQL_INSERT_INBOUND_CHUNK, [id, seq, this.#cipher.seal(chunk, "inbound_raw_chunk", `${id}/${seq}`)]);
      }
      return fresh(inserted[0]);
    });
  }

  async listPendingInbound(limit: number): Promise<InboundRow[]> {
    return this.#inboundRows(this.db, await this.db.query<DbRow>(Q.SQL_PENDING_INBOUND, [limitOf(limit)]));
  }

  async setInboundRoom(id: number, roomId: string): Promise<void> {
    await this.db.execute(Q.SQL_SET_INBOUND_ROOM, [id, roomId]);
  }

  async markInboundPosted(id: number, eventId: string): Promise<void> {
    await this.db.execute(Q.SQL_INBOUND_POSTED, [id, eventId]);
  }

  async listDueInbound(now: number, limit: number): Promise<QueuedInbound[]> {
    const rows = await this.db.query<DbRow>(Q.SQL_DUE_INBOUND, [ms(now), limitOf(limit)]);
    return rows.map(toQueuedInbound);
  }

  async nextInboundAttemptAt(): Promise<number | null> {
    const due = (await this.db.query<DbRow>(Q.SQL_NEXT_INBOUND_DUE, []))[0]?.due;
    return due === null || due === undefined ? null : dbNumber(due);
  }

  getInbound(id: number): Promise<InboundRow | null> {
    return this.#inboundRow(this.db, Q.SQL_INBOUND_BY_ID, [id]);
  }

  getInboundByEvent(roomId: string, eventId: string): Promise<InboundRow | null> {
    return this.#inboundRow(this.db, Q.SQL_INBOUND_BY_EVENT, [roomId, eventId]);
  }

  async listInbound(state: InboundState | null, limit: number): Promise<InboundRow[]> {
    const rows = state === null ? await this.db.query<DbRow>(Q.SQL_INBOUND_ALL, [limitOf(limit)]) : await this.db.query<DbRow>(Q.SQL_INBOUND_IN_STATE, [state, limitOf(limit)]);
    return this.#inboundRows(this.db, rows);
  }

  async markInboundRetry(id: number, error: string, nextAttemptAt: number): Promise<void> {
    await this.db.execute(Q.SQL_INBOUND_RETRY, [id, error, ms(nextAttemptAt)]);
  }

  async markInboundFailed(id: number, error: string): Promise<void> {
    await this.db.execute(Q.SQL_INBOUND_FAILED, [id, error]);
  }

  async requeueInbound(id: number): Promise<boolean> {
    return (await this.db.execute(Q.SQL_INBOUND_REQUEUE, [id, ms(this.#now())])).changes > 0;
  }

  async dropInbound(id: number): Promise<boolean> {
    return this.db.transaction(async (tx) => {
      const dropped = (await tx.execute(Q.SQL_INBOUND_DROP, [id])).changes > 0;
      if (dropped) await tx.execute(Q.SQL_DROP_INBOUND_CHUNKS, [id]);
      return dropped;
    });
  }

  // Outbound queue

  /** Queue a mail as `queued`, due now, with a `pending` row per (distinct) recipient. */
  enqueueOutbound(mail: NewOutbound): Promise<{ row: OutboundRow; duplicate: boolean }> {
    return this.#enqueue(mail, null);
  }

  enqueueOutboundBatch(mail: NewOutbound, batch: { key: string; state: BatchState; closesAt: number }): Promise<{ row: OutboundRow; duplicate: boolean }> {
    return this.#enqueue(mail, batch);
  }

  /** Insert the queue row (due now, or held open as a batch until `closesAt`) and its recipients; idempotent on eventId. */
  async #enqueue(mail: NewOutbound, batch: { key: string; state: BatchState; closesAt: number } | null): Promise<{ row: OutboundRow; duplicate: boolean }> {
    const now = ms(this.#now());
    return this.db.transaction(async (tx) => {
      const inserted = await tx.query<DbRow>(Q.SQL_ENQUEUE_OUTBOUND, [
        mail.roomId,
        mail.eventId,
        mail.messageId,
        mail.envelopeFrom,
        jsonText(mail.recipients),
        this.#cipher.seal(mail.raw, "outbound_mail"),
        now,
        batch ? ms(batch.closesAt) : now,
        batch?.key ?? null,
        batch ? this.#sealBatch(batch.state) : null,
      ]);
      if (inserted[0]) {
        const row = this.#toOutbound(inserted[0]);
        for (const address of mail.recipients) await tx.execute(Q.SQL_INSERT_OUTBOUND_RECIPIENT, [row.id, address, now]);
        return { row, duplicate: false };
      }
      const existing = await one(tx, Q.SQL_OUTBOUND_BY_EVENT, [mail.eventId], this.#toOutbound);
      if (!existing) throw new Error("outbound insert conflicted but no row was found");
      return { row: existing, duplicate: true };
    });
  }

  openBatch(key: string, now: number): Promise<OpenBatch | null> {
    return one(this.db, Q.SQL_OPEN_BATCH, [key, ms(now)], this.#toBatch);
  }

  openBatchByMessageId(messageId: string, now: number): Promise<OpenBatch | null> {
    return one(this.db, Q.SQL_OPEN_BATCH_BY_MESSAGE_ID, [messageId, ms(now)], this.#toBatch);
  }

  async updateBatch(outboundId: number, raw: Buffer, state: BatchState, closesAt: number, now: number): Promise<boolean> {
    const sealed = this.#cipher.seal(raw, "outbound_mail");
    return (await this.db.execute(Q.SQL_UPDATE_BATCH, [outboundId, sealed, this.#sealBatch(state), ms(closesAt), ms(now)])).changes > 0;
  }

  async cancelBatch(outboundId: number, now: number): Promise<boolean> {
    return (await this.db.execute(Q.SQL_CANCEL_BATCH, [outboundId, ms(now)])).changes > 0;
  }

  async outboundIncludes(messageId: string, eventId: string): Promise<boolean> {
    for (const r of await this.db.query<DbRow>(Q.SQL_OUTBOUND_EVENTS_BY_MESSAGE_ID, [messageId])) {
      if (r.event_id === eventId) return true;
      if (r.batch_state === null || r.batch_state === undefined) continue;
      const id = dbNumber(r.id);
      const stored = dbBuffer(r.batch_state);
      if (stored.length === 0) continue; // purged with the mail's bytes
      const state = JSON.parse(this.#cipher.open(stored, "outbound_mail", id).toString("utf8")) as BatchState;
      if (state.parts.some((p) => p.eventId === eventId)) return true;
    }
    return false;
  }

  latestInboundMessage(roomId: string): Promise<MessageRow | null> {
    return one(this.db, Q.SQL_LATEST_INBOUND_OF_ROOM, [roomId], toMessage);
  }

  async unsubscribeToken(roomId: string, fresh: string): Promise<string> {
    await this.db.execute(Q.SQL_PUT_UNSUBSCRIBE_TOKEN, [roomId, fresh, ms(this.#now())]);
    const row = (await this.db.query<DbRow>(Q.SQL_UNSUBSCRIBE_TOKEN_OF_ROOM, [roomId]))[0];
    if (!row) throw new Error(`room ${roomId}: unsubscribe token missing right after it was stored`);
    return String(row.token);
  }

  async roomOfUnsubscribeToken(token: string): Promise<string | null> {
    const row = (await this.db.query<DbRow>(Q.SQL_ROOM_OF_UNSUBSCRIBE_TOKEN, [token]))[0];
    return row ? String(row.room_id) : null;
  }

  async addOptOut(roomId: string, address: string): Promise<void> {
    await this.db.execute(Q.SQL_ADD_OPTOUT, [roomId, address, ms(this.#now())]);
  }

  async listOptOuts(roomId: string): Promise<Set<string>> {
    return new Set((await this.db.query<DbRow>(Q.SQL_OPTOUTS_OF_ROOM, [roomId])).map((r) => String(r.address)));
  }

  async setContactRule(userId: string, pattern: string, rule: ContactRule, refusal?: { reason: string | null; quiet: boolean }): Promise<void> {
    const block = rule === "block" && refusal ? refusal : { reason: null, quiet: false };
    await this.db.execute(Q.SQL_PUT_CONTACT_RULE, [userId, pattern, rule, ms(this.#now()), block.reason, block.quiet]);
  }

  async listContactRules(userId: string): Promise<ContactRuleRow[]> {
    return (await this.db.query<DbRow>(Q.SQL_CONTACT_RULES_OF_USER, [userId])).map(toContactRule);
  }

  async contactRuleFor(userId: string, address: string): Promise<ContactRuleRow | null> {
    const domain = address.slice(address.lastIndexOf("@") + 1);
    const rules = new Map((await this.db.query<DbRow>(Q.SQL_CONTACT_RULES_FOR, [userId, address, domain])).map((r) => [String(r.pattern), toContactRule(r)]));
    return rules.get(address) ?? rules.get(domain) ?? null;
  }

  async getUserSettings(userId: string): Promise<UserSettings> {
    return toUserSettings(userId, (await this.db.query<DbRow>(Q.SQL_USER_SETTINGS, [userId]))[0]);
  }

  async updateUserSettings(userId: string, patch: Partial<Omit<UserSettings, "userId">>): Promise<UserSettings> {
    return this.db.transaction(async (tx) => {
      const before = toUserSettings(userId, (await tx.query<DbRow>(Q.SQL_USER_SETTINGS, [userId]))[0]);
      const after: UserSettings = { ...before, ...patch, userId };
      await tx.execute(Q.SQL_PUT_USER_SETTINGS, [userId, after.contactMode, after.personalMailbox, after.displayName, ms(this.#now())]);
      return after;
    });
  }

  async noteContactRequest(request: NewContactRequest): Promise<{ row: ContactRequestRow; created: boolean }> {
    const now = ms(this.#now());
    const { changes } = await this.db.execute(Q.SQL_INSERT_CONTACT_REQUEST, [
      request.userId,
      request.sender,
      request.senderName,
      request.verified,
      request.subject,
      request.preview,
      now,
    ]);
    if (changes === 0) await this.db.execute(Q.SQL_BUMP_CONTACT_REQUEST, [request.userId, request.sender, now]);
    const row = await this.getContactRequest(request.userId, request.sender);
    if (!row) throw new Error(`contact request of ${request.userId} from ${request.sender} vanished while being recorded`);
    return { row, created: changes > 0 };
  }

  async getContactRequest(userId: string, sender: string): Promise<ContactRequestRow | null> {
    const r = (await this.db.query<DbRow>(Q.SQL_CONTACT_REQUEST, [userId, sender]))[0];
    return r ? toContactRequest(r) : null;
  }

  async listContactRequests(userId: string, state: ContactRequestState | null): Promise<ContactRequestRow[]> {
    const rows = state === null ? await this.db.query<DbRow>(Q.SQL_CONTACT_REQUESTS_OF_USER, [userId]) : await this.db.query<DbRow>(Q.SQL_CONTACT_REQUESTS_IN_STATE, [userId, state]);
    return rows.map(toContactRequest);
  }

  async countContactRequestNotices(userId: string, since: number): Promise<number> {
    return dbNumber((await this.db.query<DbRow>(Q.SQL_COUNT_CONTACT_REQUEST_NOTICES, [userId, ms(since)]))[0]?.n ?? 0);
  }

  async markContactRequestNotified(userId: string, sender: string): Promise<void> {
    await this.db.execute(Q.SQL_CONTACT_REQUEST_NOTIFIED, [userId, sender, ms(this.#now())]);
  }

  async setContactRequestState(userId: string, sender: string, state: ContactRequestState): Promise<boolean> {
    return (await this.db.execute(Q.SQL_SET_CONTACT_REQUEST_STATE, [userId, sender, state])).changes > 0;
  }

  async addAppPassword(userId: string, label: string, hash: string): Promise<AppPasswordRow | null> {
    const row = (await this.db.write<DbRow>(Q.SQL_ADD_APP_PASSWORD, [userId, label, hash, ms(this.#now())]))[0];
    return row === undefined ? null : toAppPassword(row);
  }

  async listAppPasswords(userId: string): Promise<AppPasswordRow[]> {
    return (await this.db.query<DbRow>(Q.SQL_APP_PASSWORDS_OF_USER, [userId])).map(toAppPassword);
  }

  async revokeAppPassword(userId: string, label: string): Promise<boolean> {
    return (await this.db.execute(Q.SQL_REVOKE_APP_PASSWORD, [userId, label])).changes > 0;
  }

  async markAppPasswordUsed(id: number, at: number): Promise<void> {
    await this.db.execute(Q.SQL_APP_PASSWORD_USED, [id, ms(at)]);
  }

  async loadCryptoStore(userId: string): Promise<{ deviceId: string; state: Buffer } | null> {
    const row = (await this.db.query<DbRow>(Q.SQL_CRYPTO_STORE_OF_USER, [userId]))[0];
    return row ? { deviceId: String(row.device_id), state: dbBuffer(row.state) } : null;
  }

  async saveCryptoStore(userId: string, deviceId: string, state: Buffer): Promise<void> {
    await this.db.execute(Q.SQL_SAVE_CRYPTO_STORE, [userId, deviceId, state, ms(this.#now())]);
  }

  async deleteCryptoStore(userId: string): Promise<void> {
    await this.db.execute(Q.SQL_DELETE_CRYPTO_STORE, [userId]);
  }

  async deleteMessage(roomId: string, eventId: string): Promise<void> {
    await this.db.execute(Q.SQL_DELETE_MESSAGE, [roomId, eventId]);
  }

  /** Batch state as stored: JSON, sealed like the mail itself. */
  #sealBatch(state: BatchState): Buffer {
    return this.#cipher.seal(Buffer.from(JSON.stringify(state), "utf8"), "outbound_mail");
  }

  /** Map an open-batch row, opening its state. @throws RawDecryptError; TypeError on a malformed state */
  readonly #toBatch = (r: DbRow): OpenBatch => {
    const outboundId = dbNumber(r.id);
    const state = JSON.parse(this.#cipher.open(dbBuffer(r.batch_state), "outbound_mail", outboundId).toString("utf8")) as BatchState;
    if (!Array.isArray(state.parts) || typeof state.mail !== "object" || state.mail === null) throw new TypeError(`outbound mail ${outboundId}: malformed batch state`);
    return {
      outboundId,
      messageId: String(r.message_id),
      key: String(r.batch_key),
      state,
      closesAt: dbNumber(r.next_attempt_at),
      openedAt: dbNumber(r.created_at),
    };
  };

  /** Due rows (`queued`/`deferred`, nextAttemptAt <= now ms), in queue order (oldest first). */
  async listDueOutbound(now: number, limit: number): Promise<OutboundRow[]> {
    const rows = await this.db.query<DbRow>(Q.SQL_DUE_OUTBOUND, [ms(now), limitOf(limit)]);
    return rows.map(this.#toOutbound);
  }

  /** Mark delivered: `sent`, recipients emptied, attempts + 1, lastError cleared. */
  async markOutboundSent(id: number): Promise<void> {
    await this.db.execute(Q.SQL_OUTBOUND_SENT, [id]);
  }

  /** Temporary failure: `deferred`, keep `recipients`, retry at `nextAttemptAt` (epoch ms), attempts + 1. */
  async markOutboundDeferred(id: number, recipients: string[], nextAttemptAt: number, error: string): Promise<void> {
    await this.db.execute(Q.SQL_OUTBOUND_DEFERRED, [id, jsonText(recipients), ms(nextAttemptAt), error]);
  }

  /** Permanent failure: `bounced`, attempts + 1; recipients are kept as they were. */
  async markOutboundBounced(id: number, error: string): Promise<void> {
    await this.db.execute(Q.SQL_OUTBOUND_BOUNCED, [id, error]);
  }

  getOutboundByEvent(eventId: string): Promise<OutboundRow | null> {
    return one(this.db, Q.SQL_OUTBOUND_BY_EVENT, [eventId], this.#toOutbound);
  }

  /** The outbound mail with this id, or null. */
  getOutboundById(id: number): Promise<OutboundRow | null> {
    return one(this.db, Q.SQL_OUTBOUND_BY_ID, [id], this.#toOutbound);
  }

  /**
   * Record one delivery attempt (see {@link BridgeStore.recordOutboundAttempt}).
   * @throws Error if there is no mail `id` (the transaction is rolled back)
   */
  async recordOutboundAttempt(id: number, updates: OutboundRecipientUpdate[], nextAttemptAt: number): Promise<OutboundAttemptResult> {
    const now = ms(this.#now());
    const next = ms(nextAttemptAt);
    return this.db.transaction(async (tx) => {
      const current = await tx.query<DbRow>(Q.SQL_OUTBOUND_RECIPIENT_LIST, [id]);
      if (!current[0]) throw new Error(`no outbound mail ${id}`);
      const list = parseStringArray(current[0].recipients);
      for (const u of updates) {
        await tx.execute(Q.SQL_UPSERT_OUTBOUND_RECIPIENT, [
          id,
          u.address,
          u.state,
          u.code,
          u.reply,
          u.nextAttemptAt === null ? null : ms(u.nextAttemptAt),
          now,
        ]);
      }
      const recipients = (await tx.query<DbRow>(Q.SQL_OUTBOUND_RECIPIENTS, [id])).map(toOutboundRecipient);
      const byAddress = new Map(recipients.map((r) => [r.address, r]));
      // A listed address without a row (queued before migration 3, not in `updates`) is still pending.
      const remaining = list.filter((a) => {
        const st = byAddress.get(a)?.state ?? "pending";
        return st === "pending" || st === "deferred";
      });
      const state = remaining.length > 0 ? "deferred" : recipients.some((r) => r.state === "failed") ? "bounced" : "sent";
      const problems = updates.filter((u) => u.state !== "sent").map((u) => `${u.address}: ${u.reply}`);
      await tx.execute(Q.SQL_OUTBOUND_ATTEMPT, [id, state, jsonText(remaining), next, problems.length > 0 ? problems.join("; ") : null]);
      return { state, recipients };
    });
  }

  /** Recipients of mail `id`, by address. */
  async listOutboundRecipients(id: number): Promise<OutboundRecipientRow[]> {
    return (await this.db.query<DbRow>(Q.SQL_OUTBOUND_RECIPIENTS, [id])).map(toOutboundRecipient);
  }

  /** Failed, unreported recipients, by mail id then address, at most `limit`. */
  async listUnreportedOutboundFailures(limit: number): Promise<OutboundRecipientRow[]> {
    return (await this.db.query<DbRow>(Q.SQL_UNREPORTED_OUTBOUND_FAILURES, [limitOf(limit)])).map(toOutboundRecipient);
  }

  /** Mark the failures of `addresses` of mail `id` reported, in one transaction. */
  async markOutboundRecipientsReported(id: number, addresses: string[]): Promise<void> {
    if (addresses.length === 0) return;
    const now = ms(this.#now());
    await this.db.transaction(async (tx) => {
      for (const address of addresses) await tx.execute(Q.SQL_OUTBOUND_RECIPIENT_REPORTED, [id, address, now]);
    });
  }

  /** Set `delayWarnedAt` of mail `id` to `at` (epoch ms, truncated). */
  async markOutboundDelayWarned(id: number, at: number): Promise<void> {
    await this.db.execute(Q.SQL_OUTBOUND_DELAY_WARNED, [id, ms(at)]);
  }

  /** Earliest nextAttemptAt (ms) > `after` of a queued/deferred mail, or null. */
  async nextOutboundAttemptAt(after: number): Promise<number | null> {
    const rows = await this.db.query<DbRow>(Q.SQL_NEXT_OUTBOUND_ATTEMPT, [ms(after)]);
    const t = rows[0]?.t;
    return t === null || t === undefined ? null : dbNumber(t);
  }

  /** Mails in `state` (any when null), newest first, at most `limit`. */
  async listOutbound(state: OutboundState | null, limit: number): Promise<OutboundRow[]> {
    const rows = state === null ? await this.db.query<DbRow>(Q.SQL_OUTBOUND_ALL, [limitOf(limit)]) : await this.db.query<DbRow>(Q.SQL_OUTBOUND_IN_STATE, [state, limitOf(limit)]);
    return rows.map(this.#toOutbound);
  }

  /**
   * Make mail `id` due now with every recipient not accepted yet (see
   * {@link BridgeStore.requeueOutbound}). The remaining list keeps its order; recipients
   * taken back from `failed` follow, by address.
   */
  async requeueOutbound(id: number): Promise<boolean> {
    const now = ms(this.#now());
    return this.db.transaction(async (tx) => {
      const mail = (await tx.query<DbRow>(Q.SQL_OUTBOUND_REQUEUE_READ, [id]))[0];
      if (!mail || mail.state === "sent") return false;
      await tx.execute(Q.SQL_OUTBOUND_RECIPIENTS_REQUEUE, [id, now]);
      const rows = (await tx.query<DbRow>(Q.SQL_OUTBOUND_RECIPIENTS, [id])).map(toOutboundRecipient);
      const stateOf = new Map(rows.map((r) => [r.address, r.state]));
      // A listed address without a row (queued before migration 3) is still to do.
      const listed = parseStringArray(mail.recipients).filter((a) => (stateOf.get(a) ?? "pending") !== "sent");
      const taken = rows.filter((r) => r.state !== "sent" && !listed.includes(r.address)).map((r) => r.address);
      const recipients = [...listed, ...taken];
      if (recipients.length === 0) return false;
      const state = dbNumber(mail.attempts) === 0 ? "queued" : "deferred";
      await tx.execute(Q.SQL_OUTBOUND_REQUEUE, [id, state, jsonText(recipients), now]);
      return true;
    });
  }

  /** Delete mail `id` and its recipients unless it was sent, in one transaction. */
  async dropOutbound(id: number): Promise<boolean> {
    return this.db.transaction(async (tx) => {
      await tx.execute(Q.SQL_OUTBOUND_DROP_RECIPIENTS, [id]);
      return (await tx.execute(Q.SQL_OUTBOUND_DROP, [id])).changes > 0;
    });
  }

  // Queue gauges

  /** Both queues' sizes in one statement. */
  async queueCounts(): Promise<QueueCountsSnapshot> {
    const r = (await this.db.query<DbRow>(Q.SQL_QUEUE_COUNTS, []))[0];
    if (!r) throw new Error("queue counts query returned no row");
    const at = (v: unknown): number | null => (v === null || v === undefined ? null : dbNumber(v));
    return {
      inbound: { waiting: dbNumber(r.inbound_waiting), oldestWaitingAt: at(r.inbound_oldest), failed: dbNumber(r.inbound_failed) },
      outbound: { waiting: dbNumber(r.outbound_waiting), oldestWaitingAt: at(r.outbound_oldest), failed: dbNumber(r.outbound_failed) },
    };
  }

  // Appservice transaction journal

  /**
   * Record transaction `txnId` and its new events in one transaction (see
   * {@link BridgeStore.recordAppserviceTransaction}); events are inserted in `events` order,
   * so their `seq` is their arrival order.
   * @throws the driver's error (rolled back: nothing is written)
   */
  async recordAppserviceTransaction(txnId: string, events: NewMatrixEvent[]): Promise<RecordedAppserviceTransaction> {
    const now = ms(this.#now());
    return this.db.transaction(async (tx) => {
      const fresh = await tx.query<DbRow>(Q.SQL_INSERT_APPSERVICE_TXN, [txnId, now]);
      if (!fresh[0]) return { duplicate: true, recorded: 0 };
      let recorded = 0;
      for (const e of events) {
        const inserted = await tx.query<DbRow>(Q.SQL_INSERT_MATRIX_EVENT, [e.eventId, e.roomId, txnId, e.json, now]);
        if (inserted[0]) recorded++;
      }
      return { duplicate: false, recorded };
    });
  }

  /** Oldest pending event of each room, oldest first, at most `limit`. */
  async listMatrixEventHeads(limit: number): Promise<MatrixEventRow[]> {
    return (await this.db.query<DbRow>(Q.SQL_MATRIX_EVENT_HEADS, [limitOf(limit)])).map(toMatrixEvent);
  }

  getMatrixEvent(eventId: string): Promise<MatrixEventRow | null> {
    return one(this.db, Q.SQL_MATRIX_EVENT_BY_ID, [eventId], toMatrixEvent);
  }

  async markMatrixEventDone(eventId: string): Promise<void> {
    await this.db.execute(Q.SQL_MATRIX_EVENT_DONE, [eventId, ms(this.#now())]);
  }

  async markMatrixEventRetry(eventId: string, error: string, nextAttemptAt: number): Promise<void> {
    await this.db.execute(Q.SQL_MATRIX_EVENT_RETRY, [eventId, error, ms(nextAttemptAt)]);
  }

  async markMatrixEventFailed(eventId: string, error: string): Promise<void> {
    await this.db.execute(Q.SQL_MATRIX_EVENT_FAILED, [eventId, error, ms(this.#now())]);
  }

  /** Delete finished events and transaction IDs older than `before` (epoch ms), in one transaction. */
  async pruneMatrixJournal(before: number): Promise<{ events: number; txns: number }> {
    const cutoff = ms(before);
    return this.db.transaction(async (tx) => {
      const events = (await tx.execute(Q.SQL_PRUNE_MATRIX_EVENTS, [cutoff])).changes;
      const txns = (await tx.execute(Q.SQL_PRUNE_APPSERVICE_TXNS, [cutoff])).changes;
      return { events, txns };
    });
  }

  // Stored mail retention

  /**
   * Empty the raw bytes of resolved mail that arrived before `before` (epoch ms), at most
   * `limit` rows per table, in one transaction (see {@link BridgeStore.purgeRawMail}).
   * @throws RangeError when `before` is not finite or `limit` is not a non-negative integer
   */
  async purgeRawMail(before: number, limit: number): Promise<RawPurgeResult> {
    const cutoff = ms(before);
    const n = limitOf(limit);
    const now = ms(this.#now());
    const empty = Buffer.alloc(0);
    return this.db.transaction(async (tx) => {
      const inbound = (await tx.execute(Q.SQL_PURGE_INBOUND_RAW, [empty, now, cutoff, n])).changes;
      if (inbound > 0) await tx.execute(Q.SQL_PURGE_INBOUND_CHUNKS, [now]);
      const outbound = (await tx.execute(Q.SQL_PURGE_OUTBOUND_RAW, [empty, now, cutoff, n])).changes;
      return { inbound, outbound };
    });
  }
}
