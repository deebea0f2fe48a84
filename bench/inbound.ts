/**
 * Inbound mail benchmark: `npm run bench`.
 *
 * Measures how fast the bridge takes in mail the way real mail arrives: many concurrent
 * SMTP clients, each on its own connection. The path under test is the real
 * {@link SmtpListener} + the real {@link InboundRouter} + the real store from
 * {@link openStore}, on SQLite (temp file) and on PostgreSQL (a throwaway database from the
 * test harness). The router's target is a room mailbox, so no homeserver is involved;
 * posting into Matrix (the InboundPoster) is NOT part of this measurement.
 *
 * The clients run in a child process (this same file, `--client`), so the figures for
 * RSS and CPU below are the bridge side only. Both processes share the machine's cores.
 *
 * Prints figures only: no assertions, no pass/fail. Speed goals live here, never in
 * timed tests. See bench/README.md for the knobs (BENCH_MESSAGES, BENCH_CONCURRENCY, ...).
 */
import { fork } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as delay } from "node:timers/promises";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import SMTPConnection from "nodemailer/lib/smtp-connection";
import type { SMTPEnvelope } from "nodemailer/lib/smtp-connection";
import { InboundRouter } from "../src/bridge/InboundRouter.ts";
import type { IdContext } from "../src/bridge/ids.ts";
import { SmtpListener } from "../src/mail/inbound/SmtpListener.ts";
import type { InboundEnvelope, InboundHandler, SmtpListenerConfig } from "../src/mail/inbound/SmtpListener.ts";
import { openStore } from "../src/store/open.ts";
import type { BridgeStore } from "../src/store/Store.ts";
import { configureLogging } from "../src/util/logger.ts";
import { startPostgres, stopPostgresCluster } from "../test/harness/postgres.ts";
import { startDnsServer, type TestDns } from "../test/harness/dns.ts";
import { DnsResolver } from "../src/mail/dns.ts";
import { Subscriptions } from "../src/bridge/Subscriptions.ts";
import type { Mailbox, SenderAuth } from "../src/bridge/InboundRouter.ts";
import type { TestPostgres } from "../test/harness/postgres.ts";

const MAIL_DOMAIN = "mail.bench.test";
const MAILBOX = "bench";
const ROOM_ID = "!bench:localhost";
const RECIPIENT = `${MAILBOX}@${MAIL_DOMAIN}`;
const TEXT_BYTES = 4 * 1024;
const ATTACHMENT_BYTES = 256 * 1024;
/** Distinct sender addresses cycled through (one ghost each, as real traffic would have). */
const SENDERS = 100;

// ---------------------------------------------------------------------------------------
// Shared between the parent (bridge side) and the child (SMTP clients)
// ---------------------------------------------------------------------------------------

type Variant = "text" | "attach";

/** What the parent asks the client process to do. */
interface ClientJob {
  port: number;
  messages: number;
  concurrency: number;
  variant: Variant;
  /** true: one connection per client, RSET between messages; false: a new connection per message. */
  reuse: boolean;
  timeCapMs: number;
  /** Unique per scenario, part of every Message-ID. */
  tag: string;
}

/** What the client process reports back. */
interface ClientResult {
  /** Messages answered 250. */
  accepted: number;
  /** Messages that got an error (reply or connection). */
  failed: number;
  /** First few error texts. */
  errors: string[];
  /** Bytes of message data of the accepted messages. */
  bytes: number;
  /** From the first connect to the last reply, ms. */
  wallMs: number;
  /** Per accepted message, ms: MAIL FROM → 250 after DATA (reused), connect → 250 (new connection). */
  latencies: number[];
  /** Connections opened. */
  connections: number;
  /** The time cap stopped the run before all messages were sent. */
  capped: boolean;
  /** CPU time of the client process during the run, ms. */
  cpuMs: number;
}

type ParentToChild = { type: "job"; job: ClientJob };
type ChildToParent = { type: "result"; result: ClientResult } | { type: "fatal"; error: string };

// ---------------------------------------------------------------------------------------
// Child: SMTP clients
// ---------------------------------------------------------------------------------------

/** Fold a base64 string to 76-character lines (RFC 2045 §6.8). */
function fold76(s: string): string {
  const lines: string[] = [];
  for (let i = 0; i < s.length; i += 76) lines.push(s.slice(i, i + 76));
  return lines.join("\r\n");
}

/** ~4 KiB of plain text in lines of at most 72 characters. */
function textBody(): string {
  const words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua".split(" ");
  const lines: string[] = [];
  let line = "";
  let size = 0;
  for (let i = 0; size < TEXT_BYTES; i++) {
    const w = words[i % words.length]!;
    if (line.length + w.length + 1 > 72) {
      lines.push(line);
      size += line.length + 2;
      line = "";
    }
    line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(line);
  return lines.join("\r\n") + "\r\n";
}

/** The part of every message after its per-message headers (shared by all messages of a run). */
function messageTail(variant: Variant): Buffer {
  const text = textBody();
  if (variant === "text") {
    return Buffer.from(
      "MIME-Version: 1.0\r\n" +
        "Content-Type: text/plain; charset=utf-8\r\n" +
        "Content-Transfer-Encoding: 7bit\r\n" +
        "\r\n" +
        text,
    );
  }
  const boundary = "=_bench_" + randomBytes(8).toString("hex");
  const attachment = fold76(randomBytes(ATTACHMENT_BYTES).toString("base64"));
  return Buffer.from(
    "MIME-Version: 1.0\r\n" +
      `Content-Type: multipart/mixed; boundary="${boundary}"\r\n` +
      "\r\n" +
      `--${boundary}\r\n` +
      "Content-Type: text/plain; charset=utf-8\r\n" +
      "Content-Transfer-Encoding: 7bit\r\n" +
      "\r\n" +
      text +
      `--${boundary}\r\n` +
      "Content-Type: application/octet-stream; name=\"data.bin\"\r\n" +
      "Content-Disposition: attachment; filename=\"data.bin\"\r\n" +
      "Content-Transfer-Encoding: base64\r\n" +
      "\r\n" +
      attachment +
      "\r\n" +
      `--${boundary}--\r\n`,
  );
}

function senderOf(i: number): string {
  return `sender${i % SENDERS}@example.org`;
}

function buildMessage(i: number, tag: string, tail: Buffer): Buffer {
  const head =
    `From: "Sender ${i % SENDERS}" <${senderOf(i)}>\r\n` +
    `To: <${RECIPIENT}>\r\n` +
    `Subject: bench message ${i}\r\n` +
    `Date: ${new Date().toUTCString().replace("GMT", "+0000")}\r\n` +
    `Message-ID: <bench.${tag}.${i}@example.org>\r\n`;
  return Buffer.concat([Buffer.from(head), tail]);
}

type SmtpError = Error & { responseCode?: number; response?: string; code?: string };

function errorText(err: unknown): string {
  const e = err as SmtpError;
  return e.response ?? `${e.code ?? "ERROR"}: ${e.message ?? String(err)}`;
}

/** An SMTP client connection; `closed` turns true when the server or the network ends it. */
interface Client {
  conn: SMTPConnection;
  closed: boolean;
}

function openClient(port: number): Promise<Client> {
  const conn = new SMTPConnection({
    host: "127.0.0.1",
    port,
    secure: false,
    ignoreTLS: true,
    name: "client.example.org",
    connectionTimeout: 30_000,
    greetingTimeout: 30_000,
    socketTimeout: 120_000,
  });
  const client: Client = { conn, closed: false };
  conn.on("error", () => {
    client.closed = true;
  });
  conn.on("end", () => {
    client.closed = true;
  });
  return new Promise((resolve, reject) =>
    conn.connect((err) => {
      if (err) {
        conn.close();
        reject(err);
      } else resolve(client);
    }),
  );
}

function sendOn(client: Client, envelope: SMTPEnvelope, message: Buffer): Promise<void> {
  return new Promise((resolve, reject) => client.conn.send(envelope, message, (err) => (err ? reject(err) : resolve())));
}

function resetOn(client: Client): Promise<void> {
  return new Promise((resolve, reject) => client.conn.reset((err) => (err ? reject(err) : resolve())));
}

async function runClients(job: ClientJob): Promise<ClientResult> {
  const tail = messageTail(job.variant);
  const result: ClientResult = {
    accepted: 0,
    failed: 0,
    errors: [],
    bytes: 0,
    wallMs: 0,
    latencies: [],
    connections: 0,
    capped: false,
    cpuMs: 0,
  };
  const fail = (err: unknown): void => {
    result.failed++;
    if (result.errors.length < 5) result.errors.push(errorText(err));
  };
  let next = 0;
  const started = performance.now();
  const deadline = started + job.timeCapMs;
  const take = (): number | null => {
    if (next >= job.messages) return null;
    if (performance.now() >= deadline) {
      result.capped = true;
      return null;
    }
    return next++;
  };
  const envelopeOf = (i: number): SMTPEnvelope => ({ from: senderOf(i), to: [RECIPIENT] });

  /** One connection per client, its messages sent one after the other (RSET between). */
  const reusedWorker = async (): Promise<void> => {
    let client: Client | null = null;
    let sent = 0;
    try {
      for (let i = take(); i !== null; i = take()) {
        const message = buildMessage(i, job.tag, tail);
        try {
          if (!client || client.closed) {
            client = await openClient(job.port);
            result.connections++;
            sent = 0;
          } else if (sent > 0) {
            await resetOn(client);
          }
          const t0 = performance.now();
          await sendOn(client, envelopeOf(i), message);
          result.latencies.push(performance.now() - t0);
          result.accepted++;
          result.bytes += message.length;
          sent++;
        } catch (err) {
          fail(err);
        }
      }
    } finally {
      if (client && !client.closed) client.conn.quit();
    }
  };

  /** A new connection (greeting, EHLO, one transaction, QUIT) for every message. */
  const perMessageWorker = async (): Promise<void> => {
    for (let i = take(); i !== null; i = take()) {
      const message = buildMessage(i, job.tag, tail);
      const t0 = performance.now();
      let client: Client | null = null;
      try {
        client = await openClient(job.port);
        result.connections++;
        await sendOn(client, envelopeOf(i), message);
        result.latencies.push(performance.now() - t0);
        result.accepted++;
        result.bytes += message.length;
      } catch (err) {
        fail(err);
      } finally {
        if (client && !client.closed) client.conn.quit();
      }
    }
  };

  const cpu0 = process.cpuUsage();
  const worker = job.reuse ? reusedWorker : perMessageWorker;
  await Promise.all(Array.from({ length: job.concurrency }, () => worker()));
  result.wallMs = performance.now() - started;
  const cpu = process.cpuUsage(cpu0);
  result.cpuMs = (cpu.user + cpu.system) / 1000;
  return result;
}

function clientMain(): void {
  const reply = (msg: ChildToParent): void => {
    process.send?.(msg);
  };
  process.once("message", (msg: ParentToChild) => {
    runClients(msg.job).then(
      (result) => {
        reply({ type: "result", result });
        process.disconnect?.();
      },
      (err: unknown) => {
        reply({ type: "fatal", error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
        process.disconnect?.();
      },
    );
  });
}

// ---------------------------------------------------------------------------------------
// Parent: the bridge side, measurement and report
// ---------------------------------------------------------------------------------------

interface Scenario {
  name: string;
  variant: Variant;
  reuse: boolean;
}

const SCENARIOS: Scenario[] = [
  { name: "4KiB reused-conn", variant: "text", reuse: true },
  { name: "4KiB new-conn", variant: "text", reuse: false },
  { name: "256KiB reused-conn", variant: "attach", reuse: true },
  { name: "256KiB new-conn", variant: "attach", reuse: false },
];

type EngineName = "sqlite" | "postgres";

interface Row {
  engine: EngineName;
  scenario: string;
  /** Set when the scenario could not run or failed; the figures are then missing. */
  error?: string;
  messages?: number;
  concurrency?: number;
  accepted?: number;
  failed?: number;
  capped?: boolean;
  wallS?: number;
  msgPerS?: number;
  mbPerS?: number;
  clientP?: [number, number, number];
  commitP?: [number, number, number];
  rssBefore?: number;
  rssAfter?: number;
  rssPeak?: number;
  serverCpuPct?: number;
  clientCpuPct?: number;
  rows?: number;
  distinctIds?: number;
}

function intEnv(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === "") return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, got ${JSON.stringify(v)}`);
  return n;
}

/** Nearest-rank percentile of an ascending array. */
function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

function p3(values: number[]): [number, number, number] {
  const s = [...values].sort((a, b) => a - b);
  return [pct(s, 50), pct(s, 95), pct(s, 99)];
}

const mib = (bytes: number): string => (bytes / 1024 / 1024).toFixed(0);
const ms = (v: number): string => (Number.isNaN(v) ? "-" : v < 10 ? v.toFixed(1) : v.toFixed(0));

/** Run the client process for one job; resolves with its result (kills it after `hardMs`). */
function runClientProcess(job: ClientJob, hardMs: number): Promise<ClientResult> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = fork(import.meta.filename, ["--client"], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    let done = false;
    const finish = (fn: () => void): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      fn();
    };
    const timer = setTimeout(() => {
      finish(() => reject(new Error(`client process did not finish within ${Math.round(hardMs / 1000)} s; killed`)));
      child.kill("SIGKILL");
    }, hardMs);
    child.on("message", (msg: ChildToParent) => {
      if (msg.type === "result") finish(() => resolve(msg.result));
      else finish(() => reject(new Error(`client process failed: ${msg.error}`)));
    });
    child.on("error", (err) => finish(() => reject(err)));
    child.on("exit", (code, signal) =>
      finish(() => reject(new Error(`client process exited early (code ${code}, signal ${signal})`))),
    );
    child.send({ type: "job", job } satisfies ParentToChild);
  });
}

/** A fresh store for one scenario, and how to remove it afterwards. */
interface BenchStore {
  store: BridgeStore;
  dispose(): Promise<void>;
}

async function openBenchStore(engine: EngineName, tmp: string, n: number): Promise<BenchStore> {
  if (engine === "sqlite") {
    const dir = join(tmp, `sqlite-${n}`);
    const store = await openStore({ url: null, sqliteFile: join(dir, "bridge.sqlite") });
    return {
      store,
      async dispose() {
        await store.close().catch(() => undefined);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  const pg: TestPostgres = await startPostgres();
  let store: BridgeStore;
  try {
    store = await openStore({ url: pg.url, sqliteFile: join(tmp, "unused.sqlite") });
  } catch (err) {
    await pg.stop().catch(() => undefined);
    throw err;
  }
  return {
    store,
    async dispose() {
      await store.close().catch(() => undefined);
      // pg-pool's end() resolves before its clients have said goodbye; the harness drops the
      // database WITH (FORCE), which would make those clients log 57P01. Let them finish first.
      await delay(250);
      await pg.stop();
    },
  };
}

/** Try to return freed memory between scenarios (gc is not exposed by `node bench/inbound.ts`). */
function collectGarbage(): void {
  try {
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as (() => void) | undefined;
    gc?.();
  } catch {
    // not fatal: RSS figures then carry more of the previous scenario
  }
}

interface Settings {
  messages: number;
  concurrency: number;
  timeCapMs: number;
}

let benchDns: TestDns | null = null;

/**
 * Sender authentication as in production: SPF/DKIM/DMARC through the bridge's resolver (with
 * its cache) against a real DNS server on loopback that publishes SPF for the bench senders.
 */
async function benchAuth(): Promise<SenderAuth> {
  benchDns ??= await startDnsServer({ records: { "example.org": { TXT: ["v=spf1 ip4:127.0.0.1 -all"] } } });
  const dns = new DnsResolver({ nameservers: [benchDns.nameserver], timeoutMs: 2000, tries: 2, cacheEntries: 5000, cacheTtlMs: 300_000 });
  return { lookup: dns.lookup, policy: { enforceDmarcReject: true, unverified: "mark", deferOnDnsError: true }, trustedArcSealers: [], minKeyBits: 1024 };
}

async function runScenario(engine: EngineName, scenario: Scenario, settings: Settings, tmp: string, n: number): Promise<Row> {
  const row: Row = { engine, scenario: scenario.name };
  const { store, dispose } = await openBenchStore(engine, tmp, n);
  let listener: SmtpListener | null = null;
  try {
    await store.setRoomMailbox(MAILBOX, ROOM_ID, "@admin:localhost");
    const config: SmtpListenerConfig = {
      bind_address: "127.0.0.1",
      port: 0,
      hostname: "mx.bench.test",
      max_message_bytes: 26_214_400,
      max_clients: Math.max(200, settings.concurrency + 10),
      tls_cert_file: null,
      tls_key_file: null,
      require_tls: false,
      dnsbl_zones: [],
      // All load comes from one loopback IP and one sender domain: the per-client limits
      // would measure themselves, not the ingest path.
      max_connections_per_ip: settings.concurrency + 10,
      max_messages_per_ip: 0,
      max_messages_per_sender_domain: 0,
    };
    const ids: IdContext = {
      ghostPrefix: "email_",
      serverName: "localhost",
      mailDomain: MAIL_DOMAIN,
      botLocalpart: "emailbot",
      caseSensitiveLocalparts: false,
    };
    const router = new InboundRouter({
      store,
      ids,
      mayBridge: () => true,
      hostname: config.hostname,
      matrix: {
        userExists: () => Promise.reject(new Error("bench: userExists must not be called for a room mailbox")),
        joinedMembers: () => Promise.reject(new Error("bench: joinedMembers must not be called for a room mailbox")),
      },
      // Posting into Matrix is not part of this measurement.
      onCommitted: () => {},
      auth: await benchAuth(),
      subscriptions: new Subscriptions({ store, ids, dkim: null, onQueued: () => {} }),
      admins: { roomId: null, users: [] },
    });
    // Times the commit: from the end of DATA (the listener calls deliver when the data
    // stream ends) until the rows are committed, i.e. until the listener writes 250.
    const commits: number[] = [];
    const handler: InboundHandler<Mailbox> = {
      checkRecipient: (address: string, envelope: InboundEnvelope) => router.checkRecipient(address, envelope),
      async deliver(raw: Buffer, envelope: InboundEnvelope<Mailbox>) {
        const t0 = performance.now();
        await router.deliver(raw, envelope);
        commits.push(performance.now() - t0);
      },
    };
    // No reverse DNS: on loopback in a sandbox a PTR lookup measures the resolver, not the bridge.
    listener = new SmtpListener({ config, mailDomain: MAIL_DOMAIN, handler, reverseLookup: false });
    const { port } = await listener.listen();

    collectGarbage();
    const rssBefore = process.memoryUsage().rss;
    let rssPeak = rssBefore;
    const sampler = setInterval(() => {
      rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
    }, 100);
    const cpu0 = process.cpuUsage();
    let result: ClientResult;
    try {
      result = await runClientProcess(
        {
          port,
          messages: settings.messages,
          concurrency: settings.concurrency,
          variant: scenario.variant,
          reuse: scenario.reuse,
          timeCapMs: settings.timeCapMs,
          tag: `${engine}.${n}.${randomBytes(4).toString("hex")}`,
        },
        settings.timeCapMs + 120_000,
      );
    } finally {
      clearInterval(sampler);
    }
    const cpu = process.cpuUsage(cpu0);
    const rssAfter = process.memoryUsage().rss;
    rssPeak = Math.max(rssPeak, rssAfter);

    await listener.close();
    listener = null;

    // Every accepted message must be a committed row (fresh store per scenario).
    const pending = await store.listPendingInbound(settings.messages + 1000);
    row.rows = pending.length;
    row.distinctIds = new Set(pending.map((r) => r.messageId)).size;
    pending.length = 0;

    const wallS = result.wallMs / 1000;
    Object.assign(row, {
      messages: settings.messages,
      concurrency: settings.concurrency,
      accepted: result.accepted,
      failed: result.failed,
      capped: result.capped,
      wallS,
      msgPerS: result.accepted / wallS,
      mbPerS: result.bytes / 1e6 / wallS,
      clientP: p3(result.latencies),
      commitP: p3(commits),
      rssBefore,
      rssAfter,
      rssPeak,
      serverCpuPct: ((cpu.user + cpu.system) / 1000 / result.wallMs) * 100,
      clientCpuPct: (result.cpuMs / result.wallMs) * 100,
    } satisfies Partial<Row>);
    if (result.errors.length > 0) row.error = `${result.failed} failed, e.g. ${result.errors.join(" | ")}`;
    return row;
  } finally {
    if (listener) await listener.close().catch(() => undefined);
    await dispose();
    collectGarbage();
  }
}

function printScenario(r: Row): void {
  const title = `[${r.engine}] ${r.scenario}`;
  if (r.wallS === undefined) {
    console.log(`${title}: NOT RUN: ${r.error ?? "unknown reason"}`);
    return;
  }
  const committedNote =
    r.rows === r.accepted && r.distinctIds === r.accepted
      ? "every accepted message committed"
      : `MISMATCH: ${r.accepted} accepted, ${r.rows} rows, ${r.distinctIds} distinct Message-IDs`;
  console.log(title);
  console.log(
    `  messages ${r.accepted}/${r.messages} accepted${r.failed ? `, ${r.failed} failed` : ""}${r.capped ? " (TIME CAP reached)" : ""}, concurrency ${r.concurrency}`,
  );
  console.log(`  wall ${r.wallS.toFixed(2)} s   ${r.msgPerS!.toFixed(0)} msg/s   ${r.mbPerS!.toFixed(2)} MB/s of message data`);
  console.log(`  client latency p50/p95/p99 ${r.clientP!.map(ms).join(" / ")} ms   (reused: MAIL FROM → 250; new-conn: connect → 250)`);
  console.log(`  commit latency p50/p95/p99 ${r.commitP!.map(ms).join(" / ")} ms   (server: DATA end → rows committed → 250)`);
  console.log(`  RSS before ${mib(r.rssBefore!)} MiB, after ${mib(r.rssAfter!)} MiB, peak ${mib(r.rssPeak!)} MiB   CPU bridge ${r.serverCpuPct!.toFixed(0)}%, clients ${r.clientCpuPct!.toFixed(0)}%`);
  console.log(`  store rows afterwards (listPendingInbound): ${r.rows} — ${committedNote}`);
  if (r.error) console.log(`  errors: ${r.error}`);
}

function printTable(rows: Row[]): void {
  const header = ["engine", "scenario", "msgs", "conc", "wall s", "msg/s", "MB/s", "client p50/p95/p99 ms", "commit p50/p95/p99 ms", "RSS MiB b/a/peak", "rows"];
  const lines: string[][] = [header];
  for (const r of rows) {
    if (r.wallS === undefined) {
      lines.push([r.engine, r.scenario, "-", "-", "-", "-", "-", "not run", "-", "-", "-"]);
      continue;
    }
    lines.push([
      r.engine,
      r.scenario,
      `${r.accepted}${r.accepted !== r.messages ? `/${r.messages}` : ""}${r.capped ? "*" : ""}`,
      String(r.concurrency),
      r.wallS.toFixed(2),
      r.msgPerS!.toFixed(0),
      r.mbPerS!.toFixed(2),
      r.clientP!.map(ms).join("/"),
      r.commitP!.map(ms).join("/"),
      `${mib(r.rssBefore!)}/${mib(r.rssAfter!)}/${mib(r.rssPeak!)}`,
      String(r.rows),
    ]);
  }
  const widths = header.map((_, c) => Math.max(...lines.map((l) => l[c]!.length)));
  const numeric = new Set([2, 3, 4, 5, 6, 10]);
  for (const [i, l] of lines.entries()) {
    console.log(l.map((cell, c) => (numeric.has(c) && i > 0 ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!))).join("  ").trimEnd());
    if (i === 0) console.log(widths.map((w) => "-".repeat(w)).join("  "));
  }
  if (rows.some((r) => r.capped)) console.log("* time cap reached before all messages were sent");
}

async function parentMain(): Promise<void> {
  configureLogging({ level: "warn" });
  const settings: Settings = {
    messages: intEnv("BENCH_MESSAGES", 2000),
    concurrency: intEnv("BENCH_CONCURRENCY", 50),
    timeCapMs: intEnv("BENCH_TIME_CAP_S", 120) * 1000,
  };
  const engines = (process.env.BENCH_ENGINES ?? "sqlite,postgres")
    .split(",")
    .map((s) => s.trim())
    .filter((s): s is EngineName => s === "sqlite" || s === "postgres");

  console.log("matrix-email-bridge inbound benchmark");
  console.log(
    `  node ${process.version}, ${availableParallelism()} cores; ${settings.messages} messages per scenario, ${settings.concurrency} concurrent SMTP clients, time cap ${settings.timeCapMs / 1000} s per scenario`,
  );
  console.log("  path: SmtpListener (smtp-server, 100 ms early-talker wait before the greeting kept) → InboundRouter → store (room mailbox)");
  console.log("  NOT measured: posting into Matrix (onCommitted is a no-op, no homeserver); reverse DNS is off");
  console.log("  clients: nodemailer SMTPConnection in a child process on the same host (they share the cores); RSS/CPU are the bridge process's");
  console.log("  SQLite: temp file, WAL, synchronous=FULL; PostgreSQL: test-harness cluster with fsync=off, synchronous_commit=off (not durable: optimistic)");
  console.log("  fresh store per scenario; messages: ~4 KiB text, or 4 KiB text + 256 KiB attachment (base64, ~350 KB on the wire)");
  console.log("");

  const runStarted = performance.now();
  const tmp = mkdtempSync(join(tmpdir(), "meb-bench-"));
  const rows: Row[] = [];
  let n = 0;
  try {
    for (const engine of engines) {
      if (engine === "postgres") {
        // Start (or find) the cluster once, before any timing; report and skip if unavailable.
        try {
          const probe = await startPostgres();
          await probe.stop();
        } catch (err) {
          const reason = (err instanceof Error ? err.message : String(err)).split("\n")[0]!;
          console.log(`[postgres] skipped: ${reason}`);
          for (const s of SCENARIOS) rows.push({ engine, scenario: s.name, error: `skipped: ${reason}` });
          continue;
        }
      }
      for (const scenario of SCENARIOS) {
        let row: Row;
        try {
          row = await runScenario(engine, scenario, settings, tmp, ++n);
        } catch (err) {
          row = { engine, scenario: scenario.name, error: err instanceof Error ? err.message : String(err) };
        }
        rows.push(row);
        printScenario(row);
      }
      console.log("");
    }
  } finally {
    await stopPostgresCluster().catch(() => undefined);
    await benchDns?.stop();
    rmSync(tmp, { recursive: true, force: true });
  }

  console.log(`total ${((performance.now() - runStarted) / 1000).toFixed(0)} s`);
  console.log("Summary (client latency: reused = MAIL FROM → 250, new-conn = connect → 250 incl. the 100 ms greeting wait; commit: DATA end → 250, server side)");
  printTable(rows);
  process.exit(0);
}

if (process.argv.includes("--client")) clientMain();
else await parentMain();
