/**
 * SQLite engine of {@link Database}, over one synchronous `node:sqlite` connection.
 *
 * Every statement and transaction goes through one promise-chain mutex, so an async
 * transaction never interleaves with other work on the shared connection.
 */
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { DatabaseSync } from "node:sqlite";
import type { SQLInputValue, StatementSync } from "node:sqlite";
import type { Database, Queryable, Row, SqlValue } from "./Database.ts";
import { sqliteDialect } from "./dialect.ts";
import { getLogger } from "../../util/logger.ts";

const log = getLogger("store");

/** How long a statement waits for another process's write lock, in ms. */
const BUSY_TIMEOUT_MS = 10_000;

function toParams(params: readonly SqlValue[] | undefined): SQLInputValue[] {
  return params ? params.map((p) => sqliteDialect.param(p) as SQLInputValue) : [];
}

/** Blobs come back as Uint8Array: hand out Buffers, like pg does. */
function normaliseRow(row: Record<string, unknown>): Row {
  const out: Row = {};
  for (const [k, v] of Object.entries(row)) {
    out[k] = v instanceof Uint8Array && !Buffer.isBuffer(v) ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : v;
  }
  return out;
}

/** The synchronous statement runner shared by the database and its transactions. */
class Runner {
  readonly #db: DatabaseSync;
  readonly #statements = new Map<string, StatementSync>();

  constructor(db: DatabaseSync) {
    this.#db = db;
  }

  #prepare(sql: string): StatementSync {
    const text = sqliteDialect.sql(sql);
    let stmt = this.#statements.get(text);
    if (stmt === undefined) {
      stmt = this.#db.prepare(text);
      if (this.#statements.size < 500) this.#statements.set(text, stmt);
    }
    return stmt;
  }

  query(sql: string, params: readonly SqlValue[] | undefined): Row[] {
    return this.#prepare(sql).all(...toParams(params)).map(normaliseRow);
  }

  execute(sql: string, params: readonly SqlValue[] | undefined): { changes: number } {
    const res = this.#prepare(sql).run(...toParams(params));
    return { changes: Number(res.changes) };
  }

  exec(script: string): void {
    this.#db.exec(sqliteDialect.sql(script));
  }
}

/** A transaction handle: runs directly on the connection (the mutex is held), only while open. */
class SqliteTx implements Queryable {
  readonly engine = "sqlite" as const;
  readonly #runner: Runner;
  open = true;

  constructor(runner: Runner) {
    this.#runner = runner;
  }

  #check(): void {
    if (!this.open) throw new Error("sqlite transaction already finished");
  }

  async query<T extends object = Row>(sql: string, params?: readonly SqlValue[]): Promise<T[]> {
    this.#check();
    return this.#runner.query(sql, params) as T[];
  }

  async execute(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }> {
    this.#check();
    return this.#runner.execute(sql, params);
  }

  async exec(script: string): Promise<void> {
    this.#check();
    this.#runner.exec(script);
  }
}

/** {@link Database} on one node:sqlite connection. */
class SqliteDatabase implements Database {
  readonly engine = "sqlite" as const;
  readonly #db: DatabaseSync;
  readonly #runner: Runner;
  #tail: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(db: DatabaseSync) {
    this.#db = db;
    this.#runner = new Runner(db);
  }

  /** Run `fn` once everything queued before it has finished. */
  #locked<T>(fn: () => T | Promise<T>): Promise<T> {
    const run = this.#tail.then(() => {
      if (this.#closed) throw new Error("sqlite database is closed");
      return fn();
    });
    this.#tail = run.catch(() => undefined);
    return run;
  }

  query<T extends object = Row>(sql: string, params?: readonly SqlValue[]): Promise<T[]> {
    return this.#locked(() => this.#runner.query(sql, params) as T[]);
  }

  execute(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }> {
    return this.#locked(() => this.#runner.execute(sql, params));
  }

  exec(script: string): Promise<void> {
    return this.#locked(() => this.#runner.exec(script));
  }

  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    return this.#locked(async () => {
      this.#db.exec("BEGIN IMMEDIATE");
      const tx = new SqliteTx(this.#runner);
      try {
        const result = await fn(tx);
        this.#db.exec("COMMIT");
        return result;
      } catch (err) {
        if (this.#db.isTransaction) this.#db.exec("ROLLBACK");
        throw err;
      } finally {
        tx.open = false;
      }
    });
  }

  async close(): Promise<void> {
    await this.#locked(() => {
      this.#closed = true;
      this.#db.close();
    });
  }
}

/**
 * Open (creating if needed) a SQLite {@link Database} file.
 *
 * Sets `journal_mode=WAL`, `synchronous=FULL` (a resolved commit is on disk),
 * `foreign_keys=ON` and a busy timeout. Creates the file's parent directory.
 * @param file path of the database file, or `:memory:`
 * @throws the node:sqlite error if the file cannot be opened or is not a database
 */
export async function openSqlite(file: string): Promise<Database> {
  if (file !== ":memory:") mkdirSync(dirname(file), { recursive: true });
  const db = new DatabaseSync(file);
  try {
    db.exec(`PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}`);
    const mode = db.prepare("PRAGMA journal_mode = WAL").get() as { journal_mode?: unknown } | undefined;
    if (mode?.journal_mode !== "wal" && file !== ":memory:") {
      log.warn("sqlite journal mode is not WAL", { journalMode: mode?.journal_mode });
    }
    db.exec("PRAGMA synchronous = FULL");
    db.exec("PRAGMA foreign_keys = ON");
  } catch (err) {
    db.close();
    throw err;
  }
  return new SqliteDatabase(db);
}
