/**
 * A crash between Synapse's appservice transaction and the outbound commit loses nothing and
 * sends nothing twice. The bridge runs as a real process (`node src/main.ts start`) on the
 * embedded SQLite store, with a test failpoint (src/matrix/failpoint.ts) that SIGKILLs it:
 *
 * 1. `after-journal-commit`: the transaction is journaled, not yet answered (Synapse retries it);
 * 2. `after-txn-ack`: the transaction is answered 200 (Synapse never sends it again): the
 *    window where the bridge used to lose the message.
 *
 * After a restart without the failpoint, the sink gets exactly one mail per message, and a
 * replay of the transaction (same txn ID, sent directly with the hs_token) or of the event
 * (in a new transaction) sends none.
 *
 * And a message sent while no bridge runs goes out right after the restart: the bridge's
 * start-up appservice ping makes Synapse retry what it held at once, not after its backoff.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import { prepareEnv, type PreparedEnv } from "./env.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";
import type { SinkMail } from "../harness/smtpSink.ts";
import { openStore } from "../../src/store/open.ts";

const BOB_GHOST = "@email_bob=40example.org:localhost";

/** Every bridge process started, killed at the end whatever happened. */
const children: ChildProcess[] = [];

interface BridgeProcess {
  child: ChildProcess;
  output: () => string;
  /** Resolves with the exit signal (or `code <n>`) once the process has exited. */
  exited: Promise<string>;
}

/** Start `node src/main.ts start -c <config>` with `extraEnv` and wait for its "bridge started" line. */
function spawnBridge(configFile: string, extraEnv: Record<string, string> = {}): Promise<BridgeProcess> {
  const main = new URL("../../src/main.ts", import.meta.url).pathname;
  // NODE_TEST_CONTEXT would make the child behave as a test-runner subprocess.
  const { NODE_TEST_CONTEXT: _, MEB_FAILPOINT: __, ...parentEnv } = process.env;
  const child = spawn(process.execPath, [main, "start", "-c", configFile], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...parentEnv, MEB_LOG_LEVEL: "info", ...extraEnv },
  });
  children.push(child);
  let out = "";
  const exited = new Promise<string>((resolve) => child.once("exit", (code, signal) => resolve(signal ?? `code ${code}`)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`bridge did not start within 30 s:\n${out}`)), 30_000);
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      if (/bridge started/.test(out)) {
        clearTimeout(timer);
        resolve({ child, output: () => out, exited });
      }
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    void exited.then((how) => {
      clearTimeout(timer);
      reject(new Error(`bridge exited (${how}) before starting:\n${out}`));
    });
  });
}

/** Stop a bridge gracefully (SIGTERM) and wait for it. */
async function stopBridge(b: BridgeProcess): Promise<void> {
  b.child.kill("SIGTERM");
  assert.equal(await b.exited, "code 0", b.output());
}

/** Wait for `p` at most `ms`, else fail with `what`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("appservice transactions: SIGKILL between the transaction and the outbound commit (SQLite, bridge as a process)", () => {
  let env: PreparedEnv;
  let alice: MatrixTestClient;
  let roomId: string;
  let hsToken: string;
  let asUrl: string;

  /** Mails to bob whose body carries `text`. */
  const mailsWith = (text: string): SinkMail[] => env.sink.mails.filter((m) => m.rcptTo.includes("bob@example.org") && m.raw.includes(text));

  /** The journal row of `eventId`, read from the bridge's database while no bridge runs. */
  async function journalRow(eventId: string) {
    const store = await openStore({ url: null, sqliteFile: env.config.database.sqlite_file });
    try {
      return { event: await store.getMatrixEvent(eventId), outbound: await store.getOutboundByEvent(eventId) };
    } finally {
      await store.close();
    }
  }

  /** PUT a transaction to the bridge as Synapse would, with the registration's hs_token. */
  async function putTransaction(txnId: string, events: unknown[]): Promise<number> {
    const res = await fetch(`${asUrl}/_matrix/app/v1/transactions/${encodeURIComponent(txnId)}`, {
      method: "PUT",
      headers: { authorization: `Bearer ${hsToken}`, "content-type": "application/json" },
      body: JSON.stringify({ events }),
    });
    await res.arrayBuffer();
    return res.status;
  }

  /**
   * Run one crash scenario: a bridge with `failpoint` armed dies when `text` is sent; a restart
   * sends exactly one mail; replays send none.
   */
  async function crashScenario(failpoint: string, text: string, replayTxnId: string): Promise<void> {
    const doomed = await spawnBridge(env.configFile, { MEB_FAILPOINT: failpoint });
    assert.match(doomed.output(), /test failpoint armed/);
    const eventId = await alice.sendText(roomId, text);
    // Synapse may still be backing off from an earlier crash: give it time to send.
    const how = await within(doomed.exited, 90_000, `the bridge to die at ${failpoint}`);
    assert.equal(how, "SIGKILL", `the bridge did not die by SIGKILL:\n${doomed.output()}`);
    assert.match(doomed.output(), new RegExp(`failpoint reached.*${failpoint}`));
    assert.equal(mailsWith(text).length, 0, "nothing was sent before the kill");

    // The event is journaled, not handled; no outbound mail was committed.
    const before = await journalRow(eventId);
    assert.equal(before.event?.state, "pending", "journaled before the crash");
    assert.equal(before.outbound, null, "no outbound commit before the crash");
    const txnId = before.event!.txnId;

    const restarted = await spawnBridge(env.configFile);
    try {
      await env.sink.waitForMail((m) => m.rcptTo.includes("bob@example.org") && m.raw.includes(text), 60_000);
      // Give a duplicate the time to show up.
      await sleep(3000);
      assert.equal(mailsWith(text).length, 1, "exactly one mail after the restart");

      // A replay of the same transaction, then of the same event in a new transaction.
      const event = await alice.request("GET", `/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}`);
      assert.equal(event.event_id, eventId);
      assert.equal(await putTransaction(txnId, [event]), 200, "replayed transaction answered 200");
      assert.equal(await putTransaction(replayTxnId, [event]), 200, "replayed event answered 200");
      await sleep(3000);
      assert.equal(mailsWith(text).length, 1, "a replay sends no second mail");
    } finally {
      await stopBridge(restarted);
    }
    const afterRun = await journalRow(eventId);
    assert.equal(afterRun.event?.state, "done");
    assert.equal(afterRun.event?.txnId, txnId, "the replays recorded nothing new");
    assert.ok(afterRun.outbound, "one outbound row, keyed by the event ID");
  }

  before(async () => {
    env = await prepareEnv("sqlite", { allowedUsers: ["@alice:localhost"], logLevel: "info" });
    const registration = parseYaml(readFileSync(env.config.appservice.registration_file, "utf8")) as { hs_token: string };
    hsToken = registration.hs_token;
    asUrl = `http://${env.config.appservice.bind_address}:${env.config.appservice.port}`;
    alice = await env.synapse.registerUser("alice", { displayName: "Alice Liddell" });
    // A portal with bob's ghost, made by a bridge without failpoint, which then stops cleanly.
    const setup = await spawnBridge(env.configFile);
    try {
      roomId = await alice.createRoom({ preset: "private_chat", name: "Crash course" });
      await alice.invite(roomId, BOB_GHOST);
      await alice.waitForMembership(roomId, BOB_GHOST, "join");
      await alice.waitForMembership(roomId, "@emailbot:localhost", "join");
      // Let Synapse push the echo of those joins to this bridge before it stops.
      await sleep(2000);
    } finally {
      await stopBridge(setup);
    }
  });

  after(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    await env?.stop();
  });

  it("SIGKILL right after the journal commit, before the 200: one mail after the restart, none on replay", async () => {
    await crashScenario("after-journal-commit", "Crash-proof hello, before the answer", "meb-e2e-replay-1");
  });

  it("SIGKILL right after the 200, before handling (Synapse never resends): one mail after the restart, none on replay", async () => {
    await crashScenario("after-txn-ack", "Crash-proof hello, after the answer", "meb-e2e-replay-2");
  });

  it("a message sent while the bridge is down goes out right after its restart (the start-up ping ends Synapse's backoff)", async () => {
    const text = "Sent while the bridge was away";
    await alice.sendText(roomId, text);
    const sentAt = Date.now();
    // Synapse's recoverer (synapse/appservice/scheduler.py) retries 2 s after the failed push,
    // then 4 s and 8 s after each failure: at about 2, 6, 14 and 30 s. Down for 16 s, the bridge
    // would wait for the retry at 30 s without the ping.
    await sleep(16_000);
    assert.equal(mailsWith(text).length, 0, "no bridge ran: no mail yet");
    const bridge = await spawnBridge(env.configFile);
    try {
      const startedAt = Date.now();
      const nextRetryAt = sentAt + 30_000;
      assert.ok(startedAt < nextRetryAt - 4000, `the bridge took too long to start (${startedAt - sentAt} ms after the send) for this test to tell anything`);
      await within(
        env.sink.waitForMail((m) => m.rcptTo.includes("bob@example.org") && m.raw.includes(text), 60_000),
        nextRetryAt - startedAt - 1500,
        `the mail before Synapse's own next retry (started ${startedAt - sentAt} ms after the send; log:\n${bridge.output()})`,
      );
      assert.match(bridge.output(), /homeserver pinged the appservice/);
      assert.equal(mailsWith(text).length, 1);
    } finally {
      await stopBridge(bridge);
    }
  });
});
