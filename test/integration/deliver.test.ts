/**
 * deliverMail against real SMTP peers on loopback (smtp-server). Several peers share
 * one port on different 127.0.0.x addresses so fake MX records can point at them
 * (MX routes use `mxPort`). No DNS: routes come from static_routes or a fake resolver.
 */
import { describe, it, before, after, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession } from "smtp-server";
import type { OutboundConfig } from "../../src/config/schema.ts";
import { composeMail } from "../../src/mail/outbound/compose.ts";
import { generateDkimKey } from "../../src/mail/outbound/dkim.ts";
import { deliverMail, type DeliverOptions, type MxResolver, type RecipientOutcome } from "../../src/mail/outbound/deliver.ts";
import { SmtpPool, type SmtpPoolOptions } from "../../src/mail/outbound/pool.ts";
import { startSmtpSink, type SmtpSink } from "../harness/smtpSink.ts";
import { outboundConfig } from "../harness/outboundConfig.ts";

const HELO = "bridge.mail.example";

interface Received {
  server: string;
  from: string;
  to: string[];
  raw: Buffer;
  helo: string;
  secure: boolean;
}

const received: Received[] = [];

function smtpError(code: number, message: string): Error {
  return Object.assign(new Error(message), { responseCode: code });
}

/** Start an smtp-server on host:port (port 0 = any); resolves with the bound port. */
async function startPeer(name: string, host: string, port: number, opts: Partial<SMTPServerOptions>): Promise<{ server: SMTPServer; port: number }> {
  const server = new SMTPServer({
    logger: false,
    authOptional: true,
    disabledCommands: ["AUTH"],
    onData(stream, session: SMTPServerSession, callback) {
      const chunks: Buffer[] = [];
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        const env = session.envelope;
        received.push({
          server: name,
          from: env.mailFrom ? env.mailFrom.address : "",
          to: env.rcptTo.map((r) => r.address),
          raw: Buffer.concat(chunks),
          helo: session.hostNameAppearsAs,
          secure: session.secure,
        });
        callback(null, "Queued as TEST1");
      });
    },
    ...opts,
  });
  await new Promise<void>((resolve, reject) => {
    server.server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const addr = server.server.address();
  assert.ok(addr && typeof addr === "object");
  return { server, port: addr.port };
}

const outboundBase: OutboundConfig = outboundConfig();

describe("deliverMail over loopback SMTP", () => {
  const servers: SMTPServer[] = [];
  let port = 0; // shared port of the 127.0.0.x peers
  let closedPort = 0; // a port nothing listens on (127.0.0.1)
  let relayPort = 0;
  let smallPort = 0; // accepts at most 100 bytes (SIZE, RFC 1870)
  let raw: Buffer;
  // One pool for the whole suite, as in the bridge: every behaviour below also holds over
  // connections reused from earlier tests.
  const pool = new SmtpPool({ maxConnectionsPerDomain: 4, maxMessagesPerConnection: 100, idleMs: 30_000 });

  // 127.0.0.2 accepts everything; 127.0.0.3 is closed; 127.0.0.4 answers 451 to every RCPT;
  // 127.0.0.5 answers 550 for nobody@..., accepts others; 127.0.0.6 accepts, without STARTTLS.
  const ACCEPT = "127.0.0.2";
  const CLOSED = "127.0.0.3";
  const TEMPFAIL = "127.0.0.4";
  const REJECT = "127.0.0.5";
  const PLAIN = "127.0.0.6";

  before(async () => {
    const accept = await startPeer("accept", ACCEPT, 0, {});
    servers.push(accept.server);
    port = accept.port;
    servers.push(
      (
        await startPeer("tempfail", TEMPFAIL, port, {
          onRcptTo(_addr, _session, cb) {
            cb(smtpError(451, "4.7.1 Greylisted, try again later"));
          },
        })
      ).server,
    );
    servers.push(
      (
        await startPeer("reject", REJECT, port, {
          onRcptTo(addr, _session, cb) {
            if (addr.address.startsWith("nobody")) cb(smtpError(550, "5.1.1 No such user"));
            else cb();
          },
        })
      ).server,
    );
    servers.push((await startPeer("plain", PLAIN, port, { disabledCommands: ["AUTH", "STARTTLS"] })).server);
    const relay = await startPeer("relay", "127.0.0.1", 0, {
      disabledCommands: ["STARTTLS"],
      authOptional: false,
      allowInsecureAuth: true,
      authMethods: ["PLAIN", "LOGIN"],
      onAuth(auth, _session, cb) {
        if (auth.username === "bridge" && auth.password === "s3cret") cb(null, { user: "bridge" });
        else cb(smtpError(535, "5.7.8 Authentication credentials invalid"));
      },
    });
    servers.push(relay.server);
    relayPort = relay.port;
    const small = await startPeer("small", "127.0.0.1", 0, { size: 100 });
    servers.push(small.server);
    smallPort = small.port;
    closedPort = await new Promise<number>((resolve) => {
      const s = createServer();
      s.listen(0, "127.0.0.1", () => {
        const a = s.address();
        s.close(() => resolve(a && typeof a === "object" ? a.port : 0));
      });
    });

    const key = generateDkimKey();
    raw = await composeMail(
      {
        from: { name: "Bob Ünal", address: "bob@mail.example" },
        to: [{ name: "Alice", address: "alice@accept.example" }],
        subject: "Grüße",
        text: "Hello\n.leading dot line\n..two dots\n.\nend\n",
        html: "<p>Hello</p>",
        messageId: "deliver-test.1@mail.example",
        inReplyTo: null,
        references: [],
        date: new Date(),
      },
      { domainName: "mail.example", keySelector: "meb", privateKey: key.privateKeyPem },
    );
  });

  after(async () => {
    pool.close();
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  });

  beforeEach(() => {
    received.length = 0;
  });

  /** MX table for the fake resolver: each domain points at loopback peers. */
  const mx: Record<string, { exchange: string; priority: number }[]> = {
    "accept.example": [{ exchange: ACCEPT, priority: 10 }],
    "fallback.example": [
      { exchange: TEMPFAIL, priority: 20 },
      { exchange: CLOSED, priority: 10 },
      { exchange: ACCEPT, priority: 30 },
    ],
    "reject-first.example": [
      { exchange: REJECT, priority: 10 },
      { exchange: ACCEPT, priority: 20 },
    ],
    "alltemp.example": [
      { exchange: CLOSED, priority: 10 },
      { exchange: TEMPFAIL, priority: 20 },
    ],
    "plain.example": [{ exchange: PLAIN, priority: 10 }],
    "nullmx.example": [{ exchange: "", priority: 0 }],
  };
  const resolver: MxResolver = async (domain) => {
    if (domain === "servfail.example") throw Object.assign(new Error("queryMx ESERVFAIL"), { code: "ESERVFAIL" });
    const v = mx[domain];
    if (!v) throw Object.assign(new Error("queryMx ENOTFOUND"), { code: "ENOTFOUND" });
    return v;
  };

  const opts = (over: Partial<OutboundConfig> = {}): DeliverOptions => ({
    outbound: { ...outboundBase, ...over },
    heloName: HELO,
    resolver,
    mxPort: port,
    shuffle: (x) => x,
    pool,
  });

  const byAddress = (rs: RecipientOutcome[]) => new Map(rs.map((r) => [r.address, r]));

  it("delivers through a static route; the peer receives the message byte-identical, over STARTTLS", async () => {
    const res = await deliverMail(raw, { from: "bob@mail.example", to: ["alice@static.example"] }, opts({ static_routes: { "static.example": `${ACCEPT}:${port}` } }));
    assert.equal(res.recipients.length, 1);
    const r = res.recipients[0];
    assert.equal(r?.status, "sent", r?.message);
    assert.equal(r?.code, 250);
    assert.equal(r?.host, `${ACCEPT}:${port}`);
    assert.equal(received.length, 1);
    const got = received[0];
    assert.equal(got?.server, "accept");
    assert.equal(got?.from, "bob@mail.example");
    assert.deepEqual(got?.to, ["alice@static.example"]);
    assert.equal(got?.helo, HELO);
    assert.equal(got?.secure, true, "opportunistic STARTTLS with an unverified certificate");
    assert.ok(got && Buffer.compare(got.raw, raw) === 0, "raw arrives byte-identical (dot-stuffing undone)");
  });

  it("delivers via MX records (fake resolver)", async () => {
    const res = await deliverMail(raw, { from: "bob@mail.example", to: ["alice@accept.example", "carol@accept.example"] }, opts());
    assert.deepEqual(res.recipients.map((r) => r.status), ["sent", "sent"]);
    assert.equal(received.length, 1, "one transaction for one domain");
    assert.deepEqual(received[0]?.to, ["alice@accept.example", "carol@accept.example"]);
  });

  it("reports a 550 recipient as permanent and still delivers to the others", async () => {
    const res = await deliverMail(
      raw,
      { from: "bob@mail.example", to: ["ok@r.example", "nobody@r.example"] },
      opts({ static_routes: { "r.example": `${REJECT}:${port}` } }),
    );
    const m = byAddress(res.recipients);
    assert.equal(m.get("ok@r.example")?.status, "sent");
    const bad = m.get("nobody@r.example");
    assert.equal(bad?.status, "permanent");
    assert.equal(bad?.code, 550);
    assert.equal(bad?.enhancedStatus, "5.1.1");
    assert.match(bad?.message ?? "", /No such user/);
    assert.deepEqual(received.map((x) => x.to), [["ok@r.example"]]);
  });

  it("reports all recipients permanent when every RCPT gets 550", async () => {
    const res = await deliverMail(raw, { from: "bob@mail.example", to: ["nobody@r.example", "nobody2@r.example"] }, opts({ static_routes: { "r.example": `${REJECT}:${port}` } }));
    assert.deepEqual(res.recipients.map((r) => [r.status, r.code]), [
      ["permanent", 550],
      ["permanent", 550],
    ]);
    assert.equal(received.length, 0);
  });

  it("reports 451 as temporary", async () => {
    const res = await deliverMail(raw, { from: "bob@mail.example", to: ["a@t.example"] }, opts({ static_routes: { "t.example": `${TEMPFAIL}:${port}` } }));
    const r = res.recipients[0];
    assert.equal(r?.status, "temporary");
    assert.equal(r?.code, 451);
    assert.equal(r?.enhancedStatus, "4.7.1");
  });

  it("refuses a message over the peer's announced SIZE permanently, before DATA (RFC 1870)", async () => {
    const res = await deliverMail(raw, { from: "bob@mail.example", to: ["a@small.example"] }, opts({ static_routes: { "small.example": `127.0.0.1:${smallPort}` } }));
    const r = res.recipients[0];
    assert.equal(r?.status, "permanent");
    assert.equal(r?.code, 552);
    assert.equal(r?.enhancedStatus, "5.3.4");
    assert.equal(received.length, 0);
  });

  it("reports a closed port as temporary", async () => {
    const res = await deliverMail(raw, { from: "bob@mail.example", to: ["a@closed.example"] }, opts({ static_routes: { "closed.example": `127.0.0.1:${closedPort}` } }));
    const r = res.recipients[0];
    assert.equal(r?.status, "temporary");
    assert.equal(r?.code, undefined);
    assert.match(r?.message ?? "", /ECONNREFUSED|ESOCKET/);
  });

  it("falls back over MX hosts in priority order: closed, then 451, then accepted", async () => {
    const res = await deliverMail(raw, { from: "bob@mail.example", to: ["x@fallback.example"] }, opts());
    const r = res.recipients[0];
    assert.equal(r?.status, "sent", r?.message);
    assert.equal(r?.host, `${ACCEPT}:${port}`);
    assert.equal(received.length, 1);
    assert.equal(received[0]?.server, "accept");
    assert.ok(received[0] && Buffer.compare(received[0].raw, raw) === 0);
  });

  it("does not try the next MX after a 5xx", async () => {
    const res = await deliverMail(raw, { from: "bob@mail.example", to: ["nobody@reject-first.example", "ok@reject-first.example"] }, opts());
    const m = byAddress(res.recipients);
    assert.equal(m.get("nobody@reject-first.example")?.status, "permanent");
    assert.equal(m.get("ok@reject-first.example")?.host, `${REJECT}:${port}`);
    assert.deepEqual(received.map((x) => x.server), ["reject"], "the backup MX saw nothing");
  });

  it("keeps the last temporary outcome when every MX fails", async () => {
    const res = await deliverMail(raw, { from: "bob@mail.example", to: ["x@alltemp.example"] }, opts());
    const r = res.recipients[0];
    assert.equal(r?.status, "temporary");
    assert.equal(r?.code, 451);
    assert.equal(r?.host, `${TEMPFAIL}:${port}`);
  });

  it("groups recipients by domain and gives each domain its own outcome", async () => {
    const res = await deliverMail(
      raw,
      { from: "bob@mail.example", to: ["a@accept.example", "b@nullmx.example", "c@servfail.example", "d@r.example", "a@accept.example", "broken"] },
      opts({ static_routes: { "r.example": `${REJECT}:${port}` } }),
    );
    assert.deepEqual(
      res.recipients.map((r) => [r.address, r.status, r.code]),
      [
        ["a@accept.example", "sent", 250],
        ["b@nullmx.example", "permanent", 556],
        ["c@servfail.example", "temporary", 451],
        ["d@r.example", "sent", 250],
        ["broken", "permanent", 553],
      ],
    );
    assert.deepEqual(received.map((x) => [x.server, x.to]).sort(), [
      ["accept", ["a@accept.example"]],
      ["reject", ["d@r.example"]],
    ]);
  });

  it("require_tls: a peer without STARTTLS is a temporary failure; without require_tls it gets plaintext", async () => {
    const strict = await deliverMail(raw, { from: "bob@mail.example", to: ["a@plain.example"] }, opts({ require_tls: true }));
    assert.equal(strict.recipients[0]?.status, "temporary");
    assert.equal(received.length, 0);
    const lax = await deliverMail(raw, { from: "bob@mail.example", to: ["a@plain.example"] }, opts());
    assert.equal(lax.recipients[0]?.status, "sent");
    assert.equal(received[0]?.secure, false);
  });

  it("relay mode authenticates and sends everything to the relay; bad credentials are temporary", async () => {
    const relay = { host: "127.0.0.1", port: relayPort, secure: false, username: "bridge", password: "s3cret" };
    const res = await deliverMail(raw, { from: "bob@mail.example", to: ["a@one.example", "b@two.example"] }, opts({ mode: "relay", relay }));
    assert.deepEqual(res.recipients.map((r) => r.status), ["sent", "sent"]);
    assert.deepEqual(received.map((x) => x.server), ["relay", "relay"]);

    const bad = await deliverMail(raw, { from: "bob@mail.example", to: ["a@one.example"] }, opts({ mode: "relay", relay: { ...relay, password: "wrong" } }));
    assert.equal(bad.recipients[0]?.status, "temporary", "an auth failure is our config problem: retry, do not bounce");
    assert.equal(bad.recipients[0]?.code, 535);
  });
});

describe("deliverMail over pooled connections (pool.ts)", () => {
  const message = (n: number): Buffer => Buffer.from(`From: bob@mail.example\r\nTo: x@pool.example\r\nSubject: pooled ${n}\r\nMessage-ID: <pool.${n}@mail.example>\r\n\r\nmail ${n}\r\n`);
  const limits: SmtpPoolOptions = { maxConnectionsPerDomain: 4, maxMessagesPerConnection: 100, idleMs: 30_000 };
  let sink: SmtpSink;
  let pool: SmtpPool | null = null;
  /** Extra servers a test started, stopped after it. */
  const cleanup: (() => Promise<void>)[] = [];

  beforeEach(async () => {
    sink = await startSmtpSink(0, { closeTimeoutMs: 200 });
  });

  afterEach(async () => {
    pool?.close();
    pool = null;
    await sink.stop();
    for (const c of cleanup.splice(0)) await c();
  });

  /** Pool and deliver options towards the sink: every domain in `domains` is static-routed to it. */
  function setup(over: Partial<SmtpPoolOptions> = {}, domains = ["pool.example"]): DeliverOptions {
    pool = new SmtpPool({ ...limits, ...over });
    return {
      outbound: { ...outboundBase, static_routes: Object.fromEntries(domains.map((d) => [d, `127.0.0.1:${sink.port}`])) },
      heloName: HELO,
      resolver: async () => {
        throw Object.assign(new Error("no DNS in this test"), { code: "ENOTFOUND" });
      },
      pool,
    };
  }

  const send = (o: DeliverOptions, n: number, to = ["x@pool.example"]) => deliverMail(message(n), { from: "bob@mail.example", to }, o);

  /** Poll `cond` every 10 ms; throws after `timeoutMs`. */
  async function until(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  it("delivers 20 mails one after another over far fewer connections than mails", async () => {
    const o = setup();
    for (let n = 0; n < 20; n++) {
      const res = await send(o, n);
      assert.equal(res.recipients[0]?.status, "sent", res.recipients[0]?.message);
    }
    assert.equal(sink.mails.length, 20);
    assert.ok(sink.connections.accepted <= limits.maxConnectionsPerDomain, `${sink.connections.accepted} connections for 20 mails`);
    assert.equal(sink.connections.accepted, 1, "one after another, one connection is enough");
    assert.deepEqual(new Set(sink.mails.map((m) => m.connection)), new Set([1]));
    assert.ok(sink.mails.every((m, i) => m.raw.toString().includes(`mail ${i}`)), "in order, each mail intact");
  });

  it("sends three recipients at one domain in one transaction with three RCPTs", async () => {
    const o = setup();
    const to = ["a@pool.example", "b@pool.example", "c@pool.example"];
    const res = await send(o, 1, to);
    assert.deepEqual(res.recipients.map((r) => r.status), ["sent", "sent", "sent"]);
    assert.equal(sink.mails.length, 1, "one transaction");
    assert.deepEqual(sink.mails[0]?.rcptTo, to);
  });

  it("keeps per-recipient outcomes on a reused connection: a refused RCPT, then the next mail", async () => {
    const o = setup();
    assert.equal((await send(o, 1)).recipients[0]?.status, "sent");
    sink.refuse.set("nobody@pool.example", { code: 550, message: "5.1.1 No such user" });
    const res = await send(o, 2, ["ok@pool.example", "nobody@pool.example"]);
    assert.deepEqual(res.recipients.map((r) => [r.status, r.code, r.enhancedStatus]), [
      ["sent", 250, undefined],
      ["permanent", 550, "5.1.1"],
    ]);
    const allRefused = await send(o, 3, ["nobody@pool.example"]);
    assert.equal(allRefused.recipients[0]?.status, "permanent");
    assert.equal((await send(o, 4)).recipients[0]?.status, "sent");
    // After a refused envelope the connection is reset (RSET) and reused; a mail sent before
    // the RSET reply came may get a second connection meanwhile.
    assert.ok(sink.connections.accepted <= 2, `${sink.connections.accepted} connections`);
  });

  it("never has more than max_connections_per_domain connections to one destination, with 30 deliveries at once", async () => {
    const o = setup();
    const results = await Promise.all(Array.from({ length: 30 }, (_, n) => send(o, n)));
    assert.ok(results.every((r) => r.recipients[0]?.status === "sent"));
    assert.equal(sink.mails.length, 30);
    assert.ok(sink.connections.maxOpen <= limits.maxConnectionsPerDomain, `max ${sink.connections.maxOpen} connections at once`);
    assert.ok(sink.connections.maxOpen >= 2, "deliveries do run in parallel");
    assert.ok(sink.connections.accepted <= limits.maxConnectionsPerDomain, `${sink.connections.accepted} connections in all`);
  });

  it("shares one destination's limit between recipient domains that go to the same host", async () => {
    const domains = Array.from({ length: 30 }, (_, n) => `d${n}.example`);
    const o = setup({ maxConnectionsPerDomain: 2 }, domains);
    const results = await Promise.all(domains.map((d, n) => send(o, n, [`x@${d}`])));
    assert.ok(results.every((r) => r.recipients[0]?.status === "sent"));
    assert.ok(sink.connections.maxOpen <= 2, `max ${sink.connections.maxOpen} connections at once`);
  });

  it("limits transactions in flight per recipient domain across its MX hosts", async () => {
    // Two equal-priority MX hosts; every other delivery tries the second one first.
    let active = 0;
    let maxActive = 0;
    const hosts = ["127.0.0.7", "127.0.0.8"];
    const byHost = new Map<string, number>();
    const peer = (host: string): Partial<SMTPServerOptions> => ({
      onMailFrom(_a, _s, cb) {
        active++;
        maxActive = Math.max(maxActive, active);
        cb();
      },
      onData(stream, _session, cb) {
        stream.resume();
        stream.on("end", () => {
          byHost.set(host, (byHost.get(host) ?? 0) + 1);
          // Hold the transaction a little so concurrent ones overlap.
          setTimeout(() => {
            active--;
            cb();
          }, 20);
        });
      },
    });
    const first = await startPeer("mx7", hosts[0]!, 0, { ...peer(hosts[0]!), closeTimeout: 200 });
    const second = await startPeer("mx8", hosts[1]!, first.port, { ...peer(hosts[1]!), closeTimeout: 200 });
    for (const p of [first, second]) cleanup.push(() => new Promise<void>((r) => p.server.close(() => r())));
    const o = setup({ maxConnectionsPerDomain: 2 });
    let calls = 0;
    const opts: DeliverOptions = {
      ...o,
      resolver: async () => hosts.map((exchange) => ({ exchange, priority: 10 })),
      mxPort: first.port,
      shuffle: (x) => (calls++ % 2 === 0 ? x : [...x].reverse()),
    };
    const results = await Promise.all(Array.from({ length: 20 }, (_, n) => send(opts, n, ["x@twomx.example"])));
    assert.ok(results.every((r) => r.recipients[0]?.status === "sent"));
    assert.equal(byHost.get(hosts[0]!), 10);
    assert.equal(byHost.get(hosts[1]!), 10);
    assert.ok(maxActive <= 2, `${maxActive} transactions for twomx.example at once, over both hosts`);
    assert.equal(maxActive, 2);
  });

  it("replaces a connection the server dropped: the next delivery opens a fresh one", async () => {
    const o = setup();
    assert.equal((await send(o, 1)).recipients[0]?.status, "sent");
    assert.equal(sink.dropConnections(), 1);
    await until(() => sink.connections.open === 0, "the drop");
    await new Promise((r) => setTimeout(r, 50));
    const res = await send(o, 2);
    assert.equal(res.recipients[0]?.status, "sent", res.recipients[0]?.message);
    assert.equal(sink.connections.accepted, 2);
  });

  it("survives a drop it has not noticed yet (the message goes out again on a fresh connection)", async () => {
    const o = setup();
    assert.equal((await send(o, 1)).recipients[0]?.status, "sent");
    sink.dropConnections();
    const res = await send(o, 2);
    assert.equal(res.recipients[0]?.status, "sent", res.recipients[0]?.message);
    assert.equal(sink.mails.length, 2);
  });

  it("a 421 on a reused connection (RFC 5321 §3.8) drops it and the mail goes out on a fresh one", async () => {
    const o = setup();
    assert.equal((await send(o, 1)).recipients[0]?.status, "sent");
    sink.refuseMailFrom.push({ code: 421, message: "4.3.2 Closing connection, try again" });
    const res = await send(o, 2);
    assert.equal(res.recipients[0]?.status, "sent", res.recipients[0]?.message);
    assert.equal(sink.connections.accepted, 2);
    assert.equal(sink.mails.length, 2);
    assert.deepEqual(sink.mails.map((m) => m.connection), [1, 2]);
  });

  it("a 421 on a fresh connection is a temporary outcome, and the delivery after it succeeds", async () => {
    const o = setup();
    sink.refuseMailFrom.push({ code: 421, message: "4.3.2 Too busy, closing" });
    const busy = await send(o, 1);
    assert.equal(busy.recipients[0]?.status, "temporary");
    assert.equal(busy.recipients[0]?.code, 421);
    assert.equal(busy.recipients[0]?.enhancedStatus, "4.3.2");
    const res = await send(o, 2);
    assert.equal(res.recipients[0]?.status, "sent", res.recipients[0]?.message);
  });

  it("delivers again after the remote server restarted", async () => {
    const o = setup();
    assert.equal((await send(o, 1)).recipients[0]?.status, "sent");
    const port = sink.port;
    // smtp-server answers the idle pooled connection 421 and closes it when it stops.
    await sink.stop();
    sink = await startSmtpSink(port, { closeTimeoutMs: 200 });
    const res = await send(o, 2);
    assert.equal(res.recipients[0]?.status, "sent", res.recipients[0]?.message);
    assert.equal(sink.mails.length, 1);
  });

  it("opens a new connection after max_messages_per_connection transactions", async () => {
    const o = setup({ maxMessagesPerConnection: 3 });
    for (let n = 0; n < 7; n++) assert.equal((await send(o, n)).recipients[0]?.status, "sent");
    assert.equal(sink.connections.accepted, 3);
    assert.deepEqual(sink.mails.map((m) => m.connection), [1, 1, 1, 2, 2, 2, 3]);
  });

  it("closes connections idle for pool_idle_ms, then forgets the destination; the next delivery reconnects", async () => {
    const o = setup({ idleMs: 200 });
    assert.equal((await send(o, 1)).recipients[0]?.status, "sent");
    const sentAt = Date.now();
    assert.equal(sink.connections.open, 1, "kept open after the delivery");
    await until(() => sink.connections.open === 0, "the idle close", 3000);
    assert.ok(Date.now() - sentAt >= 150, `closed after ${Date.now() - sentAt} ms, not before the idle time`);
    await until(() => pool?.stats().destinations === 0, "the destination to be dropped", 3000);
    assert.equal((await send(o, 2)).recipients[0]?.status, "sent");
    assert.equal(sink.connections.accepted, 2);
  });

  it("close() closes every connection and later deliveries are temporary failures", async () => {
    const o = setup();
    await Promise.all([send(o, 1), send(o, 2), send(o, 3)]);
    assert.ok(sink.connections.open >= 1);
    pool?.close();
    await until(() => sink.connections.open === 0, "the connections to close");
    const res = await send(o, 4);
    assert.equal(res.recipients[0]?.status, "temporary");
    assert.match(res.recipients[0]?.message ?? "", /closed/);
  });

  it("without a pool, each call uses connections of its own and closes them", async () => {
    const o = { ...setup() };
    delete o.pool;
    assert.equal((await send(o, 1)).recipients[0]?.status, "sent");
    await until(() => sink.connections.open === 0, "the connection to close");
    assert.equal((await send(o, 2)).recipients[0]?.status, "sent");
    assert.equal(sink.connections.accepted, 2);
  });
});
