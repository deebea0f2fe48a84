/**
 * `queue`: look at and act on the bridge's two mail queues from the command line.
 *
 *   queue list [inbound|outbound] [--state S] [--limit N]
 *   queue show inbound|outbound ID [--raw]
 *   queue retry inbound|outbound ID
 *   queue drop inbound|outbound ID --yes
 *
 * It opens the configured store directly (SQLite in WAL mode or PostgreSQL both take a second
 * process), so it works while the bridge runs: a retried item is due at once and the running
 * bridge picks it up at its next pass (at the latest after its 10 s safety-net poll).
 * docs/operations.md has examples.
 */
import { existsSync } from "node:fs";
import type { BridgeConfig } from "../config/schema.ts";
import { openStore } from "../store/open.ts";
import { loadRawCipher } from "../store/rawCipher.ts";
import type { BridgeStore, InboundRow, InboundState, OutboundRecipientRow, OutboundRow, OutboundState } from "../store/Store.ts";
import { configureLogging } from "../util/logger.ts";
import * as ops from "../bridge/queueOps.ts";
import { QUEUE_STATES as STATES, QueueOpError, type OutboundItem, type QueueDirection } from "../bridge/queueOps.ts";

export type { QueueDirection } from "../bridge/queueOps.ts";

/** The command line options the `queue` command takes (as `parseArgs` gives them). */
export interface QueueOptions {
  /** `--state S`: only rows in this state (`list`). */
  state?: string | undefined;
  /** `--limit N`: at most N rows per queue (`list`, default {@link DEFAULT_LIMIT}). */
  limit?: string | undefined;
  /** `--raw`: write the stored message bytes, nothing else (`show`). */
  raw?: boolean | undefined;
  /** `--yes`: really delete (`drop`). */
  yes?: boolean | undefined;
}

/** Where the command's output goes: text, or the raw message bytes of `show --raw`. */
export type QueueOutput = (chunk: string | Buffer) => void;

/**
 * A `queue` command that cannot do what was asked. The message is one line naming the
 * command (printed by src/main.ts without a stack trace); `usage` says whether the command
 * line was wrong (exit code 2) or the action failed (exit code 1).
 */
export class QueueCommandError extends Error {
  readonly usage: boolean;
  constructor(message: string, usage: boolean) {
    super(message);
    this.name = "QueueCommandError";
    this.usage = usage;
  }
}

/** Rows per queue that `queue list` shows without `--limit`. */
export const DEFAULT_LIMIT = 50;

const USAGE_LINE =
  "usage: queue list [inbound|outbound] [--state S] [--limit N] | queue show|retry|drop inbound|outbound ID [--raw] [--yes]";

/** A parsed `queue` command line. */
type Parsed =
  | { action: "list"; directions: { direction: QueueDirection; state: string | null }[]; limit: number }
  | { action: "show" | "retry" | "drop"; direction: QueueDirection; id: number; raw: boolean; yes: boolean };

function usage(message: string): QueueCommandError {
  return new QueueCommandError(`${message}; ${USAGE_LINE}`, true);
}

function direction(word: string | undefined, action: string): QueueDirection {
  if (word === "inbound" || word === "outbound") return word;
  throw usage(word === undefined ? `queue ${action} needs inbound or outbound` : `queue ${action}: "${word}" is neither inbound nor outbound`);
}

/**
 * Check a `queue` command line (the words after `queue`) without touching the store.
 * @throws QueueCommandError (usage) naming what is wrong
 */
function parse(args: string[], opts: QueueOptions): Parsed {
  const action = args[0];
  if (action === undefined) throw usage("queue needs an action: list, show, retry or drop");
  const only = (flag: string, given: unknown, allowed: string): void => {
    if (given !== undefined && given !== false && action !== allowed) throw usage(`queue ${action}: ${flag} goes with queue ${allowed} only`);
  };
  only("--state", opts.state, "list");
  only("--limit", opts.limit, "list");
  only("--raw", opts.raw, "show");
  only("--yes", opts.yes, "drop");
  if (action === "list") {
    if (args.length > 2) throw usage(`queue list: unexpected "${args[2]}"`);
    const dirs: QueueDirection[] = args[1] === undefined ? ["inbound", "outbound"] : [direction(args[1], "list")];
    let limit = DEFAULT_LIMIT;
    if (opts.limit !== undefined) {
      if (!/^[1-9][0-9]{0,5}$/.test(opts.limit)) throw usage(`queue list: --limit must be a whole number from 1 to 999999, not "${opts.limit}"`);
      limit = Number(opts.limit);
    }
    const state = opts.state ?? null;
    const chosen = dirs.filter((d) => state === null || STATES[d].includes(state));
    if (chosen.length === 0) {
      const valid = dirs.map((d) => `${d}: ${STATES[d].join(", ")}`).join("; ");
      throw usage(`queue list: unknown state "${state}" (${valid})`);
    }
    return { action, directions: chosen.map((d) => ({ direction: d, state })), limit };
  }
  if (action === "show" || action === "retry" || action === "drop") {
    const dir = direction(args[1], action);
    const idText = args[2];
    if (idText === undefined) throw usage(`queue ${action} ${dir} needs the ID (see queue list)`);
    if (!/^[1-9][0-9]{0,14}$/.test(idText)) throw usage(`queue ${action}: the ID must be a positive whole number, not "${idText}"`);
    if (args.length > 3) throw usage(`queue ${action}: unexpected "${args[3]}"`);
    return { action, direction: dir, id: Number(idText), raw: opts.raw ?? false, yes: opts.yes ?? false };
  }
  throw usage(`queue: unknown action "${action}" (list, show, retry or drop)`);
}

/**
 * Open the configured store for the CLI: the same engine, keys (`storage`) and migrations as
 * `start`. A SQLite file that does not exist is not created.
 * @throws QueueCommandError (failure) when the store or a stored-mail key cannot be opened
 */
async function openConfiguredStore(config: BridgeConfig): Promise<BridgeStore> {
  const { url, sqlite_file: sqliteFile } = config.database;
  if (url === null && !existsSync(sqliteFile)) {
    throw new QueueCommandError(`queue: there is no store at ${sqliteFile} (database.sqlite_file); the bridge makes it when it first starts`, false);
  }
  try {
    const cipher = loadRawCipher(config.storage);
    return await openStore({ url, sqliteFile, cipher });
  } catch (err) {
    throw new QueueCommandError(`queue: cannot open the store: ${messageOf(err)}`, false);
  }
}

/**
 * Run one `queue` command: check the command line, load the config, open the store, act,
 * close the store. Output goes to `out`; nothing is logged below warnings unless
 * MEB_LOG_LEVEL says otherwise.
 * @param args the words after `queue`, e.g. `["show", "inbound", "12"]`
 * @param opts the options of the command line
 * @param loadConfig reads the config (called after the command line was checked)
 * @param out where output goes (default: stdout)
 * @param now the current time, epoch ms (ages and due times are shown relative to it)
 * @throws QueueCommandError for a wrong command line (`usage`) or an action that cannot be
 *   done (no such item, already posted, store unusable); ConfigError from `loadConfig`
 */
export async function queueCommand(
  args: string[],
  opts: QueueOptions,
  loadConfig: () => BridgeConfig,
  out: QueueOutput = (chunk) => process.stdout.write(chunk),
  now: number = Date.now(),
): Promise<void> {
  const cmd = parse(args, opts);
  const config = loadConfig();
  if (!process.env.MEB_LOG_LEVEL) configureLogging({ level: "warn", format: config.logging.format });
  const store = await openConfiguredStore(config);
  try {
    await run(cmd, store, out, now).catch((err: unknown) => {
      // The shared queue actions name the item and why; the command line names the command.
      if (err instanceof QueueOpError) throw new QueueCommandError(`queue ${cmd.action}: ${err.message}`, false);
      throw err;
    });
  } finally {
    await store.close();
  }
}

async function run(cmd: Parsed, store: BridgeStore, out: QueueOutput, now: number): Promise<void> {
  switch (cmd.action) {
    case "list":
      for (const [i, { direction: dir, state }] of cmd.directions.entries()) {
        if (i > 0) out("\n");
        if (dir === "inbound") out(inboundTable(await ops.listInboundQueue(store, state as InboundState | null, cmd.limit), state, cmd.limit, now));
        else out(outboundTable(await ops.listOutboundQueue(store, state as OutboundState | null, cmd.limit), state, cmd.limit, now));
      }
      return;
    case "show":
      return cmd.direction === "inbound" ? showInbound(store, cmd.id, cmd.raw, out, now) : showOutbound(store, cmd.id, cmd.raw, out, now);
    case "retry":
      return cmd.direction === "inbound" ? retryInbound(store, cmd.id, out) : retryOutbound(store, cmd.id, out);
    case "drop":
      return cmd.direction === "inbound" ? dropInbound(store, cmd.id, cmd.yes, out, now) : dropOutbound(store, cmd.id, cmd.yes, out, now);
  }
}

// ---- list ----

function inboundTable(rows: InboundRow[], state: string | null, limit: number, now: number): string {
  const title = `Inbound mail${state ? ` (${state})` : ""}, newest first: ${countText(rows.length, limit)}`;
  const body = rows.map((r) => [
    String(r.id),
    r.state,
    String(r.attempts),
    duration(now - r.receivedAt),
    r.state === "pending" ? due(r.nextAttemptAt, now) : "-",
    r.sender + (r.senderVerified ? "" : " (unverified)"),
    r.roomId ?? (r.dmLocalUserId ? `new DM with ${r.dmLocalUserId}` : "-"),
    cut(r.lastError ?? "", 70),
  ]);
  return table(title, ["ID", "STATE", "ATTEMPTS", "AGE", "NEXT ATTEMPT", "FROM", "ROOM", "LAST ERROR"], body);
}

function outboundTable(items: OutboundItem[], state: string | null, limit: number, now: number): string {
  const title = `Outbound mail${state ? ` (${state})` : ""}, newest first: ${countText(items.length, limit)}`;
  const body: string[][] = [];
  for (const { mail: r, recipients } of items) {
    body.push([
      String(r.id),
      r.state,
      String(r.attempts),
      duration(now - r.createdAt),
      r.state === "queued" || r.state === "deferred" ? due(r.nextAttemptAt, now) : "-",
      recipientSummary(r, recipients),
      r.roomId || "- (a DSN)",
      cut(r.lastError ?? "", 70),
    ]);
  }
  return table(title, ["ID", "STATE", "ATTEMPTS", "AGE", "NEXT ATTEMPT", "TO", "ROOM", "LAST ERROR"], body);
}

/** Every recipient with its state (`bob@x (sent)`), or the remaining list for a mail without recipient rows. */
function recipientSummary(mail: OutboundRow, recipients: OutboundRecipientRow[]): string {
  if (recipients.length === 0) return mail.recipients.join(", ") || "-";
  return recipients.map((r) => `${r.address} (${r.state})`).join(", ");
}

function countText(n: number, limit: number): string {
  if (n === 0) return "none";
  return n >= limit ? `${n} shown (--limit ${limit}; there may be more)` : `${n}`;
}

/** A title line, then aligned columns (every cell cleaned of control characters). */
function table(title: string, header: string[], rows: string[][]): string {
  if (rows.length === 0) return `${title}\n`;
  const cells = [header, ...rows.map((r) => r.map(clean))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => [...(r[i] ?? "")].length)));
  const line = (r: string[]): string => r.map((c, i) => (i === r.length - 1 ? c : c + " ".repeat(widths[i]! - [...c].length))).join("  ").trimEnd();
  return `${title}\n${cells.map(line).join("\n")}\n`;
}

// ---- show ----

async function showInbound(store: BridgeStore, id: number, raw: boolean, out: QueueOutput, now: number): Promise<void> {
  const r = await ops.getInboundItem(store, id);
  if (raw) return writeRaw(out, "inbound", r, now);
  const fields: [string, string][] = [
    ["id", String(r.id)],
    ["kind", r.kind === "dsn" ? "dsn (a delivery report about mail the bridge sent)" : r.kind],
    ["state", r.state],
    ["attempts", String(r.attempts)],
    ["received", when(r.receivedAt, now)],
    ["next attempt", r.state === "pending" ? `${iso(r.nextAttemptAt)} (${due(r.nextAttemptAt, now)})` : "-"],
    ["last error", r.lastError ?? "-"],
    ["sender", `${r.sender} (${r.senderVerified ? "verified" : "unverified"})`],
    ["sender name", r.senderName ?? "-"],
    ["envelope from", r.envelopeFrom === null ? "<> (null reverse-path)" : `<${r.envelopeFrom}>`],
    ["room", r.roomId ?? "- (a DM portal is made for it)"],
    ["dm user", r.dmLocalUserId ?? "-"],
    ["reply to event", r.replyToEventId ?? "-"],
    ["posted event", r.eventId ?? "-"],
    ["message-id", `<${r.messageId}>`],
    ["subject", subjectOf(r.raw) ?? "-"],
    ["participants", r.participants.join(", ") || "-"],
    ["auth", r.auth ? `spf=${r.auth.spf} dkim=${r.auth.dkim} dmarc=${r.auth.dmarc} arc=${r.auth.arc} verified=${r.auth.verified}` : "-"],
    ["spam", r.spam ? `action=${r.spam.action} score=${r.spam.score}/${r.spam.requiredScore}` : "-"],
    ["content hash", r.contentHash],
    ["message", messageSize(r.raw, r.rawPurgedAt, now, `queue show inbound ${r.id} --raw`)],
  ];
  out(fieldLines(`Inbound mail ${r.id}`, fields));
}

async function showOutbound(store: BridgeStore, id: number, raw: boolean, out: QueueOutput, now: number): Promise<void> {
  const { mail: r, recipients } = await ops.getOutboundItem(store, id);
  if (raw) return writeRaw(out, "outbound", r, now);
  const waiting = r.state === "queued" || r.state === "deferred";
  const fields: [string, string][] = [
    ["id", String(r.id)],
    ["state", r.state],
    ["attempts", String(r.attempts)],
    ["queued", when(r.createdAt, now)],
    ["next attempt", waiting ? `${iso(r.nextAttemptAt)} (${due(r.nextAttemptAt, now)})` : "-"],
    ["last error", r.lastError ?? "-"],
    ["room", r.roomId || "- (a DSN the bridge sent)"],
    ["event", r.eventId],
    ["message-id", `<${r.messageId}>`],
    ["subject", subjectOf(r.raw) ?? "-"],
    ["envelope from", `<${r.envelopeFrom}>`],
    ["still to deliver", r.recipients.join(", ") || "-"],
    ["delay notice", r.delayWarnedAt === null ? "-" : when(r.delayWarnedAt, now)],
    ["message", messageSize(r.raw, r.rawPurgedAt, now, `queue show outbound ${r.id} --raw`)],
  ];
  let text = fieldLines(`Outbound mail ${r.id}`, fields);
  if (recipients.length > 0) {
    const rows = recipients.map((p) => [
      p.address,
      p.state + (p.state === "failed" && !p.reported ? " (not reported yet)" : ""),
      String(p.attempts),
      p.nextAttemptAt !== null && (p.state === "pending" || p.state === "deferred") ? due(p.nextAttemptAt, now) : "-",
      p.lastReply ?? "-",
    ]);
    text += "\n" + table("Recipients:", ["ADDRESS", "STATE", "ATTEMPTS", "NEXT ATTEMPT", "LAST REPLY"], rows);
  }
  out(text);
}

function fieldLines(title: string, fields: [string, string][]): string {
  const width = Math.max(...fields.map(([k]) => k.length)) + 1;
  return `${title}\n${fields.map(([k, v]) => `  ${(k + ":").padEnd(width)} ${clean(v)}`).join("\n")}\n`;
}

function messageSize(raw: Buffer, purgedAt: number | null, now: number, rawCommand: string): string {
  if (purgedAt !== null) return `purged ${when(purgedAt, now)} (storage.raw_retention_days)`;
  return `${raw.length} bytes (${rawCommand} writes it)`;
}

/** `show --raw`: the stored message bytes, exactly. */
function writeRaw(out: QueueOutput, dir: QueueDirection, row: { id: number; raw: Buffer; rawPurgedAt: number | null }, now: number): void {
  if (row.rawPurgedAt !== null) {
    throw new QueueCommandError(`queue show: the message of ${dir} mail ${row.id} was purged ${when(row.rawPurgedAt, now)} (storage.raw_retention_days)`, false);
  }
  out(row.raw);
}

// ---- retry ----

async function retryInbound(store: BridgeStore, id: number, out: QueueOutput): Promise<void> {
  await ops.retryInbound(store, id);
  out(`inbound mail ${id} is due now; the running bridge posts it within seconds (it is tried again for inbound.retry_hours after it arrived)\n`);
}

async function retryOutbound(store: BridgeStore, id: number, out: QueueOutput): Promise<void> {
  await ops.retryOutbound(store, id);
  out(`outbound mail ${id} is due now, for every recipient not delivered yet; the running bridge tries it within seconds\n`);
}

// ---- drop ----

async function dropInbound(store: BridgeStore, id: number, yes: boolean, out: QueueOutput, now: number): Promise<void> {
  const row = await ops.droppableInbound(store, id);
  if (!yes) {
    throw new QueueCommandError(
      `queue drop: this deletes inbound mail ${id} (${row.state}, from ${clean(row.sender)}, ${duration(now - row.receivedAt)} old) and its message for good; ` +
        `save it first with "queue show inbound ${id} --raw > mail-${id}.eml", then add --yes`,
      true,
    );
  }
  await ops.dropInbound(store, id);
  out(`inbound mail ${id} deleted\n`);
}

async function dropOutbound(store: BridgeStore, id: number, yes: boolean, out: QueueOutput, now: number): Promise<void> {
  const row = await ops.droppableOutbound(store, id);
  if (!yes) {
    throw new QueueCommandError(
      `queue drop: this deletes outbound mail ${id} (${row.state}, ${duration(now - row.createdAt)} old; recipients not delivered yet get nothing) and its message for good; ` +
        `save it first with "queue show outbound ${id} --raw > mail-${id}.eml", then add --yes`,
      true,
    );
  }
  await ops.dropOutbound(store, id);
  out(`outbound mail ${id} deleted\n`);
}

// ---- formatting ----

/** A span in ms as `42s`, `12m`, `3h5m`, `2d4h`. */
function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h${m % 60 ? `${m % 60}m` : ""}`;
  return `${Math.floor(h / 24)}d${h % 24 ? `${h % 24}h` : ""}`;
}

/** A due time relative to now: `due now`, `in 5m`. */
function due(at: number, now: number): string {
  return at <= now ? "due now" : `in ${duration(at - now)}`;
}

function iso(at: number): string {
  return new Date(at).toISOString();
}

/** An instant as ISO time with its age: `2025-01-02T03:04:05.000Z (2h ago)`. */
function when(at: number, now: number): string {
  return `${iso(at)} (${duration(now - at)} ago)`;
}

/** Control characters (C0, DEL, C1) become spaces, so stored text cannot steer the terminal. */
function clean(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f]+/g, " ");
}

function cut(text: string, max: number): string {
  const one = clean(text).trim();
  const chars = [...one];
  return chars.length <= max ? one : chars.slice(0, max - 1).join("") + "…";
}

function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message || String((err as { code?: unknown }).code ?? err.name);
  return String(err);
}

/** The Subject header of a raw message, unfolded, with RFC 2047 encoded words decoded; null when there is none. */
function subjectOf(raw: Buffer): string | null {
  const text = raw.toString("latin1");
  const end = text.search(/\r?\n\r?\n/);
  const headers = (end < 0 ? text : text.slice(0, end)).replace(/\r?\n(?=[ \t])/g, "");
  const line = headers.split(/\r?\n/).find((l) => /^subject:/i.test(l));
  if (line === undefined) return null;
  const value = Buffer.from(line.slice("subject:".length).trim(), "latin1").toString("utf8");
  return value.replace(/=\?([^?]+)\?([bqBQ])\?([^?]*)\?=(?:\s+(?==\?))?/g, (word, charset: string, enc: string, data: string) => {
    try {
      const bytes = enc.toUpperCase() === "B" ? Buffer.from(data, "base64") : qDecode(data);
      return new TextDecoder(charset.replace(/\*.*$/, ""), { fatal: false }).decode(bytes);
    } catch {
      // An unknown charset: the encoded word is shown as it is.
      return word;
    }
  });
}

function qDecode(data: string): Buffer {
  const bytes: number[] = [];
  for (let i = 0; i < data.length; i++) {
    const c = data[i]!;
    if (c === "_") bytes.push(0x20);
    else if (c === "=" && /^[0-9A-Fa-f]{2}$/.test(data.slice(i + 1, i + 3))) {
      bytes.push(parseInt(data.slice(i + 1, i + 3), 16));
      i += 2;
    } else bytes.push(c.charCodeAt(0) & 0xff);
  }
  return Buffer.from(bytes);
}
