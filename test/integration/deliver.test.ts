/**
 * deliverMail against real SMTP peers on loopback (smtp-server). Several peers share
 * one port on different 127.0.0.x addresses so fake MX records can point at them
 * (MX routes use `mxPort`). No DNS: routes come from static_routes or a fake resolver.
 */
import { describe, it, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession } from "smtp-server";
import type { OutboundConfig } from "../../src/config/schema.ts";
import { composeMail } from "../../src/mail/outbound/compose.ts";
import { generateDkimKey } from "../../src/mail/outbound/dkim.ts";
import { deliverMail, type DeliverOptions, type MxResolver, type RecipientOutcome } from "../../src/mail/outbound/deliver.ts";

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

const outboundBase: OutboundConfig = {
  mode: "direct",
  relay: null,
  static_routes: {},
  helo_name: null,
  require_tls: false,
  timeout_ms: 3000,
  max_retry_hours: 96,
  delay_warning_hours: 4,
  concurrency: 8, max_mails_per_user_per_hour: 0, max_new_recipients_per_user_per_day: 0,
};

describe("deliverMail over loopback SMTP", () => {
  const servers: SMTPServer[] = [];
  let port = 0; // shared port of the 127.0.0.x peers
  let closedPort = 0; // a port nothing listens on (127.0.0.1)
  let relayPort = 0;
  let smallPort = 0; // accepts at most 100 bytes (SIZE, RFC 1870)
  let raw: Buffer;

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
