/**
 * SQLite engine of {@link Database}: one `node:sqlite` connection, owned by a worker thread
 * (`sqliteWorker.ts`), with group commit.
 *
 * - **Off the event loop.** Every statement runs in the worker; the main thread only waits for
 *   the reply. SQLite's synchronous work, above all the fsync of each `COMMIT` under
 *   `synchronous=FULL`, no longer stalls SMTP sessions and queue workers.
 * - **Group commit.** Transactions that are waiting when one group begins, or that arrive
 *   while it runs, share one `BEGIN IMMEDIATE … COMMIT`, each inside its own `SAVEPOINT`: a
 *   member that fails is rolled back to its savepoint (and its promise rejects) without
 *   touching the others. Every member's promise settles only after the group's `COMMIT`
 *   returned, so "resolved" still means "on disk" (the durable 250 is unchanged), but one
 *   fsync covers all the SMTP sessions that committed together. While a group's `COMMIT` is
 *   being written, the next group gathers.
 * - **Order.** Members run one after another in arrival order. A write outside a transaction
 *   (`execute`) is a member of its own; reads (`query`) and scripts (`exec`) outside a
 *   transaction run between groups, never inside one (they never see uncommitted rows).
 * - **Round trips.** Each statement is one message to the worker and back, so the group's
 *   own statements ride with the members' (`before`, see `sqliteWorker.ts`): a member's first
 *   statement carries `BEGIN IMMEDIATE; SAVEPOINT 1` or `RELEASE n; SAVEPOINT n+1` (or
 *   `ROLLBACK TO n; RELEASE n; …` after a member that failed), and the group's `COMMIT` carries
 *   the last `RELEASE n`. A member that sends no statement gets no savepoint. If such a script
 *   fails, the whole group fails, as a failed `BEGIN` or `COMMIT` does.
 * - **Single statements** (`write`, `execute` outside a transaction) need no savepoint: SQLite
 *   backs out a failed statement's own changes. Those waiting next to each other in a group go
 *   to the worker in one `batch`, with the group's pending script and, when they end the group,
 *   its `COMMIT`: a group of stored mails is one round trip.
 */
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import type { SQLInputValue } from "node:sqlite";
import type { Database, Queryable, Row, SqlValue } from "./Database.ts";
import { sqliteDialect } from "./dialect.ts";
import type { BatchResult, SerializedError, SqliteReply, SqliteRequest, SqliteStatement } from "./sqliteWorker.ts";
import { getLogger } from "../../util/logger.ts";
import { WorkerRpc } from "../../util/workerRpc.ts";

const log = getLogger("store");

/** How long a statement waits for another process's write lock, in ms. */
const BUSY_TIMEOUT_MS = 10_000;

/**
 * Most transactions in one group. Bounds how long the first member's caller waits for the
 * shared COMMIT (each member is a few statements, well under a millisecond in the worker).
 */
const MAX_GROUP = 64;

/** The worker's module: `.ts` when running from source, `.js` when built. */
const WORKER_URL = new URL(import.meta.url.endsWith(".ts") ? "./sqliteWorker.ts" : "./sqliteWorker.js", import.meta.url);

/** Distributive Omit, so each request variant keeps its own fields. */
type RequestBody = SqliteRequest extends infer R ? (R extends { id: number } ? Omit<R, "id"> : never) : never;
type OkReply = Extract<SqliteReply, { ok: true }>;

function toParams(params: readonly SqlValue[] | undefined): SQLInputValue[] {
  return params ? params.map((p) => sqliteDialect.param(p) as SQLInputValue) : [];
}

/** Blob parameters at least this large (bytes) are handed to the worker by {@link movedParams}. */
const MOVE_MIN_BYTES = 64 * 1024;

/**
 * `params` with each large blob replaced by a copy whose memory is moved to the worker (one
 * copy) instead of cloned (a serialized copy plus the worker's: two). The caller's buffers stay
 * as they are. A stored message is the only such parameter.
 * @returns the parameters to send and the memory to move with them
 */
function movedParams(params: SQLInputValue[]): { params: SQLInputValue[]; transfer: ArrayBuffer[] } {
  const transfer: ArrayBuffer[] = [];
  const out = params.map((p) => {
    if (!(p instanceof Uint8Array) || p.byteLength < MOVE_MIN_BYTES) return p;
    const copy = new Uint8Array(p);
    transfer.push(copy.buffer);
    return copy;
  });
  return { params: out, transfer };
}

/** Blobs come back as Uint8Array: hand out Buffers, like pg does. */
function normaliseRow(row: Record<string, unknown>): Row {
  for (const [k, v] of Object.entries(row)) {
    if (v instanceof Uint8Array && !Buffer.isBuffer(v)) row[k] = Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  }
  return row;
}

/** The worker's error, rebuilt with the fields callers test (`code`, `errcode`: `isUniqueViolation`). */
function rebuild(e: SerializedError): Error {
  const err = new Error(e.message);
  err.name = e.name;
  return Object.assign(err, e.code !== undefined ? { code: e.code } : {}, e.errcode !== undefined ? { errcode: e.errcode } : {}, e.errstr !== undefined ? { errstr: e.errstr } : {});
}

/** Errors of a request whose `before` script failed (its statement did not run). */
const beforeFailures = new WeakSet<Error>();

/** Request/reply over the worker thread (util/workerRpc.ts), with the statement helpers. */
class WorkerConnection {
  readonly #rpc = new WorkerRpc<RequestBody, OkReply>({
    name: "sqlite",
    url: WORKER_URL,
    decode: (reply) => {
      const r = reply as unknown as SqliteReply;
      if (r.ok) return { ok: true, value: r };
      const error = rebuild(r.error);
      if (r.before) beforeFailures.add(error);
      return { ok: false, error };
    },
  });

  /**
   * Send one request and wait for its reply.
   * @throws the statement's error, or Error when the worker is gone
   */
  request(body: RequestBody, transfer: ArrayBuffer[] = []): Promise<OkReply> {
    return this.#rpc.request(body, undefined, transfer);
  }

  /** `before`: a script (SQLite's dialect) the worker runs first, in the same round trip. */
  async query(sql: string, params: readonly SqlValue[] | undefined, before?: string): Promise<Row[]> {
    const moved = movedParams(toParams(params));
    const reply = await this.request({ op: "all", sql: sqliteDialect.sql(sql), params: moved.params, ...(before ? { before } : {}) }, moved.transfer);
    return (reply.rows ?? []).map(normaliseRow);
  }

  async execute(sql: string, params: readonly SqlValue[] | undefined, before?: string): Promise<{ changes: number }> {
    const moved = movedParams(toParams(params));
    const reply = await this.request({ op: "run", sql: sqliteDialect.sql(sql), params: moved.params, ...(before ? { before } : {}) }, moved.transfer);
    return { changes: reply.changes ?? 0 };
  }

  async exec(script: string, before?: string): Promise<void> {
    await this.request({ op: "exec", sql: sqliteDialect.sql(script), ...(before ? { before } : {}) });
  }

  /**
   * Run statements in the open transaction (after `before`), each with its own outcome, then
   * `COMMIT` if `commit`.
   * @returns one outcome per statement, in order: rows (`all`) or changes (`run`), or its error
   * @throws the error of `before`, of `COMMIT`, or of a statement after which SQLite ended the
   *   transaction: the batch as a whole failed
   */
  async batch(statements: readonly StatementMember[], before: string, commit: boolean): Promise<({ ok: true; value: Row[] | { changes: number } } | { ok: false; error: Error })[]> {
    const transfer: ArrayBuffer[] = [];
    const sent: SqliteStatement[] = statements.map((m) => {
      const moved = movedParams(toParams(m.params));
      transfer.push(...moved.transfer);
      return { op: m.op, sql: sqliteDialect.sql(m.sql), params: moved.params };
    });
    const reply = await this.request({ op: "batch", statements: sent, commit, ...(before ? { before } : {}) }, transfer);
    return (reply.results ?? []).map((r: BatchResult, i) =>
      r.ok ? { ok: true, value: statements[i]!.op === "all" ? (r.rows ?? []).map(normaliseRow) : { changes: r.changes ?? 0 } } : { ok: false, error: rebuild(r.error) },
    );
  }

  async terminate(): Promise<void> {
    await this.#rpc.terminate("sqlite database is closed");
  }
}

/**
 * A transaction handle: valid only while its member of the group runs. The member's first
 * statement carries the group's pending script (its savepoint); statements sent while that
 * first one is on its way wait for it, so none runs if the script failed.
 */
class SqliteTx implements Queryable {
  readonly engine = "sqlite" as const;
  readonly #conn: WorkerConnection;
  /** The script for the first statement; null once sent. */
  #before: string | null;
  /** Settles (never rejects) once the first statement's reply came; null before it is sent. */
  #first: Promise<void> | null = null;
  open = true;
  /** The error of a failed `before` script: the group's transaction is not as its members expect. */
  broken: Error | null = null;

  /** @param before the group's pending script, ending with this member's `SAVEPOINT` */
  constructor(conn: WorkerConnection, before: string) {
    this.#conn = conn;
    this.#before = before;
  }

  /** Whether a statement was sent (so the member's savepoint was asked for). */
  get started(): boolean {
    return this.#before === null;
  }

  /** Resolves once the first statement (if any) has its reply, so that {@link broken} is known. */
  async settled(): Promise<void> {
    await this.#first;
  }

  async #send<R>(send: (before: string | undefined) => Promise<R>): Promise<R> {
    if (!this.open) throw new Error("sqlite transaction already finished");
    if (this.#before !== null) {
      const before = this.#before;
      this.#before = null;
      const first = send(before);
      this.#first = first.then(
        () => undefined,
        (err: unknown) => {
          if (err instanceof Error && beforeFailures.has(err)) this.broken = err;
        },
      );
      return first;
    }
    await this.#first;
    if (this.broken) throw this.broken;
    return send(undefined);
  }

  async query<T extends object = Row>(sql: string, params?: readonly SqlValue[]): Promise<T[]> {
    return (await this.#send((before) => this.#conn.query(sql, params, before))) as T[];
  }

  execute(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }> {
    return this.#send((before) => this.#conn.execute(sql, params, before));
  }

  exec(script: string): Promise<void> {
    return this.#send((before) => this.#conn.exec(script, before));
  }
}

/** How a member of a group settles. */
interface Settle {
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
}

/** A transaction of several statements, with the caller's code between them. */
interface FnMember extends Settle {
  kind: "fn";
  fn: (tx: Queryable) => Promise<unknown>;
}

/** One statement that is a transaction of its own (`write`, `execute`): it needs no savepoint. */
interface StatementMember extends Settle {
  kind: "statement";
  op: "all" | "run";
  sql: string;
  params: readonly SqlValue[] | undefined;
}

/** A transaction waiting for, or running in, a group. */
type Member = FnMember | StatementMember;

/** Counters of {@link SqliteDatabase}'s group commit (tests, the benchmark). */
export interface GroupCommitStats {
  /** Groups committed (each one `COMMIT`, one fsync of the WAL). */
  groups: number;
  /** Transactions committed in them. */
  transactions: number;
}

/** {@link Database} on one node:sqlite connection in a worker thread, with group commit. */
export class SqliteDatabase implements Database {
  readonly engine = "sqlite" as const;
  /** Committed groups and transactions since open. */
  readonly stats: GroupCommitStats = { groups: 0, transactions: 0 };
  readonly #conn: WorkerConnection;
  #tail: Promise<unknown> = Promise.resolve();
  #closed = false;
  /** Transactions not yet taken by a group. */
  readonly #waiting: Member[] = [];
  /** A group is queued or running (it takes every member that arrives before its COMMIT). */
  #groupQueued = false;

  constructor(conn: WorkerConnection) {
    this.#conn = conn;
  }

  /** Run `fn` once everything queued before it has finished. */
  #locked<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(() => {
      if (this.#closed) throw new Error("sqlite database is closed");
      return fn();
    });
    this.#tail = run.catch(() => undefined);
    return run;
  }

  query<T extends object = Row>(sql: string, params?: readonly SqlValue[]): Promise<T[]> {
    return this.#locked(async () => (await this.#conn.query(sql, params)) as T[]);
  }

  /** A write outside a transaction joins the next group: it shares that group's one COMMIT (fsync). */
  execute(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }> {
    return this.#statement("run", sql, params) as Promise<{ changes: number }>;
  }

  /** Joins the next group, as {@link execute}; statements side by side in a group share one round trip. */
  write<T extends object = Row>(sql: string, params?: readonly SqlValue[]): Promise<T[]> {
    return this.#statement("all", sql, params) as Promise<T[]>;
  }

  #statement(op: "all" | "run", sql: string, params: readonly SqlValue[] | undefined): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.#waiting.push({ kind: "statement", op, sql, params, resolve, reject });
      this.#queueGroup();
    });
  }

  exec(script: string): Promise<void> {
    return this.#locked(() => this.#conn.exec(script));
  }

  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#waiting.push({ kind: "fn", fn, resolve: resolve as (value: unknown) => void, reject });
      this.#queueGroup();
    });
  }

  #queueGroup(): void {
    if (this.#groupQueued || this.#waiting.length === 0) return;
    this.#groupQueued = true;
    this.#locked(() => this.#runGroup())
      .catch((err: unknown) => {
        // #runGroup settles its members itself; only a closed database gets here.
        for (const m of this.#waiting.splice(0)) m.reject(err);
      })
      .finally(() => {
        this.#groupQueued = false;
        this.#queueGroup();
      });
  }

  /**
   * One group: `BEGIN IMMEDIATE`, each waiting member in turn (taking members that arrive
   * meanwhile, up to {@link MAX_GROUP}), one `COMMIT`, then every member settles. A transaction
   * of several statements runs in its own savepoint; single statements next to each other go in
   * one batch, which carries the `COMMIT` when nothing else waits.
   */
  async #runGroup(): Promise<void> {
    const conn = this.#conn;
    const committed: { member: Member; value: unknown }[] = [];
    const failed: { member: Member; err: unknown }[] = [];
    /** Members whose outcome is open while their statements run. */
    let current: Member[] = [];
    /** The group's script not yet sent: it rides with the next member's first statement, or the COMMIT. */
    let before = "BEGIN IMMEDIATE";
    let done = false;
    try {
      for (let n = 1; n <= MAX_GROUP && this.#waiting.length > 0; ) {
        if (this.#waiting[0]!.kind === "statement") {
          const batch: StatementMember[] = [];
          while (n <= MAX_GROUP && this.#waiting[0]?.kind === "statement") {
            batch.push(this.#waiting.shift() as StatementMember);
            n++;
          }
          current = batch;
          const commit = n > MAX_GROUP || this.#waiting.length === 0;
          const outcomes = await conn.batch(batch, before, commit);
          before = "";
          batch.forEach((member, i) => {
            const outcome = outcomes[i]!;
            if (outcome.ok) committed.push({ member, value: outcome.value });
            else failed.push({ member, err: outcome.error });
          });
          current = [];
          if (commit) {
            done = true;
            break;
          }
          continue;
        }
        const member = this.#waiting.shift() as FnMember;
        current = [member];
        const savepoint = `meb_member_${n++}`;
        const tx = new SqliteTx(conn, before ? `${before}; SAVEPOINT ${savepoint}` : `SAVEPOINT ${savepoint}`);
        let value: unknown;
        let error: { err: unknown } | null = null;
        try {
          value = await member.fn(tx);
        } catch (err) {
          error = { err };
        } finally {
          tx.open = false;
        }
        await tx.settled();
        if (tx.broken) throw tx.broken;
        if (tx.started) {
          before = error ? `ROLLBACK TO ${savepoint}; RELEASE ${savepoint}` : `RELEASE ${savepoint}`;
        }
        if (error) failed.push({ member, err: error.err });
        else committed.push({ member, value });
        current = [];
      }
      if (!done) await conn.exec(before ? `${before}; COMMIT` : "COMMIT");
    } catch (err) {
      // BEGIN, a savepoint or COMMIT failed: nothing of this group is on disk.
      await conn.request({ op: "rollbackIfOpen" }).catch((rollbackErr: unknown) => {
        log.error("sqlite rollback after a failed group commit failed", { error: rollbackErr instanceof Error ? rollbackErr.message : String(rollbackErr) });
      });
      for (const { member } of committed) member.reject(err);
      for (const member of current) member.reject(err);
      for (const { member, err: own } of failed) member.reject(own);
      return;
    }
    this.stats.groups++;
    this.stats.transactions += committed.length;
    for (const { member, value } of committed) member.resolve(value);
    for (const { member, err } of failed) member.reject(err);
  }

  async close(): Promise<void> {
    await this.#locked(async () => {
      this.#closed = true;
      await this.#conn.request({ op: "close" });
    });
    await this.#conn.terminate();
  }
}

/**
 * Open (creating if needed) a SQLite {@link Database} file, in a worker thread.
 *
 * Sets `journal_mode=WAL`, `synchronous=FULL` (a resolved commit is on disk),
 * `foreign_keys=ON` and a busy timeout of 10 s. Creates the file's parent directory.
 * @param file path of the database file, or `:memory:`
 * @throws the node:sqlite error if the file cannot be opened or is not a database
 */
export async function openSqlite(file: string): Promise<Database> {
  if (file !== ":memory:") mkdirSync(dirname(file), { recursive: true });
  const conn = new WorkerConnection();
  try {
    const { journalMode } = await conn.request({ op: "open", file, busyTimeoutMs: BUSY_TIMEOUT_MS });
    if (journalMode !== "wal" && file !== ":memory:") log.warn("sqlite journal mode is not WAL", { journalMode });
  } catch (err) {
    await conn.terminate();
    throw err;
  }
  return new SqliteDatabase(conn);
}
