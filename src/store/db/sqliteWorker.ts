/**
 * The SQLite engine's worker thread: owns the one `node:sqlite` connection and runs the
 * statements the main thread sends, one at a time, so that SQLite's synchronous work (above
 * all the fsync of a `COMMIT` under `synchronous=FULL`) never blocks the bridge's event loop.
 *
 * Protocol (see `sqlite.ts`, the only sender): each request `{ id, op, ... }` gets exactly one
 * reply `{ id, ok: true, rows?, changes? }` or `{ id, ok: false, error }`, in order. SQL arrives
 * already in SQLite's dialect and parameters already converted (`sqliteDialect`).
 *
 * A statement may carry `before`, a script run first (the group commit's `BEGIN IMMEDIATE`,
 * `RELEASE`/`SAVEPOINT`): one round trip instead of two. If `before` fails the statement does
 * not run, and the error reply says so (`before: true`).
 *
 * A `batch` carries several single-statement transactions of one group (sqlite.ts `write`,
 * `execute`) and, when they end the group, its `COMMIT`: the whole group in one round trip.
 * Each statement gets its own result; a failed one leaves the others as they are, since SQLite
 * backs out a failed statement's own changes and keeps the transaction (conflict resolution
 * ABORT, https://sqlite.org/lang_conflict.html). An error that ends the transaction itself (SQLite
 * rolls back on some I/O and out-of-memory errors, https://sqlite.org/lang_transaction.html,
 * "Response To Errors Within A Transaction"), a failed `before` or a failed `COMMIT` fails the
 * whole batch.
 */
import { parentPort } from "node:worker_threads";
import { DatabaseSync } from "node:sqlite";
import type { SQLInputValue, StatementSync } from "node:sqlite";

/** One statement: `all` returns its rows, `run` the number of rows it changed. */
export interface SqliteStatement {
  op: "all" | "run";
  sql: string;
  params: SQLInputValue[];
}

/** The outcome of one statement of a `batch`. */
export type BatchResult = { ok: true; rows?: Record<string, unknown>[]; changes?: number } | { ok: false; error: SerializedError };

/** A request from the main thread. */
export type SqliteRequest =
  | { id: number; op: "open"; file: string; busyTimeoutMs: number }
  | ({ id: number; before?: string } & SqliteStatement)
  /** Statements of an open transaction, each answered on its own; then `COMMIT` if `commit`. */
  | { id: number; op: "batch"; before?: string; statements: SqliteStatement[]; commit: boolean }
  | { id: number; op: "exec"; sql: string; before?: string }
  /** `ROLLBACK` if a transaction is open (after a failed statement or `COMMIT`), else nothing. */
  | { id: number; op: "rollbackIfOpen" }
  | { id: number; op: "close" };

/** A reply to one {@link SqliteRequest}. */
export type SqliteReply =
  | { id: number; ok: true; rows?: Record<string, unknown>[]; changes?: number; journalMode?: unknown; results?: BatchResult[] }
  /** `before`: the request's `before` script failed, so its statement did not run. */
  | { id: number; ok: false; error: SerializedError; before?: true };

/** The fields of a `node:sqlite` error that callers look at (`isUniqueViolation`). */
export interface SerializedError {
  name: string;
  message: string;
  code?: unknown;
  errcode?: unknown;
  errstr?: unknown;
}

/** Prepared statements kept per connection (the same SQL text is prepared once). */
const MAX_CACHED_STATEMENTS = 500;

let db: DatabaseSync | null = null;
const statements = new Map<string, StatementSync>();

function prepare(sql: string): StatementSync {
  let stmt = statements.get(sql);
  if (stmt === undefined) {
    stmt = db!.prepare(sql);
    if (statements.size < MAX_CACHED_STATEMENTS) statements.set(sql, stmt);
  }
  return stmt;
}

function serialize(err: unknown): SerializedError {
  const e = err as { name?: unknown; message?: unknown; code?: unknown; errcode?: unknown; errstr?: unknown };
  return {
    name: typeof e?.name === "string" ? e.name : "Error",
    message: typeof e?.message === "string" ? e.message : String(err),
    ...(e?.code !== undefined ? { code: e.code } : {}),
    ...(e?.errcode !== undefined ? { errcode: e.errcode } : {}),
    ...(e?.errstr !== undefined ? { errstr: e.errstr } : {}),
  };
}

function runStatement(statement: SqliteStatement): { rows: Record<string, unknown>[] } | { changes: number } {
  const stmt = prepare(statement.sql);
  return statement.op === "all" ? { rows: stmt.all(...statement.params) as Record<string, unknown>[] } : { changes: Number(stmt.run(...statement.params).changes) };
}

function handle(req: SqliteRequest): SqliteReply {
  if (req.op === "open") {
    const conn = new DatabaseSync(req.file);
    try {
      conn.exec(`PRAGMA busy_timeout = ${req.busyTimeoutMs}`);
      const mode = (conn.prepare("PRAGMA journal_mode = WAL").get() as { journal_mode?: unknown } | undefined)?.journal_mode;
      conn.exec("PRAGMA synchronous = FULL");
      conn.exec("PRAGMA foreign_keys = ON");
      db = conn;
      return { id: req.id, ok: true, journalMode: mode };
    } catch (err) {
      conn.close();
      throw err;
    }
  }
  if (db === null) throw new Error("sqlite database is not open");
  if ((req.op === "all" || req.op === "run" || req.op === "exec" || req.op === "batch") && req.before) {
    try {
      db.exec(req.before);
    } catch (err) {
      return { id: req.id, ok: false, error: serialize(err), before: true };
    }
  }
  switch (req.op) {
    case "all":
    case "run":
      return { id: req.id, ok: true, ...runStatement(req) };
    case "batch": {
      const results: BatchResult[] = [];
      for (const statement of req.statements) {
        try {
          results.push({ ok: true, ...runStatement(statement) });
        } catch (err) {
          // Only this statement's changes are backed out, unless SQLite ended the transaction.
          if (!db.isTransaction) throw err;
          results.push({ ok: false, error: serialize(err) });
        }
      }
      if (req.commit) db.exec("COMMIT");
      return { id: req.id, ok: true, results };
    }
    case "exec":
      db.exec(req.sql);
      return { id: req.id, ok: true };
    case "rollbackIfOpen":
      if (db.isTransaction) db.exec("ROLLBACK");
      return { id: req.id, ok: true };
    case "close":
      statements.clear();
      db.close();
      db = null;
      return { id: req.id, ok: true };
  }
}

/** Blobs at least this large (bytes) are moved to the main thread rather than copied. */
const TRANSFER_MIN_BYTES = 64 * 1024;

/**
 * The memory of the large blobs in `rows`, to be moved with the reply rather than copied: a
 * stored message read back (up to `smtp.max_message_bytes`) would otherwise exist three times
 * at once (SQLite's, the clone being sent, the main thread's copy). Each blob `node:sqlite`
 * returns owns its memory, and nothing here uses it after the reply.
 */
function transferable(reply: Extract<SqliteReply, { ok: true }>): ArrayBuffer[] {
  const out: ArrayBuffer[] = [];
  const rows = [...(reply.rows ?? []), ...(reply.results ?? []).flatMap((r) => (r.ok ? (r.rows ?? []) : []))];
  for (const row of rows) {
    for (const v of Object.values(row)) {
      if (v instanceof Uint8Array && v.byteLength >= TRANSFER_MIN_BYTES && v.byteOffset === 0 && v.byteLength === v.buffer.byteLength && v.buffer instanceof ArrayBuffer) out.push(v.buffer);
    }
  }
  return out;
}

/**
 * Free the memory of the blob parameters of a statement that has run. Binding copied them into
 * SQLite (`node:sqlite` binds with SQLITE_TRANSIENT), and this thread seldom collects garbage (its
 * own allocations are small), so the 1 MiB chunks of a large mail, moved here one statement at a
 * time (sqlite.ts `movedParams`), stayed resident until it did: 36 MiB for a 36 MB mail.
 * Detaching a buffer (`ArrayBuffer.prototype.transfer(0)`, ECMA-262 §25.1.6.7) frees its memory
 * at once. Each parameter arrived with the request, moved or cloned: nothing else holds it.
 */
function release(req: SqliteRequest): void {
  const statements = req.op === "all" || req.op === "run" ? [req] : req.op === "batch" ? req.statements : [];
  for (const { params } of statements) {
    for (const p of params) {
      if (p instanceof Uint8Array && p.byteLength >= TRANSFER_MIN_BYTES && p.buffer instanceof ArrayBuffer && !p.buffer.detached) p.buffer.transfer(0);
    }
  }
}

parentPort!.on("message", (req: SqliteRequest) => {
  let reply: SqliteReply;
  try {
    reply = handle(req);
  } catch (err) {
    reply = { id: req.id, ok: false, error: serialize(err) };
  }
  release(req);
  parentPort!.postMessage(reply, reply.ok ? transferable(reply) : []);
});
