/**
 * OutboundQueue on the real store (SqlStore on SQLite :memory:), with a fake clock. Deliveries
 * go either through the real deliverMail to loopback SMTP servers (smtp-server) and a fake MX
 * resolver, or through the queue's injectable `deliver` where the SMTP transport is not the subject.
 */
import { describe, it, before, after, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { SMTPServer, type SMTPServerOptions } from "smtp-server";
import type { OutboundConfig } from "../../src/config/schema.ts";
import { deliverMail, type DeliveryResult, type MxResolver, type RecipientOutcome } from "../../src/mail/outbound/deliver.ts";
import type { AddressResolver } from "../../src/mail/outbound/routes.ts";
import {
  OutboundQueue,
  RETRY_BACKOFF_MS,
  retryDelayMs,
  type OutboundQueueOptions,
  type QueuedMail,
  type RecipientReport,
} from "../../src/mail/outbound/OutboundQueue.ts";
import { openSqlite } from "../../src/store/db/sqlite.ts";
import { migrate } from "../../src/store/migrate.ts";
import { MIGRATIONS } from "../../src/store/migrations/index.ts";
import { SqlStore } from "../../src/store/SqlStore.ts";
import type { NewOutbound, OutboundRow } from "../../src/store/Store.ts";
import { configureLogging } from "../../src/util/logger.ts";
import { outboundConfig } from "../harness/outboundConfig.ts";

const MIN = 60_000;
const HOUR = 60 * MIN;
const T0 = 1_700_000_000_000;

/** Log lines (JSON) written during a test. */
const logs: Record<string, unknown>[] = [];
before(() => configureLogging({ format: "json", level: "info", write: (line) => logs.push(JSON.parse(line) as Record<string, unknown>) }));
after(() => configureLogging({ format: "pretty", write: (line) => process.stderr.write(line + "\n") }));

function dnsError(code: string): Error {
  return Object.assign(new Error(`query ${code}`), { code });
}

const sent = (address: string): RecipientOutcome => ({ address, status: "sent", code: 250, message: "250 OK" });
const temp = (address: string): RecipientOutcome => ({ address, status: "temporary", code: 451, message: "451 4.7.1 Greylisted" });
const perm = (address: string): RecipientOutcome => ({ address, status: "permanent", code: 550, message: "550 5.1.1 No such user" });

/** A store on a fresh SQLite :memory: database, a fake clock, and the reports the queue made. */
interface World {
  store: SqlStore;
  now(): number;
  advance(ms: number): void;
  /** Set the clock to `t` (epoch ms). */
  at(t: number): void;
  failures: { mail: QueuedMail; failures: RecipientReport[] }[];
  delays: { mail: QueuedMail; recipients: RecipientReport[]; giveUpAt: number }[];
  /** A queue over the world's store (a "restart" is a second one over the same store). */
  queue(over: Partial<OutboundQueueOptions> & Pick<OutboundQueueOptions, "deliver">): OutboundQueue;
  enqueue(over?: Partial<NewOutbound>): Promise<OutboundRow>;
  row(id: number): Promise<OutboundRow>;
  states(id: number): Promise<Record<string, string>>;
}

let world: World;
const queues: OutboundQueue[] = [];
let seq = 0;

beforeEach(async () => {
  logs.length = 0;
  let now = T0;
  const db = await openSqlite(":memory:");
  await migrate(db);
  const store = new SqlStore(db, { now: () => now });
  const failures: World["failures"] = [];
  const delays: World["delays"] = [];
  world = {
    store,
    now: () => now,
    advance: (ms) => {
      now += ms;
    },
    at: (t) => {
      now = t;
    },
    failures,
    delays,
    queue(over) {
      const q = new OutboundQueue({
        store,
        maxRetryHours: 96,
        delayWarningHours: 4,
        clock: () => now,
        pollMs: HOUR,
        onRecipientsFailed: async (mail, f) => {
          failures.push({ mail, failures: f });
        },
        onDelayed: async (mail, recipients, giveUpAt) => {
          delays.push({ mail, recipients, giveUpAt });
        },
        ...over,
      });
      queues.push(q);
      return q;
    },
    async enqueue(over = {}) {
      seq++;
      const { row } = await store.enqueueOutbound({
        roomId: "!room:hs.test",
        eventId: `$ev${seq}`,
        messageId: `m${seq}@bridge.test`,
        envelopeFrom: "alice@bridge.test",
        recipients: ["bob@example.org"],
        raw: Buffer.from(`Subject: test ${seq}\r\n\r\nhello\r\n`),
        ...over,
      });
      return row;
    },
    async row(id) {
      const r = await store.getOutboundById(id);
      assert.ok(r, `outbound ${id} exists`);
      return r;
    },
    async states(id) {
      return Object.fromEntries((await store.listOutboundRecipients(id)).map((r) => [r.address, r.state]));
    },
  };
});

afterEach(async () => {
  for (const q of queues.splice(0)) await q.stop();
  await world.store.close();
});

/** Run the queue until nothing is due and nothing is in flight. */
async function drain(q: OutboundQueue): Promise<void> {
  q.start();
  q.kick();
  await q.idle();
}

/** A scripted deliver(); records the recipient lists it was called with. */
function scripted(script: (to: string[], call: number) => RecipientOutcome[]) {
  const calls: string[][] = [];
  const deliver = async (_raw: Buffer, envelope: { from: string; to: string[] }): Promise<DeliveryResult> => {
    calls.push([...envelope.to]);
    return { recipients: script(envelope.to, calls.length) };
  };
  return { deliver, calls };
}

// ------------------------------------------------------------------ loopback SMTP

interface Peer {
  server: SMTPServer;
  port: number;
  /** Messages received: envelope recipients and the MAIL FROM. */
  received: { from: string; to: string[] }[];
}

async function startPeer(opts: Partial<SMTPServerOptions>): Promise<Peer> {
  const received: Peer["received"] = [];
  const server = new SMTPServer({
    logger: false,
    authOptional: true,
    disabledCommands: ["AUTH", "STARTTLS"],
    onData(stream, session, callback) {
      stream.on("data", () => {});
      stream.on("end", () => {
        received.push({ from: session.envelope.mailFrom ? session.envelope.mailFrom.address : "", to: session.envelope.rcptTo.map((r) => r.address) });
        callback(null, "Queued as TEST");
      });
    },
    ...opts,
  });
  await new Promise<void>((resolve, reject) => {
    server.server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const addr = server.server.address();
  assert.ok(addr && typeof addr === "object");
  return { server, port: addr.port, received };
}

function stopPeer(p: Peer): Promise<void> {
  return new Promise((resolve) => p.server.close(() => resolve()));
}

function smtpError(code: number, message: string): Error {
  return Object.assign(new Error(message), { responseCode: code });
}

const outboundBase: OutboundConfig = outboundConfig();

/** deliverMail over a static route table and a fake MX (and A/AAAA) resolver: never live DNS. */
function realDeliver(staticRoutes: Record<string, string>, resolver: MxResolver, addressResolver?: AddressResolver) {
  return (raw: Buffer, envelope: { from: string; to: string[] }) =>
    deliverMail(raw, envelope, {
      outbound: { ...outboundBase, static_routes: staticRoutes },
      heloName: "bridge.test",
      resolver,
      ...(addressResolver ? { addressResolver } : {}),
    });
}

const nxResolver: MxResolver = async () => {
  throw dnsError("ENOTFOUND");
};

// ------------------------------------------------------------------ tests

describe("retryDelayMs", () => {
  it("follows 1m, 5m, 15m, 30m, 1h, then 2h capped", () => {
    assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 50].map(retryDelayMs), [MIN, 5 * MIN, 15 * MIN, 30 * MIN, HOUR, 2 * HOUR, 2 * HOUR, 2 * HOUR]);
    assert.equal(retryDelayMs(0), MIN);
    assert.equal(RETRY_BACKOFF_MS.at(-1), 2 * HOUR);
  });
});

describe("OutboundQueue: per-recipient outcomes over SMTP", () => {
  let peer: Peer;
  let greylist = true;
  before(async () => {
    peer = await startPeer({
      onRcptTo(addr, _session, cb) {
        if (addr.address.startsWith("gone@")) cb(smtpError(550, "5.1.1 <gone@example.test>: No such user"));
        else if (addr.address.startsWith("grey@") && greylist) cb(smtpError(451, "4.7.1 Greylisted, try again later"));
        else cb();
      },
    });
  });
  after(() => stopPeer(peer));
  beforeEach(() => {
    greylist = true;
    peer.received.length = 0;
  });

  it("reports a 550 at once while the other recipient is still deferred; a restart neither loses nor repeats it", async () => {
    const deliver = realDeliver({ "example.test": `127.0.0.1:${peer.port}` }, nxResolver);
    const seenAtReport: { row: OutboundRow; states: Record<string, string> }[] = [];
    const q1 = world.queue({
      deliver,
      onRecipientsFailed: async (mail, failures) => {
        seenAtReport.push({ row: await world.row(mail.id), states: await world.states(mail.id) });
        world.failures.push({ mail, failures });
      },
    });
    const row = await world.enqueue({ recipients: ["gone@example.test", "grey@example.test"] });
    await drain(q1);

    assert.equal(world.failures.length, 1, "reported after the first attempt");
    assert.equal(world.failures[0]?.mail.eventId, row.eventId);
    assert.deepEqual(world.failures[0]?.failures, [{ address: "gone@example.test", code: 550, reply: "550 5.1.1 <gone@example.test>: No such user" }]);
    assert.equal(seenAtReport[0]?.row.state, "deferred", "the mail is still being retried when the failure is reported");
    assert.deepEqual(seenAtReport[0]?.states, { "gone@example.test": "failed", "grey@example.test": "deferred" });
    const recipients = await world.store.listOutboundRecipients(row.id);
    assert.deepEqual(
      recipients.map((r) => [r.address, r.state, r.attempts, r.lastCode, r.reported]),
      [
        ["gone@example.test", "failed", 1, 550, true],
        ["grey@example.test", "deferred", 1, 451, false],
      ],
    );
    assert.match(recipients[1]?.lastReply ?? "", /^451 4\.7\.1 Greylisted/);
    assert.deepEqual((await world.row(row.id)).recipients, ["grey@example.test"]);

    // Restart: a new queue over the same store reports nothing again.
    await q1.stop();
    const q2 = world.queue({ deliver });
    await drain(q2);
    assert.equal(world.failures.length, 1, "not repeated after a restart");
    assert.equal((await world.row(row.id)).state, "deferred", "not due yet");

    // The greylisting ends; the retry delivers the other recipient, and the mail is done.
    greylist = false;
    world.advance(MIN);
    q2.kick();
    await q2.idle();
    const done = await world.row(row.id);
    assert.equal(done.state, "bounced", "one recipient failed for good");
    assert.deepEqual(done.recipients, []);
    assert.deepEqual(await world.states(row.id), { "gone@example.test": "failed", "grey@example.test": "sent" });
    assert.deepEqual(peer.received.map((r) => r.to), [["grey@example.test"]]);
    assert.equal(world.failures.length, 1, "reported exactly once");
  });

  it("a failure recorded but not reported (the report threw) is reported by the next process, once", async () => {
    const deliver = realDeliver({ "example.test": `127.0.0.1:${peer.port}` }, nxResolver);
    const q1 = world.queue({
      deliver,
      onRecipientsFailed: async () => {
        throw new Error("homeserver unreachable");
      },
    });
    const row = await world.enqueue({ recipients: ["gone@example.test", "ok@example.test"] });
    await drain(q1);
    assert.equal((await world.row(row.id)).state, "bounced");
    assert.deepEqual(
      (await world.store.listUnreportedOutboundFailures(10)).map((r) => r.address),
      ["gone@example.test"],
      "recorded, not marked reported",
    );
    const logged = logs.filter((l) => l.msg === "reporting failed outbound recipients failed, will retry");
    assert.deepEqual(
      logged.map((l) => [l.level, l.messageId, l.roomId, l.recipients, l.error]),
      [["error", row.messageId, row.roomId, ["gone@example.test"], "homeserver unreachable"]],
    );
    await q1.stop();

    const q2 = world.queue({ deliver });
    await drain(q2);
    assert.equal(world.failures.length, 1);
    assert.deepEqual(world.failures[0]?.failures.map((f) => f.address), ["gone@example.test"]);
    assert.deepEqual(await world.store.listUnreportedOutboundFailures(10), []);
    await q2.stop();

    const q3 = world.queue({ deliver });
    await drain(q3);
    assert.equal(world.failures.length, 1, "not repeated by a third process");
    assert.deepEqual(peer.received.map((r) => r.to), [["ok@example.test"]], "the mail itself went out once");
  });

  it("retries an unreported failure at the next poll within the same process", async () => {
    let fail = true;
    const q = world.queue({
      deliver: scripted((to) => to.map(perm)).deliver,
      onRecipientsFailed: async (mail, failures) => {
        if (fail) throw new Error("homeserver unreachable");
        world.failures.push({ mail, failures });
      },
    });
    const row = await world.enqueue();
    await drain(q);
    assert.equal(world.failures.length, 0);
    fail = false;
    q.kick();
    await q.idle();
    assert.equal(world.failures.length, 0, "not before the poll interval");
    world.advance(HOUR);
    q.kick();
    await q.idle();
    assert.deepEqual(world.failures.map((f) => [f.mail.id, f.failures.map((x) => x.address)]), [[row.id, ["bob@example.org"]]]);
  });
});

describe("OutboundQueue: domains that cannot receive mail", () => {
  it("fails a domain that does not exist (NXDOMAIN) at once, while the other recipient is delivered", async () => {
    const peer = await startPeer({});
    try {
      const q = world.queue({ deliver: realDeliver({ "ok.test": `127.0.0.1:${peer.port}` }, nxResolver) });
      const row = await world.enqueue({ recipients: ["bob@nx.test", "carol@ok.test"] });
      await drain(q);
      assert.deepEqual(world.failures[0]?.failures, [{ address: "bob@nx.test", code: 550, reply: "550 5.1.2 nx.test does not exist (NXDOMAIN)" }]);
      const r = await world.row(row.id);
      assert.equal(r.state, "bounced");
      assert.equal(r.attempts, 1, "not retried");
      assert.deepEqual(await world.states(row.id), { "bob@nx.test": "failed", "carol@ok.test": "sent" });
      assert.deepEqual(peer.received.map((x) => x.to), [["carol@ok.test"]]);
    } finally {
      await stopPeer(peer);
    }
  });

  it("fails a null MX domain at once with 556 5.1.10 (RFC 7505)", async () => {
    const q = world.queue({ deliver: realDeliver({}, async () => [{ exchange: ".", priority: 0 }]) });
    const row = await world.enqueue({ recipients: ["bob@nullmx.test"] });
    await drain(q);
    assert.deepEqual(world.failures[0]?.failures, [{ address: "bob@nullmx.test", code: 556, reply: "556 5.1.10 nullmx.test does not accept mail (null MX)" }]);
    assert.equal((await world.row(row.id)).state, "bounced");
    assert.equal((await world.row(row.id)).attempts, 1);
  });

  it("fails a domain with no MX, A or AAAA records at once", async () => {
    const noData: MxResolver = async () => {
      throw dnsError("ENODATA");
    };
    const noAddress: AddressResolver = async () => {
      throw dnsError("ENODATA");
    };
    const q = world.queue({ deliver: realDeliver({}, noData, noAddress) });
    const row = await world.enqueue({ recipients: ["bob@empty.test"] });
    await drain(q);
    assert.deepEqual(world.failures[0]?.failures, [{ address: "bob@empty.test", code: 550, reply: "550 5.1.2 empty.test has no MX, A or AAAA records" }]);
    assert.equal((await world.row(row.id)).state, "bounced");
  });

  it("defers a SERVFAIL and reports nothing", async () => {
    const q = world.queue({ deliver: realDeliver({}, async () => Promise.reject(dnsError("ESERVFAIL"))) });
    const row = await world.enqueue({ recipients: ["bob@servfail.test"] });
    await drain(q);
    assert.equal(world.failures.length, 0);
    const r = await world.row(row.id);
    assert.equal(r.state, "deferred");
    assert.equal(r.nextAttemptAt, T0 + MIN);
    const [rec] = await world.store.listOutboundRecipients(row.id);
    assert.equal(rec?.state, "deferred");
    assert.equal(rec?.lastCode, 451);
    assert.equal(rec?.lastReply, "451 4.4.3 MX lookup for servfail.test failed (ESERVFAIL)");
  });
});

describe("OutboundQueue: retries and delay warnings", () => {
  it("defers with the documented backoff and retries only when due", async () => {
    const { deliver, calls } = scripted((to, n) => to.map(n < 4 ? temp : sent));
    const q = world.queue({ deliver });
    const row = await world.enqueue();
    for (const delay of [MIN, 5 * MIN, 15 * MIN]) {
      const before = world.now();
      await drain(q);
      const r = await world.row(row.id);
      assert.equal(r.state, "deferred");
      assert.equal(r.nextAttemptAt, before + delay);
      assert.match(r.lastError ?? "", /bob@example\.org: 451 4\.7\.1 Greylisted/);
      const n = calls.length;
      world.advance(delay - 1);
      await drain(q);
      assert.equal(calls.length, n, "not due yet");
      world.advance(1);
    }
    await drain(q);
    assert.equal((await world.row(row.id)).state, "sent");
    assert.equal(calls.length, 4);
    assert.deepEqual(await world.store.listOutboundRecipients(row.id).then((rs) => rs.map((r) => [r.state, r.attempts])), [["sent", 4]]);
    assert.equal(world.failures.length, 0);
  });

  it("gives up after maxRetryHours since the mail was queued and reports it once", async () => {
    const { deliver, calls } = scripted((to) => to.map(temp));
    const q = world.queue({ deliver, maxRetryHours: 3, delayWarningHours: 0 });
    const row = await world.enqueue();
    let passes = 0;
    while ((await world.row(row.id)).state !== "bounced") {
      await drain(q);
      passes++;
      assert.ok(passes < 50, "terminates");
      const r = await world.row(row.id);
      if (r.state === "deferred") world.at(r.nextAttemptAt);
    }
    // Attempts at 0, 1, 6, 21, 51, 111 min; the next (111 + 120) is capped to the 180 min deadline, where it gives up.
    assert.equal(calls.length, 7);
    assert.equal(world.now() - row.createdAt, 3 * HOUR);
    assert.deepEqual(world.failures.map((f) => f.failures), [[{ address: "bob@example.org", code: 451, reply: "gave up after 3 h: 451 4.7.1 Greylisted" }]]);
    world.advance(10 * HOUR);
    await drain(q);
    assert.equal(calls.length, 7, "not delivered again");
    assert.equal(world.failures.length, 1, "not reported again");
  });

  it("warns once when a mail is still deferred past the warning time, and not again after a restart", async () => {
    const { deliver, calls } = scripted((to) => to.map(temp));
    const q1 = world.queue({ deliver, delayWarningHours: 4 });
    const row = await world.enqueue({ recipients: ["bob@example.org", "carol@example.net"] });
    const warnAt = row.createdAt + 4 * HOUR;
    const attemptsAt: number[] = [];
    while (world.now() < warnAt + 5 * HOUR) {
      attemptsAt.push(world.now());
      await drain(q1);
      world.at((await world.row(row.id)).nextAttemptAt);
    }
    assert.ok(attemptsAt.includes(warnAt), "an attempt falls on the warning time");
    assert.equal(world.delays.length, 1, "warned once");
    const d = world.delays[0]!;
    assert.equal(d.mail.id, row.id);
    assert.equal(d.giveUpAt, row.createdAt + 96 * HOUR);
    assert.deepEqual(d.recipients, [
      { address: "bob@example.org", code: 451, reply: "451 4.7.1 Greylisted" },
      { address: "carol@example.net", code: 451, reply: "451 4.7.1 Greylisted" },
    ]);
    assert.equal((await world.row(row.id)).delayWarnedAt, warnAt);
    await q1.stop();

    const q2 = world.queue({ deliver });
    const before = calls.length;
    for (let i = 0; i < 3; i++) {
      await drain(q2);
      world.at((await world.row(row.id)).nextAttemptAt);
    }
    assert.ok(calls.length > before, "the restarted queue kept trying");
    assert.equal(world.delays.length, 1, "not warned again after a restart");
    assert.equal(world.failures.length, 0);
  });

  it("retries a delay warning that threw at the next attempt", async () => {
    let fail = true;
    const { deliver } = scripted((to) => to.map(temp));
    const q = world.queue({
      deliver,
      delayWarningHours: 1 / 60,
      onDelayed: async (mail, recipients, giveUpAt) => {
        if (fail) throw new Error("homeserver unreachable");
        world.delays.push({ mail, recipients, giveUpAt });
      },
    });
    const row = await world.enqueue();
    await drain(q); // t = 0: before the warning time
    world.at((await world.row(row.id)).nextAttemptAt); // 1 min: the warning time
    await drain(q);
    assert.equal(world.delays.length, 0);
    assert.equal((await world.row(row.id)).delayWarnedAt, null);
    fail = false;
    world.at((await world.row(row.id)).nextAttemptAt);
    await drain(q);
    assert.equal(world.delays.length, 1);
    assert.notEqual((await world.row(row.id)).delayWarnedAt, null);
  });

  it("treats a throwing deliver and a missing outcome as temporary", async () => {
    const q = world.queue({
      deliver: async () => {
        throw new Error("boom");
      },
    });
    const row = await world.enqueue();
    await drain(q);
    assert.equal((await world.row(row.id)).state, "deferred");
    assert.match((await world.row(row.id)).lastError ?? "", /boom/);

    const q2 = world.queue({ deliver: async () => ({ recipients: [] }) });
    const row2 = await world.enqueue({ roomId: "!other:hs.test" });
    await drain(q2);
    const r2 = await world.row(row2.id);
    assert.equal(r2.state, "deferred");
    assert.match(r2.lastError ?? "", /no delivery outcome/);
  });

  it("keeps going when the store fails during a pass", async () => {
    const q = world.queue({ deliver: scripted((to) => to.map(sent)).deliver });
    const row = await world.enqueue();
    const orig = world.store.listDueOutbound.bind(world.store);
    let fail = true;
    world.store.listDueOutbound = async (now, limit) => {
      if (fail) throw new Error("database locked");
      return orig(now, limit);
    };
    await drain(q);
    assert.equal((await world.row(row.id)).state, "queued");
    assert.ok(logs.some((l) => l.msg === "worker pass failed" && l.worker === "outbound" && l.error === "database locked"));
    fail = false;
    q.kick();
    await q.idle();
    assert.equal((await world.row(row.id)).state, "sent");
  });
});

describe("OutboundQueue: per-recipient copies (copyFor)", () => {
  it("recipients with a copy go alone with it, the others together with the mail; outcomes are recorded as one attempt", async () => {
    const runs: { raw: string; to: string[] }[] = [];
    const q = world.queue({
      deliver: async (raw, envelope) => {
        runs.push({ raw: raw.toString(), to: [...envelope.to] });
        return { recipients: envelope.to.map((a) => (a === "dave@example.org" ? perm(a) : sent(a))) };
      },
      copyFor: async (_mail, address) => (address === "carol@example.org" ? null : Buffer.from(`copy for ${address}`)),
    });
    const row = await world.enqueue({ recipients: ["bob@example.org", "carol@example.org", "dave@example.org"] });
    await drain(q);
    assert.deepEqual(
      runs.map((r) => `${r.to.join(",")}: ${r.raw.startsWith("copy") ? r.raw : "mail"}`).sort(),
      ["bob@example.org: copy for bob@example.org", "carol@example.org: mail", "dave@example.org: copy for dave@example.org"],
    );
    assert.deepEqual(await world.states(row.id), { "bob@example.org": "sent", "carol@example.org": "sent", "dave@example.org": "failed" });
    assert.equal((await world.row(row.id)).attempts, 1);
    assert.deepEqual(world.failures.map((f) => f.failures.map((x) => x.address)), [["dave@example.org"]]);
  });

  it("a run that throws defers only its own recipients (the accepted ones are not sent again); a copyFor that throws defers all", async () => {
    const q = world.queue({
      deliver: async (raw, envelope) => {
        if (raw.toString() === "copy for bob@example.org") throw new Error("boom");
        return { recipients: envelope.to.map(sent) };
      },
      copyFor: async (_mail, address) => Buffer.from(`copy for ${address}`),
    });
    const row = await world.enqueue({ recipients: ["bob@example.org", "carol@example.org"] });
    await drain(q);
    assert.deepEqual(await world.states(row.id), { "bob@example.org": "deferred", "carol@example.org": "sent" });
    assert.deepEqual((await world.row(row.id)).recipients, ["bob@example.org"]);
    await q.stop();

    const q2 = world.queue({
      deliver: async (_raw, envelope) => ({ recipients: envelope.to.map(sent) }),
      copyFor: async () => {
        throw new Error("cannot sign");
      },
    });
    const row2 = await world.enqueue({ roomId: "!other:hs.test" });
    await drain(q2);
    assert.equal((await world.row(row2.id)).state, "deferred");
    assert.match((await world.row(row2.id)).lastError ?? "", /cannot sign/);
  });
});

describe("OutboundQueue: upgrade", () => {
  it("delivers a mail queued before migration 3 and records its recipients", async () => {
    const db = await openSqlite(":memory:");
    await migrate(db, MIGRATIONS.filter((m) => m.version < 3));
    await db.execute(
      `INSERT INTO outbound_mail (room_id, event_id, message_id, envelope_from, recipients, raw, state, attempts, next_attempt_at, created_at)
       VALUES ($1, $2, $3, $4, $5, $6, 'deferred', 2, $7, $7)`,
      ["!old:hs.test", "$old", "old@bridge.test", "alice@bridge.test", JSON.stringify(["gone@example.org", "ok@example.org"]), Buffer.from("x\r\n"), T0],
    );
    assert.deepEqual((await migrate(db)).applied, MIGRATIONS.filter((m) => m.version >= 3).map((m) => m.version));
    const store = new SqlStore(db, { now: () => T0 });
    const failures: RecipientReport[][] = [];
    const q = new OutboundQueue({
      store,
      deliver: scripted((to) => to.map((a) => (a.startsWith("gone") ? perm(a) : sent(a)))).deliver,
      maxRetryHours: 96,
      delayWarningHours: 4,
      clock: () => T0,
      onRecipientsFailed: async (_mail, f) => {
        failures.push(f);
      },
      onDelayed: async () => assert.fail("no delay"),
    });
    try {
      const [row] = await store.listDueOutbound(T0, 10);
      assert.equal(row?.delayWarnedAt, null);
      assert.deepEqual(await store.listOutboundRecipients(row!.id), [], "no recipient rows before the first attempt");
      await drain(q);
      assert.deepEqual(failures.map((f) => f.map((x) => x.address)), [["gone@example.org"]]);
      assert.equal((await store.getOutboundById(row!.id))?.state, "bounced");
      assert.deepEqual((await store.listOutboundRecipients(row!.id)).map((r) => [r.address, r.state, r.reported]), [
        ["gone@example.org", "failed", true],
        ["ok@example.org", "sent", false],
      ]);
    } finally {
      await q.stop();
      await store.close();
    }
  });
});

describe("OutboundQueue: concurrency", () => {
  it("delivers mails of different rooms at the same time, up to `concurrency` SMTP sessions", async () => {
    // The server holds every DATA until three sessions wait at once (or 3 s passed): a queue
    // that delivered one mail at a time would never fill it. A session counts as active from
    // its connection until its DATA is answered (a delivery is over only after that).
    let active = 0;
    let maxActive = 0;
    const waiting: (() => void)[] = [];
    const release = () => {
      for (const r of waiting.splice(0)) r();
    };
    const peer = await startPeer({
      onConnect(_session, cb) {
        active++;
        maxActive = Math.max(maxActive, active);
        cb();
      },
      onData(stream, session, callback) {
        stream.on("data", () => {});
        stream.on("end", () => {
          peer.received.push({ from: session.envelope.mailFrom ? session.envelope.mailFrom.address : "", to: session.envelope.rcptTo.map((r) => r.address) });
          waiting.push(() => {
            active--;
            callback(null, "Queued");
          });
          if (waiting.length >= 3) release();
        });
      },
    });
    const fallback = setTimeout(release, 3000);
    try {
      const q = world.queue({ deliver: realDeliver({ "example.test": `127.0.0.1:${peer.port}` }, nxResolver), concurrency: 3 });
      const rows: OutboundRow[] = [];
      for (let i = 0; i < 6; i++) rows.push(await world.enqueue({ roomId: `!r${i}:hs.test`, recipients: [`u${i}@example.test`] }));
      await drain(q);
      for (const r of rows) assert.equal((await world.row(r.id)).state, "sent");
      assert.equal(maxActive, 3, "three sessions at once, never more");
      assert.equal(peer.received.length, 6);
    } finally {
      clearTimeout(fallback);
      release();
      await stopPeer(peer);
    }
  });

  it("keeps one delivery per room at a time, in queue order, while rooms go in parallel", async () => {
    const inFlight = new Map<string, number>();
    let maxPerRoom = 0;
    let maxTotal = 0;
    let total = 0;
    const order: string[] = [];
    const gates: (() => void)[] = [];
    const deliver = async (raw: Buffer, envelope: { from: string; to: string[] }): Promise<DeliveryResult> => {
      const room = envelope.from;
      order.push(raw.toString("latin1").split("\r\n")[0]!);
      inFlight.set(room, (inFlight.get(room) ?? 0) + 1);
      total++;
      maxPerRoom = Math.max(maxPerRoom, inFlight.get(room)!);
      maxTotal = Math.max(maxTotal, total);
      // Wait until two deliveries are in flight (or a new round starts) before answering.
      await new Promise<void>((resolve) => {
        gates.push(resolve);
        if (gates.length >= 2) for (const g of gates.splice(0)) g();
        else setTimeout(() => gates.splice(0).forEach((g) => g()), 500);
      });
      inFlight.set(room, inFlight.get(room)! - 1);
      total--;
      return { recipients: envelope.to.map(sent) };
    };
    const q = world.queue({ deliver, concurrency: 8 });
    for (let i = 0; i < 3; i++) {
      for (const room of ["a", "b"]) {
        await world.enqueue({ roomId: `!${room}:hs.test`, envelopeFrom: `${room}@bridge.test`, raw: Buffer.from(`${room}${i}\r\n\r\nx\r\n`) });
      }
    }
    await drain(q);
    assert.equal(maxPerRoom, 1, "one delivery per room at a time");
    assert.equal(maxTotal, 2, "the two rooms in parallel");
    assert.deepEqual(order.filter((o) => o.startsWith("a")), ["a0", "a1", "a2"]);
    assert.deepEqual(order.filter((o) => o.startsWith("b")), ["b0", "b1", "b2"]);
  });

  it("stop() waits for the deliveries in flight", async () => {
    let finish!: () => void;
    const q = world.queue({
      deliver: async (_raw, envelope) => {
        await new Promise<void>((r) => (finish = r));
        return { recipients: envelope.to.map(sent) };
      },
    });
    const row = await world.enqueue();
    q.start();
    while (finish === undefined) await new Promise((r) => setImmediate(r));
    let stopped = false;
    const stopping = q.stop().then(() => (stopped = true));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(stopped, false);
    finish();
    await stopping;
    assert.equal((await world.row(row.id)).state, "sent", "the delivery in flight was recorded");
  });

  it("logs every outcome once with context and never the message", async () => {
    const q = world.queue({ deliver: scripted((to) => to.map((a) => (a.startsWith("gone") ? perm(a) : sent(a)))).deliver });
    const row = await world.enqueue({ recipients: ["gone@example.org", "ok@example.org"], raw: Buffer.from("Subject: secret body\r\n\r\nsecret\r\n") });
    await drain(q);
    const failed = logs.filter((l) => l.msg === "outbound recipient failed permanently");
    assert.deepEqual(
      failed.map((l) => [l.level, l.outboundId, l.messageId, l.roomId, l.recipient, l.code]),
      [["warn", row.id, row.messageId, row.roomId, "gone@example.org", 550]],
    );
    assert.ok(!JSON.stringify(logs).includes("secret"), "never logs the message");
  });
});
