/**
 * Part 3, `outbound`: Matrix → mail, delivered to a loopback MTA that waits 100 ms before its
 * greeting (test/harness/smtpSink.ts: a default smtp-server; prepareEnv routes example.org to
 * it with `outbound.static_routes`).
 *
 * Portals: DMs of alice with ghosts `@email_benchout<k>=40example.org` (alice invites the
 * ghost, the bridge makes it join). N messages (`bench-out <tag> <i>`), P in parallel, sent by
 * alice with `PUT /send`, spread round-robin over the portals; run once with one portal and
 * once with several (the bridge delivers one mail at a time per room, rooms in parallel).
 * - throughput: mails the sink accepted / (last sink 250 − first PUT), mails/s; it cannot
 *   exceed the rate at which the Matrix sends return, which the table shows next to it;
 * - latency per mail: the sink's 250 (its `receivedAt`) − the PUT of that message returning;
 * - backlog: the bridge is stopped, N messages are sent into the portals, the bridge is started
 *   again; mails at the sink / (last sink 250 − "bridge started"). Synapse already has the
 *   events and hands them over as soon as the bridge's start-up ping says it is back, so this
 *   is the bridge's own delivery rate, not bounded by how fast Synapse takes sends.
 *
 * Reference: a plain SMTP client (bench/smtpLoad.ts, child process) sending N mails of the
 * same size to the same sink, a new connection per mail (as the bridge delivers), with the
 * bridge's default `outbound.concurrency` (8) connections at once.
 */
import { randomBytes } from "node:crypto";
import { MAIL_DOMAIN } from "../test/e2e/env.ts";
import type { MatrixBench } from "./matrixEnv.ts";
import { runSmtpLoad } from "./smtpLoad.ts";
import type { TableRow } from "./table.ts";
import { num, percentile, progress, reason, sleep } from "./util.ts";

/** Knobs of the outbound part. */
export interface OutboundSettings {
  /** Messages per scenario. */
  messages: number;
  /** Matrix sends in flight at once. */
  parallel: number;
  /** Portals of the second scenario (the first has one). */
  portals: number;
  /** Longest wait for the mails of a scenario, ms. */
  timeoutMs: number;
}

/** The bridge's default `outbound.concurrency`: connections of the reference client. */
const REFERENCE_CONNECTIONS = 8;
const THROUGHPUT_TARGET = ">= 100 mails/s";
const LATENCY_TARGET = "p50 <= 300 ms";

interface ScenarioResult {
  portals: number;
  delivered: number;
  mailsPerS: number;
  /** Matrix sends returned per second (mails cannot leave faster than they are sent). */
  sendsPerS: number;
  p50: number;
  p95: number;
  note?: string;
}

/** Make `count` DM portals (alice + a ghost), after those already made. */
async function makePortals(mb: MatrixBench, have: string[], count: number): Promise<void> {
  const { alice } = mb;
  while (have.length < count) {
    const k = have.length;
    const ghost = `@email_benchout${k}=40example.org:${mb.env.synapse.serverName}`;
    const roomId = await alice.createRoom({ preset: "private_chat", name: `bench out ${k}`, is_direct: true });
    await alice.invite(roomId, ghost);
    await alice.waitForMembership(roomId, ghost, "join");
    have.push(roomId);
  }
}

/** Mails of run `tag` at the sink: `receivedAt` by message number, filled by `scan()`. */
function sinkWatch(mb: MatrixBench, tag: string): { receivedAt: Map<number, number>; scan(): void } {
  const { sink } = mb.env;
  const pattern = new RegExp(`bench-out ${tag} (\\d+)`);
  const receivedAt = new Map<number, number>();
  let scanned = sink.mails.length;
  return {
    receivedAt,
    scan() {
      for (; scanned < sink.mails.length; scanned++) {
        const m = sink.mails[scanned]!;
        const hit = pattern.exec(m.raw.toString("latin1"));
        if (hit) receivedAt.set(Number(hit[1]), m.receivedAt);
      }
    },
  };
}

/** Messages `bench-out <tag> <i>` sent by alice, `s.parallel` at once, round-robin over `rooms`. */
async function sendAll(mb: MatrixBench, rooms: string[], s: OutboundSettings, tag: string): Promise<{ sentAt: Map<number, number>; errors: string[]; t0: number; sendS: number }> {
  const sentAt = new Map<number, number>();
  const errors: string[] = [];
  const t0 = Date.now();
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < s.messages; i = next++) {
      try {
        await mb.alice.sendText(rooms[i % rooms.length]!, `bench-out ${tag} ${i}: a short message from the outbound benchmark.`);
        sentAt.set(i, Date.now());
      } catch (err) {
        if (errors.length < 3) errors.push(reason(err));
      }
    }
  };
  await Promise.all(Array.from({ length: s.parallel }, () => worker()));
  return { sentAt, errors, t0, sendS: (Date.now() - t0) / 1000 };
}

/** What went wrong in a scenario, for the table's note (undefined when nothing did). */
function problemsOf(what: string, delivered: number, s: OutboundSettings, errors: string[]): string | undefined {
  const problems: string[] = [];
  if (delivered < s.messages) problems.push(`only ${delivered}/${s.messages} mails at the sink within ${s.timeoutMs / 1000} s`);
  if (errors.length) problems.push(`Matrix sends failed: ${errors.join(" | ")}`);
  return problems.length ? `${what}: ${problems.join("; ")}` : undefined;
}

async function scenario(mb: MatrixBench, rooms: string[], s: OutboundSettings): Promise<ScenarioResult> {
  const tag = randomBytes(3).toString("hex");
  const sink = sinkWatch(mb, tag);
  const { receivedAt, scan } = sink;
  const { sentAt, errors, t0, sendS } = await sendAll(mb, rooms, s, tag);
  const deadline = t0 + s.timeoutMs;
  for (scan(); receivedAt.size < sentAt.size && Date.now() < deadline; scan()) await sleep(50);
  const last = Math.max(...receivedAt.values());
  const latencies = [...receivedAt].filter(([i]) => sentAt.has(i)).map(([i, at]) => at - sentAt.get(i)!);
  const result: ScenarioResult = {
    portals: rooms.length,
    delivered: receivedAt.size,
    mailsPerS: receivedAt.size > 0 ? receivedAt.size / ((last - t0) / 1000) : NaN,
    sendsPerS: sentAt.size / sendS,
    p50: percentile(latencies, 50),
    p95: percentile(latencies, 95),
  };
  const note = problemsOf(`outbound, ${rooms.length} portal(s)`, receivedAt.size, s, errors);
  if (note) result.note = note;
  progress(
    `  [outbound] ${rooms.length} portal(s): ${sentAt.size} sends returned in ${sendS.toFixed(2)} s (${num(result.sendsPerS)}/s); ${receivedAt.size} mails at the sink, last ${((last - t0) / 1000).toFixed(2)} s after the first send = ${num(result.mailsPerS)} mails/s; ` +
      `latency send→250 p50 ${num(result.p50)} ms, p95 ${num(result.p95)} ms, max ${num(Math.max(...latencies))} ms`,
  );
  return result;
}

/** The figures of {@link backlog}. */
interface BacklogResult {
  delivered: number;
  /** Mails at the sink / (last sink 250 − the restarted bridge logging "bridge started"). */
  mailsPerS: number;
  /** From "bridge started" to the first mail at the sink, ms. */
  firstMs: number;
  /** The restarted bridge's start, spawn → "bridge started", ms. */
  startMs: number;
  note?: string;
}

/**
 * The bridge catching up: it is stopped, `s.messages` messages are sent into `rooms` while it
 * is down (Synapse holds them for the appservice), and it is started again. Synapse hands the
 * held events over in transactions as soon as the bridge's start-up ping tells it the bridge
 * is back, so this rate is the bridge's own (journal, render, sign, deliver), not bounded by
 * how fast Synapse accepts sends as {@link scenario}'s is. No latency: the messages waited
 * for the bridge by design.
 */
async function backlog(mb: MatrixBench, rooms: string[], s: OutboundSettings): Promise<BacklogResult> {
  const tag = randomBytes(3).toString("hex");
  const { receivedAt, scan } = sinkWatch(mb, tag);
  let sent: Awaited<ReturnType<typeof sendAll>> | null = null;
  const bridge = await mb.restartBridge(async () => {
    sent = await sendAll(mb, rooms, s, tag);
  });
  const startedAt = Date.now();
  const { sentAt, errors, sendS } = sent!;
  const deadline = startedAt + s.timeoutMs;
  for (scan(); receivedAt.size < sentAt.size && Date.now() < deadline; scan()) await sleep(20);
  const times = [...receivedAt.values()];
  const first = Math.min(...times);
  const last = Math.max(...times);
  const result: BacklogResult = {
    delivered: receivedAt.size,
    mailsPerS: receivedAt.size > 0 ? receivedAt.size / ((last - startedAt) / 1000) : NaN,
    firstMs: first - startedAt,
    startMs: bridge.startMs,
  };
  const note = problemsOf(`outbound backlog, ${rooms.length} portals`, receivedAt.size, s, errors);
  if (note) result.note = note;
  progress(
    `  [outbound] backlog: ${sentAt.size} messages sent into ${rooms.length} portals in ${sendS.toFixed(2)} s while the bridge was stopped; restarted in ${(bridge.startMs / 1000).toFixed(2)} s; ` +
      `first mail ${num(result.firstMs)} ms after "bridge started", ${receivedAt.size} mails, last ${((last - startedAt) / 1000).toFixed(2)} s after = ${num(result.mailsPerS)} mails/s`,
  );
  return result;
}

/**
 * Run part 3.
 * @param mb the running Synapse + bridge + sink
 * @param s the knobs
 * @returns throughput and latency rows for one portal and for `s.portals` portals
 */
export async function runOutbound(mb: MatrixBench, s: OutboundSettings): Promise<TableRow[]> {
  progress(`[outbound] ${s.messages} Matrix messages, ${s.parallel} sends in flight, into 1 and into ${s.portals} DM portals; sink waits 100 ms before its greeting`);
  // Reference first: a plain client into the same sink, mails of the bridge's size.
  let ref: { mailsPerS: number; p50: number; p95: number } | null = null;
  let refNote: string | undefined;
  try {
    const load = await runSmtpLoad(
      {
        port: mb.env.sink.port,
        messages: s.messages,
        concurrency: REFERENCE_CONNECTIONS,
        reuse: false,
        timeCapMs: s.timeoutMs,
        messageBytes: 2500,
        recipient: "benchref@example.org",
        senderPrefix: "alice",
        senderDomain: MAIL_DOMAIN,
        senders: 1,
        tag: `ref${randomBytes(3).toString("hex")}`,
      },
      s.timeoutMs + 60_000,
    );
    ref = { mailsPerS: load.accepted / (load.wallMs / 1000), p50: percentile(load.latencies, 50), p95: percentile(load.latencies, 95) };
    progress(`  [outbound] reference: plain SMTP client, ${REFERENCE_CONNECTIONS} connections, new connection per mail: ${load.accepted} mails in ${(load.wallMs / 1000).toFixed(2)} s = ${num(ref.mailsPerS)} mails/s; connect→250 p50 ${num(ref.p50)} ms, p95 ${num(ref.p95)} ms`);
  } catch (err) {
    refNote = `outbound reference: ${reason(err)}`;
    progress(`  [outbound] reference FAILED: ${reason(err)}`);
  }

  const rows: TableRow[] = [];
  const rooms: string[] = [];
  for (const portals of [...new Set([1, s.portals])]) {
    const label = portals === 1 ? "1 portal" : `${portals} portals`;
    try {
      await makePortals(mb, rooms, portals);
      const r = await scenario(mb, rooms.slice(0, portals), s);
      rows.push({
        part: "outbound",
        figure: `Matrix->mail mails/s, ${label}`,
        value: `${num(r.mailsPerS)} mails/s`,
        reference: `${ref ? `plain SMTP client ${num(ref.mailsPerS)} mails/s` : "plain client failed"}; Matrix sends ${num(r.sendsPerS)}/s`,
        ratio: ref ? `${(r.mailsPerS / ref.mailsPerS).toFixed(2)}x` : "-",
        target: THROUGHPUT_TARGET,
        ...(r.note || refNote ? { note: [r.note, refNote].filter(Boolean).join("; ") } : {}),
      });
      rows.push({
        part: "outbound",
        figure: `Matrix->mail latency send->250, ${label}`,
        value: `p50 ${num(r.p50)} / p95 ${num(r.p95)} ms`,
        reference: ref ? `plain client p50 ${num(ref.p50)} / p95 ${num(ref.p95)} ms` : "failed",
        ratio: ref ? `${(r.p50 / ref.p50).toFixed(2)}x (p50)` : "-",
        target: LATENCY_TARGET,
      });
    } catch (err) {
      progress(`  [outbound] ${label} FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      rows.push({ part: "outbound", figure: `Matrix->mail, ${label}`, value: "failed", reference: "-", ratio: "-", target: `${THROUGHPUT_TARGET}; ${LATENCY_TARGET}`, note: `outbound ${label}: ${reason(err)}` });
    }
  }
  const figure = `Matrix->mail mails/s, backlog after a restart, ${s.portals} portals`;
  try {
    await makePortals(mb, rooms, s.portals);
    const r = await backlog(mb, rooms.slice(0, s.portals), s);
    rows.push({
      part: "outbound",
      figure,
      value: `${num(r.mailsPerS)} mails/s`,
      reference: `${ref ? `plain SMTP client ${num(ref.mailsPerS)} mails/s` : "plain client failed"}; first mail ${num(r.firstMs)} ms after start`,
      ratio: ref ? `${(r.mailsPerS / ref.mailsPerS).toFixed(2)}x` : "-",
      target: THROUGHPUT_TARGET,
      ...(r.note || refNote ? { note: [r.note, refNote].filter(Boolean).join("; ") } : {}),
    });
  } catch (err) {
    progress(`  [outbound] backlog FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    rows.push({ part: "outbound", figure, value: "failed", reference: "-", ratio: "-", target: THROUGHPUT_TARGET, note: `outbound backlog: ${reason(err)}` });
  }
  return rows;
}
