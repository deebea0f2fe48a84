/**
 * End to end, the bridge's database goes away for a while (PostgreSQL refuses the bridge's
 * database: open connections are ended, new ones refused, as during a restart of the server),
 * with a real Synapse and the bridge in-process:
 *
 * - mail accepted right before is posted once each, though the outage cuts into its
 *   posting (a post whose outcome could not be recorded is made again with the same transaction
 *   ID, which the homeserver deduplicates);
 * - mail offered meanwhile is refused with a temporary reply (4xx), never a 250 the store did
 *   not back, nor a 5xx; resent once the database is back (as an MTA does), it is posted once;
 * - a Matrix message sent meanwhile is refused to Synapse (its transaction is not journaled)
 *   and goes out as one mail soon after the database is back: the bridge asks Synapse for an
 *   appservice ping once it can journal again, which ends Synapse's retry backoff (2 s
 *   doubling up to 512 s) for the transactions it held.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { configureLogging } from "../../src/util/logger.ts";
import { createMailboxRoom, startEnv, MAIL_DOMAIN, type E2eEnv } from "./env.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";
import type { SinkMail } from "../harness/smtpSink.ts";

const BOB = "@email_bob=40example.org:localhost";
/** How long the database stays away: past Synapse's retries at about 2, 6, 14 and 30 s. */
const OUTAGE_MS = 34_000;
/** Mails accepted right before the outage: posting them is cut into. */
const BURST = 20;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Run `sql` on the maintenance database of the server behind `url`. */
async function admin(url: string, sql: string): Promise<void> {
  const u = new URL(url);
  u.pathname = "/postgres";
  const client = new pg.Client({ connectionString: u.toString() });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

describe("store outage: the database goes away and comes back (PostgreSQL store)", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let teamRoom: string;
  let portal: string;
  let dbName: string;
  let dbUrl: string;
  const logs: string[] = [];

  before(async () => {
    env = await startEnv("postgres", { allowedUsers: ["@alice:localhost"], logLevel: "info" });
    configureLogging({
      write: (line) => {
        logs.push(line);
        process.stderr.write(line + "\n");
      },
    });
    dbUrl = env.config.database.url!;
    dbName = new URL(dbUrl).pathname.slice(1);
    alice = await env.synapse.registerUser("alice", { displayName: "Alice Liddell" });
    teamRoom = await createMailboxRoom(alice, "team", "Team");
    portal = await alice.createRoom({ preset: "private_chat", name: "With Bob" });
    await alice.invite(portal, BOB);
    await alice.waitForMembership(portal, BOB, "join");
  });
  after(async () => {
    if (dbName) await admin(dbUrl, `ALTER DATABASE ${dbName} ALLOW_CONNECTIONS true`).catch(() => undefined);
    await env?.stop();
  });

  it("mail gets 4xx while it is away and is posted once when resent; a Matrix message sent meanwhile is mailed once, soon after it is back", async () => {
    const mailsWith = (text: string): SinkMail[] => env.sink.mails.filter((m) => m.rcptTo.includes("bob@example.org") && m.raw.includes(text));
    // Sanity: both directions work before the outage.
    assert.match(await env.sendMail({ from: "Bob <bob@example.org>", to: `team@${MAIL_DOMAIN}`, subject: "before", text: "before the outage" }), /^250 /);
    await alice.waitForEvent(teamRoom, (e) => e.sender === BOB && String(e.content.body).includes("before the outage"), 60_000);
    await alice.sendText(portal, "Hello Bob, before the outage");
    await env.sink.waitForMail((m) => m.rcptTo.includes("bob@example.org") && m.raw.includes("before the outage"), 60_000);

    // A burst whose posting the outage cuts into: each mail that got 250 appears once.
    // Sent at once, so that the last ones are still being posted when the database goes.
    const burst: number[] = [];
    await Promise.all(
      Array.from({ length: BURST }, async (_, n) => {
        assert.match(await env.sendMail({ from: "Bob <bob@example.org>", to: `team@${MAIL_DOMAIN}`, subject: `burst ${n}`, text: `burst body ${n}` }), /^250 /);
        burst.push(n);
      }),
    );

    await admin(dbUrl, `ALTER DATABASE ${dbName} ALLOW_CONNECTIONS false`);
    await admin(dbUrl, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${dbName}' AND pid <> pg_backend_pid()`);
    const downAt = Date.now();
    const logsBefore = logs.length;

    let reply: string;
    try {
      reply = await env.sendMail({ from: "Bob <bob@example.org>", to: `team@${MAIL_DOMAIN}`, subject: "during", text: "during the outage" });
    } catch (err) {
      const e = err as { responseCode?: number; response?: string };
      reply = e.response ?? String(err);
    }
    assert.match(reply, /^451 4\.3\.0 /, "mail is refused with a temporary local failure while the store is away");

    const text = "Hello Bob, sent while the database was away";
    await alice.sendText(portal, text);
    await sleep(Math.max(0, OUTAGE_MS - (Date.now() - downAt)));
    assert.equal(mailsWith(text).length, 0, "nothing could be journaled: no mail yet");
    assert.ok(logs.slice(logsBefore).some((l) => /appservice transaction not recorded/.test(l)), "Synapse's transaction was refused");

    await admin(dbUrl, `ALTER DATABASE ${dbName} ALLOW_CONNECTIONS true`);
    const upAt = Date.now();
    // Synapse retries a refused transaction about 2, 6, 14, 30 and 62 s after the first refusal
    // (synapse/appservice/scheduler.py): left to itself it would send it again only at about
    // 62 s, some 28 s from now.
    const mail = await env.sink.waitForMail((m) => m.rcptTo.includes("bob@example.org") && m.raw.includes(text), 120_000);
    const tookMs = mail.receivedAt - upAt;
    assert.ok(tookMs < 15_000, `the message went out ${tookMs} ms after the database was back; Synapse's own retry would have come about ${62_000 - (upAt - downAt)} ms after`);
    assert.ok(logs.slice(logsBefore).some((l) => /appservice transactions are journaled again.*pings=[1-9]/.test(l)), "the bridge asked for pings until it could journal again");

    // The sending MTA retries the refused mail.
    assert.match(await env.sendMail({ from: "Bob <bob@example.org>", to: `team@${MAIL_DOMAIN}`, subject: "during", text: "during the outage" }), /^250 /);
    await alice.waitForEvent(teamRoom, (e) => e.sender === BOB && String(e.content.body).includes("during the outage"), 60_000);
    await sleep(3000);
    assert.equal(mailsWith(text).length, 1, "the Matrix message was mailed once");
    const events = (await alice.getRoomMessages(teamRoom, { limit: 100 })).reverse();
    assert.equal(events.filter((e) => e.sender === BOB && String(e.content.body).includes("during the outage")).length, 1, "the resent mail was posted once");
    const seen = events.filter((e) => e.sender === BOB && /burst body \d+/.test(String(e.content.body))).map((e) => Number(/burst body (\d+)/.exec(String(e.content.body))![1]));
    // Sent concurrently, their 250s do not order them (test/e2e/ordering.test.ts checks the order).
    assert.deepEqual([...seen].sort((a, b) => a - b), [...burst].sort((a, b) => a - b), "every mail of the burst once");
    assert.deepEqual((await env.bridge.store.listPendingInbound(10)).map((r) => r.id), [], "nothing left in the queue");
  });
});
