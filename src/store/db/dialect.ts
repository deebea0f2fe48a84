/**
 * Every difference between the PostgreSQL and SQLite SQL dialects, in one place.
 *
 * Shared SQL is written PostgreSQL-style with `$1, $2` placeholders. DDL uses markers:
 * - `{{AUTOID}}`: auto-increment integer primary key column type;
 * - `{{BLOB}}`: binary column type;
 * - `{{BOOL}}`: boolean column type (sqlite stores 0/1).
 * BIGINT, TEXT, INTEGER, `ON CONFLICT ... DO NOTHING/UPDATE`, `RETURNING` and partial
 * indexes are spelled the same on both engines. JSON is stored as TEXT on both.
 */
import type { Engine, SqlValue } from "./Database.ts";

/** How one engine spells the shared dialect. */
export interface Dialect {
  readonly engine: Engine;
  /** Translate shared SQL (placeholders and markers) to this engine's SQL. Pure; cached. */
  sql(text: string): string;
  /** Convert a bound parameter to what the driver takes. */
  param(value: SqlValue): unknown;
  /** A query with `$1` = table name that returns one row if that table exists in the current schema. */
  readonly tableExistsSql: string;
  /** A statement run first in the migration transaction to serialize concurrent migrators, or null. */
  readonly migrationLockSql: string | null;
}

const MARKERS: Record<Engine, Record<string, string>> = {
  postgres: {
    AUTOID: "BIGSERIAL PRIMARY KEY",
    BLOB: "BYTEA",
    BOOL: "BOOLEAN",
  },
  sqlite: {
    AUTOID: "INTEGER PRIMARY KEY AUTOINCREMENT",
    BLOB: "BLOB",
    BOOL: "INTEGER",
  },
};

function replaceMarkers(engine: Engine, text: string): string {
  return text.replace(/\{\{([A-Z]+)\}\}/g, (_m, name: string) => {
    const out = MARKERS[engine][name];
    if (out === undefined) throw new Error(`unknown SQL marker {{${name}}}`);
    return out;
  });
}

/**
 * Rewrite `$n` placeholders to sqlite's numbered `?n`, leaving quoted strings,
 * quoted identifiers and `--` comments untouched.
 */
function numberedPlaceholders(text: string): string {
  let out = "";
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (c === "'" || c === '"') {
      const end = text.indexOf(c, i + 1);
      const stop = end === -1 ? text.length : end + 1;
      out += text.slice(i, stop);
      i = stop;
    } else if (c === "-" && text[i + 1] === "-") {
      const end = text.indexOf("\n", i);
      const stop = end === -1 ? text.length : end;
      out += text.slice(i, stop);
      i = stop;
    } else if (c === "$" && /[0-9]/.test(text[i + 1] ?? "")) {
      let j = i + 1;
      while (j < text.length && /[0-9]/.test(text[j]!)) j++;
      out += "?" + text.slice(i + 1, j);
      i = j;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

function cached(translate: (text: string) => string): (text: string) => string {
  const cache = new Map<string, string>();
  return (text) => {
    let out = cache.get(text);
    if (out === undefined) {
      out = translate(text);
      if (cache.size < 1000) cache.set(text, out);
    }
    return out;
  };
}

/** PostgreSQL: placeholders are native; markers become BIGSERIAL/BYTEA/BOOLEAN. */
export const postgresDialect: Dialect = {
  engine: "postgres",
  sql: cached((text) => replaceMarkers("postgres", text)),
  param: (value) => value,
  tableExistsSql:
    "SELECT 1 AS found FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1",
  // Two bridges starting at once: the second waits, then sees the new version and skips.
  migrationLockSql: "LOCK TABLE schema_version IN ACCESS EXCLUSIVE MODE",
};

/** SQLite: `$n` becomes `?n`; markers become INTEGER PRIMARY KEY AUTOINCREMENT/BLOB/INTEGER; booleans bind as 0/1. */
export const sqliteDialect: Dialect = {
  engine: "sqlite",
  sql: cached((text) => numberedPlaceholders(replaceMarkers("sqlite", text))),
  param: (value) => (typeof value === "boolean" ? (value ? 1 : 0) : value),
  tableExistsSql: "SELECT 1 AS found FROM sqlite_master WHERE type = 'table' AND name = $1",
  // BEGIN IMMEDIATE already takes the write lock.
  migrationLockSql: null,
};

/** The dialect of `engine`. */
export function dialectFor(engine: Engine): Dialect {
  return engine === "postgres" ? postgresDialect : sqliteDialect;
}

/**
 * Whether `err` is a UNIQUE/PRIMARY KEY violation on either engine
 * (postgres SQLSTATE 23505; sqlite extended codes SQLITE_CONSTRAINT_UNIQUE 2067 / _PRIMARYKEY 1555).
 */
export function isUniqueViolation(err: unknown): boolean {
  if (typeof err !== "object" || err === null) return false;
  const e = err as { code?: unknown; errcode?: unknown };
  if (e.code === "23505") return true;
  return e.code === "ERR_SQLITE_ERROR" && (e.errcode === 2067 || e.errcode === 1555);
}

/** Read a `{{BOOL}}` column: postgres gives true/false, sqlite 0/1. */
export function dbBool(value: unknown): boolean {
  return value === true || value === 1 || value === 1n;
}

/** Read a BIGINT/INTEGER column as a number (both engines are configured to return numbers). */
export function dbNumber(value: unknown): number {
  if (typeof value === "number") return value;
  if (typeof value === "bigint" || typeof value === "string") return Number(value);
  throw new TypeError("expected a numeric column");
}

/** Read a `{{BLOB}}` column as a Buffer (sqlite returns Uint8Array, pg returns Buffer). */
export function dbBuffer(value: unknown): Buffer {
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError("expected a binary column");
}

/** Encode a value for a JSON TEXT column. */
export function jsonText(value: unknown): string {
  return JSON.stringify(value);
}

/**
 * Decode a JSON TEXT column holding an array of strings.
 * @throws TypeError if the text is not a JSON array of strings
 */
export function parseStringArray(value: unknown): string[] {
  const parsed: unknown = typeof value === "string" ? JSON.parse(value) : value;
  if (!Array.isArray(parsed) || !parsed.every((v) => typeof v === "string")) {
    throw new TypeError("expected a JSON array of strings");
  }
  return parsed;
}
