/**
 * A tiny engine-neutral SQL interface shared by the PostgreSQL and SQLite engines.
 *
 * SQL is written once in the shared dialect (see `dialect.ts`): `$1, $2` placeholders,
 * `{{AUTOID}}`/`{{BLOB}}`/`{{BOOL}}` markers in DDL. Each engine translates it.
 */

/** Engine name. */
export type Engine = "postgres" | "sqlite";

/**
 * A bound parameter. Buffers bind as BYTEA/BLOB; booleans as BOOLEAN (postgres) or 0/1 (sqlite).
 * `undefined` is not allowed: pass null.
 */
export type SqlValue = string | number | boolean | null | Buffer;

/** A result row as returned by the engine, keyed by column name. */
export type Row = Record<string, unknown>;

/**
 * Something statements can run on: the database itself or an open transaction.
 *
 * Result values are normalised by the engine: BIGINT/INTEGER columns come back as JS numbers
 * (epoch ms fit in 2^53), BYTEA/BLOB as `Buffer`, TEXT as string, NULL as null.
 * Booleans come back engine-specific: read them with `dbBool` from `dialect.ts`.
 */
export interface Queryable {
  /** Which engine this is. */
  readonly engine: Engine;
  /**
   * Run one statement and return its rows (SELECT, or anything with RETURNING).
   * @param sql one statement in the shared dialect, with `$n` placeholders
   * @param params values for `$1..$n`
   * @throws the driver's error (check unique violations with `isUniqueViolation`)
   */
  query<T extends object = Row>(sql: string, params?: readonly SqlValue[]): Promise<T[]>;
  /**
   * Run one statement and return the number of rows it changed.
   * @throws the driver's error
   */
  execute(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }>;
  /**
   * Run a script of several `;`-separated statements without parameters (migrations).
   * @throws the driver's error
   */
  exec(script: string): Promise<void>;
}

/** A database connection (pool for postgres, one connection for sqlite). */
export interface Database extends Queryable {
  /**
   * Run `fn` in one transaction: committed when the returned promise resolves, rolled back
   * (and the error rethrown) when it rejects. Use only `tx` inside `fn`; calling `transaction`
   * again from inside `fn` is not supported (it would wait forever on sqlite).
   * On sqlite, transactions and single statements are serialized on the one connection.
   */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /**
   * Run one write statement as a transaction of its own and return its rows (`RETURNING`):
   * committed when the promise resolves. On sqlite it joins the next group commit, and single
   * statements waiting side by side there share one round trip to the worker; on postgres it is
   * one statement, committed by itself.
   * @throws the driver's error; on sqlite also the error of the group's `BEGIN` or `COMMIT`
   */
  write<T extends object = Row>(sql: string, params?: readonly SqlValue[]): Promise<T[]>;
  /** Close the pool/connection. Further calls fail. */
  close(): Promise<void>;
}
