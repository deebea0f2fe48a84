/**
 * Part 1, `ingest`: SMTP ingest of the bridge against a bare smtp-server that discards.
 *
 * The same client load (bench/smtpLoad.ts: many concurrent connections from a child process,
 * ~2 KB messages, "reuse connection" and "new connection per message") goes to
 * - the bridge's real ingest path: {@link SmtpListener} → {@link InboundRouter} (SPF/DKIM/DMARC
 *   through the bridge's resolver against a loopback DNS server) → the store from
 *   {@link openStore}, which commits before the 250: SQLite (WAL, synchronous=FULL, temp dir)
 *   and PostgreSQL (test/harness/postgres.ts) when available. Posting into Matrix is not part
 *   of this path (`onCommitted` is a no-op);
 * - a bare `smtp-server` (same library, same options as the listener's: 100 ms early-talker
 *   wait before the greeting, no reverse DNS, no AUTH/STARTTLS) whose `onData` drains the
 *   stream and answers 250: the reference, standing in for a discarding MTA.
 *
 * Both servers run in the bench process. Runs are interleaved: per round and connection
 * pattern, the bare server and each engine in turn (order reversed every other round), a
 * fresh store for every bridge run. The table gets the median over rounds; ratio = bridge/bare.
 */
import { randomBytes } from "node:crypto";
import { createWriteStream, mkdtempSync, rmSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as delay } from "node:timers/promises";
import { SMTPServer } from "smtp-server";
import { ParseThread } from "../src/mail/inbound/parseThread.ts";
import { InboundRouter } from "../src/bridge/InboundRouter.ts";
import { Contacts } from "../src/bridge/Contacts.ts";
import type { Mailbox, SenderAuth } from "../src/bridge/InboundRouter.ts";
import type { IdContext } from "../src/bridge/ids.ts";
import { Subscriptions } from "../src/bridge/Subscriptions.ts";
import { DnsResolver } from "../src/mail/dns.ts";
import { SmtpListener } from "../src/mail/inbound/SmtpListener.ts";
import type { InboundEnvelope, InboundHandler, SmtpListenerConfig } from "../src/mail/inbound/SmtpListener.ts";
import { openStore } from "../src/store/open.ts";
import type { BridgeStore } from "../src/store/Store.ts";
import { configureLogging } from "../src/util/logger.ts";
import { startDnsServer, type TestDns } from "../test/harness/dns.ts";
import { startPostgres, stopPostgresCluster, type TestPostgres } from "../test/harness/postgres.ts";
import { runSmtpLoad, type SmtpLoadResult } from "./smtpLoad.ts";
import type { TableRow } from "./table.ts";
import { median, num, percentile, progress, reason } from "./util.ts";

const MAIL_DOMAIN = "mail.bench.test";
const MAILBOX = "bench";
const ROOM_ID = "!bench:localhost";
const RECIPIENT = `${MAILBOX}@${MAIL_DOMAIN}`;
const HOSTNAME = "mx.bench.test";
const MAX_MESSAGE_BYTES = 26_214_400;
/** Distinct sender addresses cycled through (one ghost each, as real traffic would have). */
const SENDERS = 100;
const TARGET = ">= 1.0x of a discarding MTA (Haraka reference)";

/** Knobs of the ingest part. */
export interface IngestSettings {
  /** Messages per run. */
  messages: number;
  /** Concurrent SMTP clients. */
  concurrency: number;
  /** Rounds; each round runs every server once per connection pattern. */
  rounds: number;
  /** Per run: no new message after this, ms. */
  timeCapMs: number;
  /** Approximate message size, bytes. */
  messageBytes: number;
  /** Which stores the bridge runs on. */
  engines: EngineName[];
}

/** A store the bridge ingest runs on. */
export type EngineName = "sqlite" | "postgres";
type ServerName = "bare" | EngineName;

interface Pattern {
  name: string;
  reuse: boolean;
}

const PATTERNS: Pattern[] = [
  { name: "reused conn", reuse: true },
  { name: "new conn per msg", reuse: false },
];

/** The figures of one run. */
interface Run {
  server: ServerName;
  pattern: string;
  round: number;
  msgPerS: number;
  /** CPU time of the bench process (the server under load) per accepted message, ms. */
  serverCpuMsPerMsg: number;
  /** CPU time of the load generator per accepted message, ms. */
  clientCpuMsPerMsg: number;
  result: SmtpLoadResult;
}

/** A server under load for one run; `commits` are DATA end → committed (bridge only). */
interface Target {
  port: number;
  commits: number[];
  /** Rows in the store afterwards (bridge only). */
  countRows(): Promise<number | null>;
  close(): Promise<void>;
}

/** The listener's smtp-server options, reduced to a server that takes everything and keeps nothing. */
async function startBare(concurrency: number): Promise<Target> {
  const server = new SMTPServer({
    name: HOSTNAME,
    banner: "bare smtp-server (discards)",
    size: MAX_MESSAGE_BYTES,
    authOptional: true,
    disabledCommands: ["AUTH", "STARTTLS"],
    hideENHANCEDSTATUSCODES: true,
    hideDSN: true,
    maxClients: Math.max(200, concurrency + 10) * 2 + 100,
    disableReverseLookup: true,
    socketTimeout: 330_000,
    logger: false,
    onData(stream, _session, callback) {
      stream.on("end", () => callback());
      stream.resume();
    },
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const port = (server.server.address() as { port: number }).port;
  return {
    port,
    commits: [],
    countRows: () => Promise.resolve(null),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
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

/** A fresh store, and how to remove it afterwards. */
async function openBenchStore(engine: EngineName, tmp: string, n: number): Promise<{ store: BridgeStore; dispose(): Promise<void> }> {
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

/** The bridge's ingest path on a fresh store: SmtpListener → InboundRouter → store. */
async function startBridgeIngest(engine: EngineName, settings: IngestSettings, tmp: string, n: number): Promise<Target> {
  const { store, dispose } = await openBenchStore(engine, tmp, n);
  try {
    await store.setRoomMailbox(MAILBOX, ROOM_ID, "@admin:localhost");
    const config: SmtpListenerConfig = {
      bind_address: "127.0.0.1",
      port: 0,
      hostname: HOSTNAME,
      max_message_bytes: MAX_MESSAGE_BYTES,
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
    // The DATA-time parse in its worker thread, as the bridge runs it (src/bridge/Bridge.ts).
    const parseThread = new ParseThread({ timeoutMs: 30_000 });
    const router = new InboundRouter({
      parse: (raw, skeleton) => parseThread.parse(skeleton ?? raw),
      store,
      ids,
      contacts: new Contacts({
        store,
        matrix: {
          botDm: () => Promise.reject(new Error("bench: no contact request is made for a room mailbox")),
          botNotice: () => Promise.reject(new Error("bench: no contact request is made for a room mailbox")),
        },
      }),
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
    const commits: number[] = [];
    const handler: InboundHandler<Mailbox> = {
      checkRecipient: (address: string, envelope: InboundEnvelope) => router.checkRecipient(address, envelope),
      async deliver(raw: Buffer, envelope: InboundEnvelope<Mailbox>) {
        const t0 = performance.now();
        await router.deliver(raw, envelope);
        commits.push(performance.now() - t0);
      },
    };
    // No reverse DNS (as the bare server): on loopback a PTR lookup measures the resolver.
    const listener = new SmtpListener({ config, mailDomain: MAIL_DOMAIN, handler, reverseLookup: false });
    const { port } = await listener.listen();
    let closed = false;
    return {
      port,
      commits,
      async countRows() {
        const pending = await store.listPendingInbound(settings.messages + 1000);
        return new Set(pending.map((r) => r.messageId)).size;
      },
      async close() {
        if (closed) return;
        closed = true;
        await listener.close().catch(() => undefined);
        await parseThread.close();
        await dispose();
      },
    };
  } catch (err) {
    await dispose();
    throw err;
  }
}

async function oneRun(server: ServerName, pattern: Pattern, settings: IngestSettings, tmp: string, n: number, round: number): Promise<Run> {
  const target = server === "bare" ? await startBare(settings.concurrency) : await startBridgeIngest(server, settings, tmp, n);
  try {
    const cpu0 = process.cpuUsage();
    const result = await runSmtpLoad(
      {
        port: target.port,
        messages: settings.messages,
        concurrency: settings.concurrency,
        reuse: pattern.reuse,
        timeCapMs: settings.timeCapMs,
        messageBytes: settings.messageBytes,
        recipient: RECIPIENT,
        senderPrefix: "sender",
        senderDomain: "example.org",
        senders: SENDERS,
        tag: `${server}.${n}.${randomBytes(4).toString("hex")}`,
      },
      settings.timeCapMs + 120_000,
    );
    const cpu = process.cpuUsage(cpu0);
    const rows = await target.countRows();
    const msgPerS = result.accepted / (result.wallMs / 1000);
    const lat = `client p50/p95 ${num(percentile(result.latencies, 50))}/${num(percentile(result.latencies, 95))} ms`;
    const commit = target.commits.length > 0 ? `, commit p50/p95 ${num(percentile(target.commits, 50))}/${num(percentile(target.commits, 95))} ms` : "";
    const serverCpu = ((cpu.user + cpu.system) / 1000 / result.wallMs) * 100;
    const rowNote = rows === null ? "" : rows === result.accepted ? ", every 250 is a committed row" : `, MISMATCH: ${result.accepted} accepted but ${rows} distinct rows`;
    progress(
      `  [ingest r${round + 1}] ${server.padEnd(8)} ${pattern.name.padEnd(16)} ${result.accepted}/${settings.messages} in ${(result.wallMs / 1000).toFixed(2)} s = ${num(msgPerS)} msg/s; ${lat}${commit}; CPU server ${serverCpu.toFixed(0)}%, clients ${((result.cpuMs / result.wallMs) * 100).toFixed(0)}%${rowNote}` +
        (result.failed ? `; ${result.failed} FAILED, e.g. ${result.errors.join(" | ")}` : "") +
        (result.capped ? " (TIME CAP)" : ""),
    );
    const serverCpuMsPerMsg = (cpu.user + cpu.system) / 1000 / Math.max(1, result.accepted);
    const clientCpuMsPerMsg = result.cpuMs / Math.max(1, result.accepted);
    return { server, pattern: pattern.name, round, msgPerS, serverCpuMsPerMsg, clientCpuMsPerMsg, result };
  } finally {
    await target.close();
  }
}

/**
 * Run part 1 and return its table rows (one per engine and connection pattern).
 * @param settings the knobs
 * @returns rows; an engine that cannot run (e.g. no PostgreSQL) gets a "not run" row with the reason
 * @throws only on a crash of the bench itself (a failed run is reported in its row)
 */
export async function runIngest(settings: IngestSettings): Promise<TableRow[]> {
  progress(
    `[ingest] ${settings.messages} messages of ~${settings.messageBytes} B per run, ${settings.concurrency} concurrent SMTP clients (child process), ${settings.rounds} round(s), engines ${settings.engines.join(", ")}`,
  );
  const tmp = mkdtempSync(join(tmpdir(), "meb-bench-ingest-"));
  // The bridge's logs as in production (level info), JSON, into a file as the bridge process of
  // parts 2-4 writes them: the per-mail log lines are part of the ingest path's cost.
  const logStream = createWriteStream(join(tmp, "ingest.log"));
  configureLogging({ level: "info", format: "json", write: (line) => logStream.write(line + "\n") });
  const skipped = new Map<EngineName, string>();
  const runs: Run[] = [];
  const failures = new Map<string, string>();
  let n = 0;
  try {
    if (settings.engines.includes("postgres")) {
      try {
        const probe = await startPostgres();
        await probe.stop();
      } catch (err) {
        skipped.set("postgres", reason(err));
        progress(`  [ingest] postgres skipped: ${reason(err)}`);
      }
    }
    const engines = settings.engines.filter((e) => !skipped.has(e));
    for (let round = 0; round < settings.rounds; round++) {
      for (const pattern of PATTERNS) {
        const order: ServerName[] = ["bare", ...engines];
        if (round % 2 === 1) order.reverse();
        for (const server of order) {
          try {
            runs.push(await oneRun(server, pattern, settings, tmp, ++n, round));
          } catch (err) {
            failures.set(`${server}/${pattern.name}`, reason(err));
            progress(`  [ingest r${round + 1}] ${server} ${pattern.name}: FAILED: ${reason(err)}`);
          }
        }
      }
    }
  } finally {
    await stopPostgresCluster().catch(() => undefined);
    await benchDns?.stop();
    benchDns = null;
    configureLogging({ level: "warn", format: "pretty", write: (line) => process.stderr.write(line + "\n") });
    await new Promise<void>((resolve) => logStream.end(() => resolve()));
    rmSync(tmp, { recursive: true, force: true });
  }

  const rows: TableRow[] = [];
  for (const engine of settings.engines) {
    const label =
      engine === "sqlite" ? "SQLite WAL sync=FULL" : process.env.MEB_TEST_PG_URL ? "PostgreSQL (MEB_TEST_PG_URL)" : "PostgreSQL (harness: fsync=off)";
    for (const pattern of PATTERNS) {
      const figure = `ingest msg/s, ${label}, ${pattern.name}`;
      const skip = skipped.get(engine);
      if (skip) {
        rows.push({ part: "ingest", figure, value: "not run", reference: "-", ratio: "-", target: TARGET, note: skip });
        continue;
      }
      const mine = runs.filter((r) => r.server === engine && r.pattern === pattern.name);
      const bare = runs.filter((r) => r.server === "bare" && r.pattern === pattern.name);
      const v = median(mine.map((r) => r.msgPerS));
      const ref = median(bare.map((r) => r.msgPerS));
      const failed = mine.reduce((s, r) => s + r.result.failed, 0);
      const note = [failures.get(`${engine}/${pattern.name}`), failures.get(`bare/${pattern.name}`), failed ? `${failed} messages refused` : undefined]
        .filter(Boolean)
        .join("; ");
      rows.push({
        part: "ingest",
        figure,
        value: mine.length ? `${num(v)} msg/s` : "failed",
        reference: bare.length ? `bare smtp-server ${num(ref)} msg/s` : "failed",
        ratio: mine.length && bare.length ? `${(v / ref).toFixed(2)}x` : "-",
        target: TARGET,
        ...(note ? { note } : {}),
      });
      if (mine.length && bare.length) rows.push(cpuBudgetRow(engine, pattern.name, mine, bare));
    }
  }
  return rows;
}

/** Cores of this machine (the bridge, the load generator and the reference share them). */
const CORES = availableParallelism();

/**
 * The CPU the bridge's ingest path would need to take mail at the bare server's rate: the
 * bridge's CPU per message (its process, all threads) plus the load generator's, times the bare
 * rate, in cores, next to the cores this machine has. Over the cores means that rate is out of
 * reach on this machine whatever the path's latency, since the work (parse, authenticate, commit)
 * is done for every message and the reference does none of it.
 * @param mine the bridge's runs of one engine and pattern; `bare` the reference's
 */
function cpuBudgetRow(engine: EngineName, pattern: string, mine: Run[], bare: Run[]): TableRow {
  const server = median(mine.map((r) => r.serverCpuMsPerMsg));
  const clients = median(bare.map((r) => r.clientCpuMsPerMsg));
  const bareServer = median(bare.map((r) => r.serverCpuMsPerMsg));
  const rate = median(bare.map((r) => r.msgPerS));
  const cores = (rate * (server + clients)) / 1000;
  return {
    part: "ingest",
    figure: `CPU per msg, ${engine}, ${pattern}: bridge + load generator`,
    value: `${server.toFixed(2)} + ${clients.toFixed(2)} ms`,
    reference: `bare smtp-server ${bareServer.toFixed(2)} + ${clients.toFixed(2)} ms`,
    ratio: `${cores.toFixed(1)} cores`,
    target: `cores needed at the bare rate (${num(rate)} msg/s); this machine has ${CORES}`,
  };
}
