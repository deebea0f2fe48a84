/**
 * Metrics and health: the metrics listener on loopback (port 0) serving a BridgeMetrics that a
 * real SmtpListener (real SMTP on loopback), a real InboundPoster and a real OutboundQueue
 * (on a SQLite store, with a fake homeserver and a scripted delivery) report into; /health
 * over a real store, a real SMTP listener and a TCP listener standing in for the appservice.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import SMTPConnection from "nodemailer/lib/smtp-connection";
import { InboundPoster } from "../../src/bridge/InboundPoster.ts";
import { startOperationsListener } from "../../src/bridge/health.ts";
import type { HomeserverFailure, MatrixActions } from "../../src/bridge/ports.ts";
import type { IdContext } from "../../src/bridge/ids.ts";
import { SmtpListener, type InboundHandler } from "../../src/mail/inbound/SmtpListener.ts";
import { Rejections } from "../../src/mail/inbound/rejections.ts";
import { OutboundQueue } from "../../src/mail/outbound/OutboundQueue.ts";
import type { DeliveryResult } from "../../src/mail/outbound/deliver.ts";
import { openStore } from "../../src/store/open.ts";
import type { BridgeStore, NewInbound } from "../../src/store/Store.ts";
import { configureLogging } from "../../src/util/logger.ts";
import { BridgeMetrics, startMetricsListener, type MetricsListener } from "../../src/util/metrics.ts";
import { newInbound } from "../harness/rows.ts";
import { postRow } from "../harness/fakeHomeserver.ts";

if (!process.env.MEB_LOG_LEVEL) configureLogging({ level: "error" });

const DOMAIN = "bridge.test";

/** The value of one sample of the Prometheus text, or null when there is no such sample. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | null {
  const want = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .join(",");
  const prefix = want ? `${name}{${want}} ` : `${name} `;
  const line = text.split("\n").find((l) => l.startsWith(prefix));
  return line === undefined ? null : Number(line.slice(prefix.length));
}

async function get(port: number, path: string, method = "GET"): Promise<{ status: number; type: string | null; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { method });
  return { status: res.status, type: res.headers.get("content-type"), body: await res.text() };
}

async function scrape(port: number): Promise<string> {
  const r = await get(port, "/metrics");
  assert.equal(r.status, 200, r.body);
  assert.equal(r.type, "text/plain; version=0.0.4; charset=utf-8");
  return r.body;
}

/** Accepts `ok*` mailboxes of the bridge's domain, refuses `nobody*` with 550 5.1.1. */
const handler: InboundHandler<string> = {
  async checkRecipient(address) {
    if (address.startsWith("nobody")) throw Rejections.noSuchMailbox(address);
    return address;
  },
  async deliver() {},
};

function smtpListener(metrics: BridgeMetrics): SmtpListener<string> {
  return new SmtpListener({
    config: { bind_address: "127.0.0.1", port: 0, hostname: "mx.bridge.test", max_message_bytes: 65536, max_clients: 20, tls_cert_file: null, tls_key_file: null },
    mailDomain: DOMAIN,
    handler,
    reverseLookup: false,
    closeTimeoutMs: 1000,
    onReply: (code) => metrics.smtpReply(code),
  });
}

/** One SMTP session with nodemailer's client: send `to`, collect the refusals. */
async function smtpSession(port: number, to: string[]): Promise<{ accepted: string[]; rejected: string[] }> {
  const conn = new SMTPConnection({ host: "127.0.0.1", port, secure: false, ignoreTLS: true, name: "client.example.org" });
  conn.on("error", () => {});
  await new Promise<void>((resolve, reject) => conn.connect((err) => (err ? reject(err) : resolve())));
  try {
    const info = await new Promise<{ accepted: string[]; rejected: string[] }>((resolve, reject) =>
      conn.send({ from: "bob@example.org", to }, Buffer.from("Subject: hi\r\n\r\nhello\r\n"), (err, i) => (err ? reject(err) : resolve(i as never))),
    );
    return info;
  } finally {
    conn.quit();
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Send raw lines and read one reply per line (for smtp-server's own replies). */
async function rawSession(port: number, lines: string[]): Promise<string[]> {
  const socket = net.connect(port, "127.0.0.1");
  socket.setEncoding("utf8");
  let buffer = "";
  const replies: string[] = [];
  const next = (): Promise<string> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const m = /^(\d{3})(?: [^\r\n]*)?\r\n/m.exec(buffer);
        if (!m) return;
        const end = buffer.indexOf("\r\n", m.index) + 2;
        const reply = buffer.slice(0, end);
        buffer = buffer.slice(end);
        socket.off("data", onData);
        resolve(reply.trimEnd().split("\r\n").at(-1)!);
      };
      const onData = (d: string): void => {
        buffer += d;
        check();
      };
      socket.on("data", onData);
      socket.once("error", reject);
      check();
    });
  replies.push(await next());
  for (const line of lines) {
    socket.write(line + "\r\n");
    replies.push(await next());
  }
  socket.destroy();
  return replies;
}

function inbound(over: Partial<NewInbound> = {}): NewInbound {
  return newInbound({
    messageId: "m1@example.org",
    auth: null,
    participants: [],
    raw: Buffer.from("From: Bob <bob@example.org>\r\nSubject: hi\r\nMessage-ID: <m1@example.org>\r\n\r\nhello\r\n"),
    ...over,
  });
}

/** A homeserver whose first `sendEvent` fails (temporarily), then takes everything. */
function flakyHomeserver(): MatrixActions & { sent: number } {
  const state = { sent: 0, failNext: true };
  const known: Partial<MatrixActions> = {
    ensureGhost: async () => {},
    join: async () => {},
    botNotice: async () => {},
    isEncrypted: async () => false,
    sendEvent: async () => {
      if (state.failNext) {
        state.failNext = false;
        throw new Error("homeserver unreachable");
      }
      state.sent++;
      return `$event${state.sent}`;
    },
    classifyError: (err: unknown): HomeserverFailure => ({ temporary: true, retryAfterMs: null, status: null, errcode: null, message: (err as Error).message }),
  };
  return new Proxy(known, {
    get(target, prop) {
      if (prop === "sent") return state.sent;
      const f = target[prop as keyof MatrixActions];
      if (f === undefined) throw new Error(`the fake homeserver has no ${String(prop)}`);
      return f;
    },
  }) as MatrixActions & { sent: number };
}

const IDS: IdContext = { ghostPrefix: "email_", serverName: "hs.test", mailDomain: DOMAIN, botLocalpart: "emailbot", caseSensitiveLocalparts: false };

describe("metrics", () => {
  let dir: string;
  let store: BridgeStore;
  let metrics: BridgeMetrics;
  let listener: MetricsListener;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "meb-metrics-"));
    store = await openStore({ url: null, sqliteFile: join(dir, "bridge.sqlite") });
    metrics = new BridgeMetrics({ queueSizes: () => store.queueCounts() });
    listener = await startMetricsListener({ bindAddress: "127.0.0.1", port: 0, metrics, health: async () => ({ healthy: true, details: {} }) });
  });

  after(async () => {
    await listener?.close();
    await store?.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  it("serves the Prometheus text format on /metrics, with every bridge metric and the process metrics", async () => {
    assert.notEqual(listener.port, 0);
    const text = await scrape(listener.port);
    for (const name of [
      "meb_smtp_replies_total",
      "meb_inbound_posts_total",
      "meb_outbound_deliveries_total",
      "meb_retries_total",
      "meb_inbound_post_latency_seconds",
      "meb_outbound_delivery_latency_seconds",
      "meb_queue_depth",
      "meb_queue_oldest_age_seconds",
      "meb_queue_failed_items",
      "meb_store_up",
    ]) {
      assert.match(text, new RegExp(`^# HELP ${name} \\S`, "m"), name);
    }
    assert.match(text, /^process_cpu_user_seconds_total /m);
    assert.equal(sample(text, "meb_inbound_posts_total", { result: "posted" }), 0, "series exist from the start");
    assert.equal(sample(text, "meb_outbound_deliveries_total", { result: "failed" }), 0);
    assert.equal(sample(text, "meb_retries_total", { queue: "outbound" }), 0);
  });

  it("counts every SMTP reply by code, smtp-server's own included", async () => {
    const smtp = smtpListener(metrics);
    const { port } = await smtp.listen();
    try {
      const before = await scrape(listener.port);
      const count = (text: string, code: number): number => sample(text, "meb_smtp_replies_total", { code: String(code) }) ?? 0;
      const info = await smtpSession(port, ["ok@bridge.test", "nobody@bridge.test", "someone@elsewhere.example"]);
      assert.deepEqual(info.accepted, ["ok@bridge.test"]);
      assert.equal(info.rejected.length, 2);
      const replies = await rawSession(port, ["EHLO client.example.org", "FROBNICATE", "QUIT"]);
      assert.match(replies[2]!, /^500 /, "smtp-server's own reply to an unknown command");
      const text = await scrape(listener.port);
      // Session 1: 220 greeting, 250 EHLO, 250 MAIL, 250 RCPT ok, 550 nobody (5.1.1), 550 relay
      // (5.7.1), 354 DATA, 250 end of data, 221 QUIT. Session 2: 220, 250 EHLO, 500, 221.
      assert.equal(count(text, 220) - count(before, 220), 2);
      assert.equal(count(text, 250) - count(before, 250), 5);
      assert.equal(count(text, 550) - count(before, 550), 2);
      assert.equal(count(text, 354) - count(before, 354), 1);
      assert.equal(count(text, 500) - count(before, 500), 1);
      assert.equal(count(text, 221) - count(before, 221), 2);
    } finally {
      await smtp.close();
    }
  });

  it("reads queue depth, oldest age and given-up items from the store at scrape time", async () => {
    const a = (await store.insertInbound(inbound({ messageId: "q1@x", contentHash: "q1" }))).row;
    const b = (await store.insertInbound(inbound({ messageId: "q2@x", contentHash: "q2", roomId: "!other:hs.test" }))).row;
    await store.markInboundFailed(b.id, "given up");
    await store.enqueueOutbound({ roomId: "!room:hs.test", eventId: "$gauge", messageId: "g@bridge.test", envelopeFrom: "alice@bridge.test", recipients: ["x@example.org"], raw: Buffer.from("x") });
    await new Promise((r) => setTimeout(r, 20));
    const text = await scrape(listener.port);
    assert.equal(sample(text, "meb_store_up"), 1);
    assert.equal(sample(text, "meb_queue_depth", { queue: "inbound" }), 1);
    assert.equal(sample(text, "meb_queue_failed_items", { queue: "inbound" }), 1);
    assert.equal(sample(text, "meb_queue_depth", { queue: "outbound" }), 1);
    const age = sample(text, "meb_queue_oldest_age_seconds", { queue: "inbound" })!;
    assert.ok(age >= 0.02 && age < 60, `age ${age}`);
    await store.dropInbound(a.id);
    await store.dropInbound(b.id);
    const after = await scrape(listener.port);
    assert.equal(sample(after, "meb_queue_depth", { queue: "inbound" }), 0);
    assert.equal(sample(after, "meb_queue_oldest_age_seconds", { queue: "inbound" }), 0);
  });

  it("counts inbound posts by result, retries, and the 250 → posted latency (a real InboundPoster)", async () => {
    const matrix = flakyHomeserver();
    const poster = new InboundPoster({
      store,
      matrix,
      ids: IDS,
      botDisplayName: "Email bridge",
      settings: { retryHours: 1, retryBaseMs: 10, retryMaxMs: 20, concurrency: 1, maxTextBytes: 24000 },
      notices: {
        post: async () => {
          throw new Error("no notice should be posted here");
        },
      },
      onUndeliverable: async () => {
        throw new Error("no mail should be undeliverable here");
      },
      onResult: (o) => metrics.inboundPost(o),
      pollMs: 50,
    });
    const { row } = await store.insertInbound(inbound({ messageId: "post@x", contentHash: "post" }));
    assert.equal(await postRow(poster, store, row.id), "posted");
    const text = await scrape(listener.port);
    assert.equal(sample(text, "meb_inbound_posts_total", { result: "retry" }), 1);
    assert.equal(sample(text, "meb_inbound_posts_total", { result: "posted" }), 1);
    assert.equal(sample(text, "meb_inbound_posts_total", { result: "failed" }), 0);
    assert.equal(sample(text, "meb_retries_total", { queue: "inbound" }), 1, "the second attempt was a retry");
    assert.equal(sample(text, "meb_inbound_post_latency_seconds_count"), 1);
    const sum = sample(text, "meb_inbound_post_latency_seconds_sum")!;
    assert.ok(sum > 0 && sum < 30, `latency ${sum}`);
    assert.equal(sample(text, "meb_inbound_post_latency_seconds_bucket", { le: "+Inf" }), 1);
  });

  it("counts outbound deliveries per recipient by result, retries, and the event → 250 latency (a real OutboundQueue)", async () => {
    let attempt = 0;
    const deliver = async (_raw: Buffer, envelope: { from: string; to: string[] }): Promise<DeliveryResult> => {
      attempt++;
      return {
        recipients: envelope.to.map((address) =>
          address.startsWith("bob") || attempt > 1
            ? { address, status: "sent" as const, code: 250, message: "250 2.0.0 OK" }
            : address.startsWith("carol")
              ? { address, status: "temporary" as const, code: 451, message: "451 4.7.1 Greylisted" }
              : { address, status: "permanent" as const, code: 550, message: "550 5.1.1 No such user" },
        ),
      };
    };
    const queue = new OutboundQueue({
      store,
      deliver,
      maxRetryHours: 1,
      delayWarningHours: 0,
      onRecipientsFailed: async () => {},
      onDelayed: async () => {},
      onRecipientResult: (o) => metrics.outboundDelivery(o),
      pollMs: 50,
    });
    // The gauge test's mail is still queued: drop it so only this one is delivered.
    for (const r of await store.listOutbound(null, 10)) await store.dropOutbound(r.id);
    const { row } = await store.enqueueOutbound({
      roomId: "!room:hs.test",
      eventId: "$deliver",
      messageId: "d@bridge.test",
      envelopeFrom: "alice@bridge.test",
      recipients: ["bob@example.org", "carol@example.net", "dave@example.net"],
      raw: Buffer.from("From: alice@bridge.test\r\n\r\nhi\r\n"),
    });
    queue.start();
    try {
      await queue.idle();
      assert.equal((await store.getOutboundById(row.id))?.state, "deferred");
      // `queue retry`: due now; the second attempt delivers to carol.
      assert.equal(await store.requeueOutbound(row.id), true);
      queue.kick();
      for (let i = 0; i < 200 && (await store.getOutboundById(row.id))?.state === "deferred"; i++) await new Promise((r) => setTimeout(r, 25));
      await queue.idle();
    } finally {
      await queue.stop();
    }
    const text = await scrape(listener.port);
    // Attempt 1: bob sent, carol deferred, dave failed. Attempt 2 (bob is done): carol and dave sent.
    assert.equal(sample(text, "meb_outbound_deliveries_total", { result: "sent" }), 3);
    assert.equal(sample(text, "meb_outbound_deliveries_total", { result: "deferred" }), 1);
    assert.equal(sample(text, "meb_outbound_deliveries_total", { result: "failed" }), 1);
    assert.equal(sample(text, "meb_retries_total", { queue: "outbound" }), 2);
    assert.equal(sample(text, "meb_outbound_delivery_latency_seconds_count"), 3);
  });

  it("a store that does not answer: the scrape still works, meb_store_up 0 and no queue samples", async () => {
    const broken = new BridgeMetrics({ processMetrics: false, queueSizes: async () => Promise.reject(new Error("database is locked")) });
    const text = await broken.render();
    assert.equal(sample(text, "meb_store_up"), 0);
    assert.equal(sample(text, "meb_queue_depth", { queue: "inbound" }), null);
    assert.match(text, /^# TYPE meb_queue_depth gauge$/m);
  });

  it("answers 404 elsewhere, 405 to other methods, and HEAD without a body", async () => {
    assert.equal((await get(listener.port, "/")).status, 404);
    assert.equal((await get(listener.port, "/metrics", "POST")).status, 405);
    const head = await get(listener.port, "/metrics", "HEAD");
    assert.equal(head.status, 200);
    assert.equal(head.body, "");
    assert.equal((await get(listener.port, "/metrics?name[]=x")).status, 200, "a query string is ignored");
  });
});

describe("health", () => {
  let dir: string;
  let store: BridgeStore;
  let smtp: SmtpListener<string>;
  let appservice: net.Server;
  let appservicePort: number;
  let listener: MetricsListener;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "meb-health-"));
    store = await openStore({ url: null, sqliteFile: join(dir, "bridge.sqlite") });
    const metrics = new BridgeMetrics({ processMetrics: false, queueSizes: () => store.queueCounts() });
    smtp = smtpListener(metrics);
    await smtp.listen();
    appservice = net.createServer((s) => s.destroy());
    await new Promise<void>((resolve) => appservice.listen(0, "127.0.0.1", resolve));
    appservicePort = (appservice.address() as net.AddressInfo).port;
    listener = await startOperationsListener({
      config: { bind_address: "127.0.0.1", port: 0 },
      metrics,
      store,
      smtp,
      // A wildcard bind address is probed on loopback.
      appservice: { bindAddress: "0.0.0.0", port: appservicePort },
      timeoutMs: 2000,
    });
  });

  after(async () => {
    await listener?.close();
    await smtp?.close();
    if (appservice?.listening) await new Promise((r) => appservice.close(r));
    await store?.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  it("200 with status ok, the checks and the queue sizes when store, SMTP and appservice are up", async () => {
    await store.insertInbound(inbound());
    const r = await get(listener.port, "/health");
    assert.equal(r.status, 200, r.body);
    assert.equal(r.type, "application/json");
    const body = JSON.parse(r.body);
    assert.equal(body.status, "ok");
    assert.deepEqual(body.checks, { store: "ok", smtp: "ok", appservice: "ok" });
    assert.equal(body.queues.inbound.waiting, 1);
    assert.deepEqual(body.queues.outbound, { waiting: 0, oldest_age_seconds: 0, failed: 0 });
    const metrics = await get(listener.port, "/metrics");
    assert.equal(sample(metrics.body, "meb_queue_depth", { queue: "inbound" }), 1, "the same listener serves /metrics");
  });

  it("a port in use: the error names the config keys", async () => {
    const metrics = new BridgeMetrics({ processMetrics: false });
    await assert.rejects(
      startOperationsListener({ config: { bind_address: "127.0.0.1", port: listener.port }, metrics, store, smtp, appservice: { bindAddress: "127.0.0.1", port: appservicePort } }),
      new RegExp(`^Error: the metrics listener cannot listen on 127\\.0\\.0\\.1:${listener.port} \\(metrics\\.bind_address, metrics\\.port\\): .*EADDRINUSE`),
    );
  });

  it("503 naming what is down: the appservice listener, the SMTP listener, then the store", async () => {
    await new Promise((r) => appservice.close(r));
    let r = await get(listener.port, "/health");
    assert.equal(r.status, 503);
    let body = JSON.parse(r.body);
    assert.equal(body.status, "unhealthy");
    assert.equal(body.checks.appservice, `not listening: 127.0.0.1:${appservicePort} ECONNREFUSED`);
    assert.equal(body.checks.smtp, "ok");

    await smtp.close();
    body = JSON.parse((await get(listener.port, "/health")).body);
    assert.equal(body.checks.smtp, "not listening");

    await store.close();
    r = await get(listener.port, "/health");
    assert.equal(r.status, 503);
    body = JSON.parse(r.body);
    assert.match(body.checks.store, /^error: /);
    assert.equal(body.queues, undefined, "no queue sizes without a store");
  });
});
