/**
 * PostgreSQL engine of {@link Database}, over a `pg.Pool`.
 */
import pg from "pg";
import type { CustomTypesConfig, Pool as PgPool, PoolClient } from "pg";
import type { Database, Queryable, Row, SqlValue } from "./Database.ts";
import { postgresDialect } from "./dialect.ts";
import { errorFields, getLogger } from "../../util/logger.ts";

const { Pool, types } = pg;
const log = getLogger("store");

const INT8_OID = 20;

/** Type parsers for this pool only: BIGINT as number (epoch ms, ids); everything else as pg's default. */
const poolTypes: CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: "text" | "binary") => {
    if (oid === INT8_OID && format !== "binary") return (value: string) => Number(value);
    return types.getTypeParser(oid, format ?? "text");
  }) as CustomTypesConfig["getTypeParser"],
};

function toParams(params: readonly SqlValue[] | undefined): unknown[] {
  return params ? params.map(postgresDialect.param) : [];
}

/** Statements on one pg client or on the pool. */
class PgQueryable implements Queryable {
  readonly engine = "postgres" as const;
  readonly #target: PgPool | PoolClient;

  constructor(target: PgPool | PoolClient) {
    this.#target = target;
  }

  async query<T extends object = Row>(sql: string, params?: readonly SqlValue[]): Promise<T[]> {
    const res = await this.#target.query(postgresDialect.sql(sql), toParams(params));
    return res.rows as T[];
  }

  async execute(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }> {
    const res = await this.#target.query(postgresDialect.sql(sql), toParams(params));
    return { changes: res.rowCount ?? 0 };
  }

  async exec(script: string): Promise<void> {
    // No parameters: the simple query protocol runs several statements.
    await this.#target.query(postgresDialect.sql(script));
  }
}

/** {@link Database} on a PostgreSQL pool. */
class PgDatabase extends PgQueryable implements Database {
  readonly #pool: PgPool;

  constructor(pool: PgPool) {
    super(pool);
    this.#pool = pool;
  }

  async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    const client = await this.#pool.connect();
    let broken: Error | undefined;
    // pg-pool listens for errors of idle clients only: a checked-out client that loses its
    // connection between two statements (the server restarting, `pg_terminate_backend`) emits
    // `error` with no listener, which would end the process. Its next statement fails instead,
    // and the client is destroyed on release.
    const onError = (err: Error): void => {
      broken = err;
      log.warn("postgres connection lost during a transaction", errorFields(err));
    };
    client.on("error", onError);
    try {
      await client.query("BEGIN");
      try {
        const result = await fn(new PgQueryable(client));
        await client.query("COMMIT");
        return result;
      } catch (err) {
        try {
          await client.query("ROLLBACK");
        } catch (rollbackErr) {
          // The connection is in an unknown state: destroy it instead of returning it to the pool.
          broken = rollbackErr instanceof Error ? rollbackErr : new Error(String(rollbackErr));
        }
        throw err;
      }
    } finally {
      client.removeListener("error", onError);
      client.release(broken);
    }
  }

  /** One statement outside a transaction block commits by itself (PostgreSQL's autocommit). */
  write<T extends object = Row>(sql: string, params?: readonly SqlValue[]): Promise<T[]> {
    return this.query<T>(sql, params);
  }

  async close(): Promise<void> {
    await this.#pool.end();
  }
}

/**
 * Open a PostgreSQL {@link Database}.
 * @param url `postgres://user:pass@host:port/db` connection URL
 * @param opts.max pool size (default 10)
 * @param opts.connectTimeoutMs longest wait for a connection (a new one, or a free one from the
 *   pool), in ms (default 5000): a database that does not answer fails fast, so the SMTP side
 *   answers 451 instead of holding DATA open
 * @param opts.queryTimeoutMs longest statement, in ms (default 10 000), enforced by the client
 *   (`query_timeout`) and by the server (`statement_timeout`)
 * @returns the database; the first connection is made (and checked) before it resolves
 * @throws the pg connection error if the server cannot be reached or refuses the login
 */
export async function openPostgres(url: string, opts: { max?: number; connectTimeoutMs?: number; queryTimeoutMs?: number } = {}): Promise<Database> {
  const queryTimeout = opts.queryTimeoutMs ?? 10_000;
  const pool = new Pool({
    connectionString: url,
    max: opts.max ?? 10,
    connectionTimeoutMillis: opts.connectTimeoutMs ?? 5_000,
    query_timeout: queryTimeout,
    statement_timeout: queryTimeout,
    idle_in_transaction_session_timeout: queryTimeout * 3,
    types: poolTypes,
    application_name: "matrix-email-bridge",
  });
  // An idle client losing its connection must not crash the process; the pool replaces it.
  pool.on("error", (err) => log.warn("postgres idle client error", errorFields(err)));
  try {
    const client = await pool.connect();
    client.release();
  } catch (err) {
    await pool.end().catch(() => undefined);
    throw err;
  }
  return new PgDatabase(pool);
}
