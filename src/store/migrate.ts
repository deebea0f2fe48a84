/**
 * Schema migration runner: applies {@link MIGRATIONS} newer than the database's version.
 */
import type { Database, Queryable } from "./db/Database.ts";
import { dialectFor, dbNumber, isUniqueViolation } from "./db/dialect.ts";
import { MIGRATIONS } from "./migrations/index.ts";
import type { Migration } from "./migrations/index.ts";
import { getLogger } from "../util/logger.ts";

const log = getLogger("store");

const CREATE_VERSION_TABLE = `
CREATE TABLE IF NOT EXISTS schema_version (
  version     INTEGER PRIMARY KEY,
  description TEXT NOT NULL,
  applied_at  BIGINT NOT NULL
)`;

/** Outcome of {@link migrate}. */
export interface MigrateResult {
  /** Schema version found (0 for an empty database). */
  from: number;
  /** Schema version now. */
  to: number;
  /** Versions applied by this call, in order (empty when already up to date). */
  applied: number[];
}

async function currentVersion(db: Queryable): Promise<number> {
  const rows = await db.query<{ v: unknown }>("SELECT MAX(version) AS v FROM schema_version");
  const v = rows[0]?.v;
  return v === null || v === undefined ? 0 : dbNumber(v);
}

function checkList(migrations: readonly Migration[]): void {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) throw new Error(`migration list is broken: entry ${i} has version ${m.version}, expected ${i + 1}`);
  });
}

/**
 * Bring the schema up to date. Each migration and its `schema_version` row commit in one
 * transaction; running it again on an up-to-date database changes nothing.
 * @param db the database to migrate
 * @param migrations the known migrations (default: all of them; tests pass fewer)
 * @returns the versions before/after and what was applied
 * @throws Error if the database holds a Synapse schema (table `state_groups_state`)
 * @throws Error if the database's schema version is newer than the newest known migration
 * @throws the driver's error if a migration fails (that migration is rolled back)
 */
export async function migrate(db: Database, migrations: readonly Migration[] = MIGRATIONS): Promise<MigrateResult> {
  checkList(migrations);
  const dialect = dialectFor(db.engine);
  const latest = migrations.length;

  const synapse = await db.query(dialect.tableExistsSql, ["state_groups_state"]);
  if (synapse.length > 0) {
    throw new Error(
      "refusing to use this database: it contains Synapse's tables (state_groups_state); give the bridge its own database",
    );
  }

  try {
    await db.exec(CREATE_VERSION_TABLE);
  } catch (err) {
    // Two processes creating the table at once on postgres: the loser sees a unique violation.
    if (!isUniqueViolation(err)) throw err;
  }

  const from = await currentVersion(db);
  const tooNew = (v: number): Error =>
    new Error(
      `database schema version ${v} is newer than this bridge supports (latest known version ${latest}); upgrade the bridge`,
    );
  if (from > latest) throw tooNew(from);

  const applied: number[] = [];
  for (const m of migrations) {
    if (m.version <= from) continue;
    const done = await db.transaction(async (tx) => {
      if (dialect.migrationLockSql) await tx.exec(dialect.migrationLockSql);
      const now = await currentVersion(tx);
      if (now > latest) throw tooNew(now);
      if (now >= m.version) return false; // another process got there first
      await tx.exec(m.sql);
      await tx.execute("INSERT INTO schema_version (version, description, applied_at) VALUES ($1, $2, $3)", [
        m.version,
        m.description,
        Date.now(),
      ]);
      return true;
    });
    if (done) {
      applied.push(m.version);
      log.info("store migration applied", { engine: db.engine, version: m.version, description: m.description });
    }
  }
  return { from, to: await currentVersion(db), applied };
}
