/**
 * Speed changes nothing about order: 100 mails to one room mailbox over 10 concurrent SMTP
 * connections (group commit on the SQLite store, concurrent posting) appear in the room in
 * the order their 250s were given. What can be observed from outside is causal order: a mail
 * whose 250 arrived before another mail was even handed to the bridge must come first. Each
 * mail appears exactly once. A real Synapse; the bridge in-process on SQLite.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { performance } from "node:perf_hooks";
import SMTPConnection from "nodemailer/lib/smtp-connection";
import { createMailboxRoom, startEnv, MAIL_DOMAIN, type E2eEnv } from "./env.ts";
import type { MatrixEvent, MatrixTestClient } from "../harness/matrixClient.ts";

const BOB = "@email_bob=40example.org:localhost";
const CONNECTIONS = 10;
const PER_CONNECTION = 10;
const TOTAL = CONNECTIONS * PER_CONNECTION;

/** One mail's timeline, as its client saw it (ms, performance clock). */
interface Sent {
  label: string;
  /** Just before MAIL FROM. */
  startedAt: number;
  /** When the 250 after DATA arrived. */
  acceptedAt: number;
}

function connect(port: number): Promise<SMTPConnection> {
  const conn = new SMTPConnection({ host: "127.0.0.1", port, ignoreTLS: true, connectionTimeout: 30_000, socketTimeout: 60_000 });
  return new Promise((resolve, reject) => {
    conn.once("error", reject);
    conn.connect(() => resolve(conn));
  });
}

function send(conn: SMTPConnection, envelope: { from: string; to: string[] }, raw: string): Promise<string> {
  return new Promise((resolve, reject) => conn.send(envelope, raw, (err, info) => (err ? reject(err) : resolve(info.response))));
}

function reset(conn: SMTPConnection): Promise<void> {
  return new Promise((resolve, reject) => conn.reset((err) => (err ? reject(err) : resolve())));
}

describe("per-room order under concurrent SMTP sessions (SQLite store, group commit)", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let roomId: string;

  before(async () => {
    env = await startEnv("sqlite", { allowedUsers: ["@alice:localhost"] });
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    roomId = await createMailboxRoom(alice, "ordered", "Ordered");
  });
  after(async () => {
    await env?.stop();
  });

  it("100 mails from 10 connections appear once each, in the order their 250s were given", async () => {
    const to = `ordered@${MAIL_DOMAIN}`;
    const sent: Sent[] = [];
    await Promise.all(
      Array.from({ length: CONNECTIONS }, async (_, c) => {
        const conn = await connect(env.smtpPort);
        try {
          for (let i = 0; i < PER_CONNECTION; i++) {
            const label = `order-c${c}-m${i}`;
            const raw = [
              "From: Bob <bob@example.org>",
              `To: ${to}`,
              `Subject: ${label}`,
              "Date: Mon, 2 Nov 2026 10:00:00 +0000",
              `Message-ID: <${label}-${Date.now()}@example.org>`,
              "",
              `Mail ${label}.`,
              "",
            ].join("\r\n");
            if (i > 0) await reset(conn);
            const startedAt = performance.now();
            const reply = await send(conn, { from: "bob@example.org", to: [to] }, raw);
            const acceptedAt = performance.now();
            assert.match(reply, /^250 /, label);
            sent.push({ label, startedAt, acceptedAt });
          }
        } finally {
          conn.quit();
        }
      }),
    );
    assert.equal(sent.length, TOTAL);

    // Wait for all of them, then read the room from the start.
    await alice.waitForEvent(roomId, () => true, 60_000);
    const deadline = Date.now() + 120_000;
    let posted: string[] = [];
    while (Date.now() < deadline) {
      const events: MatrixEvent[] = [];
      let from: string | undefined;
      for (let page = 0; page < 10; page++) {
        const res = await alice.request<{ chunk: MatrixEvent[]; end?: string }>("GET", `/rooms/${encodeURIComponent(roomId)}/messages`, undefined, {
          query: { dir: "f", limit: 100, from },
        });
        events.push(...res.chunk);
        if (!res.end || res.chunk.length === 0) break;
        from = res.end;
      }
      posted = events
        .filter((e) => e.type === "m.room.message" && e.sender === BOB)
        .map((e) => /order-c\d+-m\d+/.exec(String(e.content.body))?.[0])
        .filter((l): l is string => l !== undefined);
      if (posted.length >= TOTAL) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.equal(new Set(posted).size, posted.length, "no mail is posted twice");
    assert.equal(posted.length, TOTAL, "every mail answered 250 is in the room");

    const position = new Map(posted.map((label, i) => [label, i]));
    const violations: string[] = [];
    for (const a of sent) {
      for (const b of sent) {
        if (a.acceptedAt < b.startedAt && position.get(a.label)! > position.get(b.label)!) violations.push(`${a.label} (250 first) after ${b.label}`);
      }
    }
    assert.deepEqual(violations.slice(0, 5), [], `${violations.length} mails out of order`);
  });
});
