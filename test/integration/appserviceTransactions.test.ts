/**
 * Appservice transactions are journaled before their 200 and handled from the journal
 * (src/matrix/appserviceTransactions.ts, src/matrix/appserviceHttp.ts), over real HTTP on
 * loopback, through the real MatrixGateway, on the real embedded SQLite store (migration 4).
 * No homeserver: MatrixGateway.listen() starts only the listener, and the sink is the test's.
 *
 * Also the crash windows with the test failpoints: a child process running the gateway
 * SIGKILLs itself right after the journal commit, or right after the 200; a new gateway on
 * the same database then handles the event exactly once.
 */
import { after, before, beforeEach, afterEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import http from "node:http";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { WeakEvent } from "matrix-appservice-bridge";
import { configureLogging } from "../../src/util/logger.ts";
import type { MatrixGateway, MatrixGatewayOptions } from "../../src/matrix/MatrixGateway.ts";
import { parseTransaction } from "../../src/matrix/appserviceTransactions.ts";
import { TransactionBodyError } from "../../src/matrix/appserviceHttp.ts";
import { openStore } from "../../src/store/open.ts";
import type { BridgeStore } from "../../src/store/Store.ts";
import type { MatrixEventJournal } from "../../src/bridge/ports.ts";
import { freePort } from "../harness/ports.ts";
import { createTestGateway, writeRegistration } from "../harness/appservice.ts";

const HS_TOKEN = randomBytes(32).toString("hex");
const BOT = "@emailbot:bridge.test";

const logLines: string[] = [];
configureLogging({ level: "debug", format: "json", write: (line) => { logLines.push(line); if (process.env.DBG) process.stderr.write(line + "\n"); } });

let dir: string;
let registrationFile: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "meb-astxn-"));
  registrationFile = await writeRegistration(dir, HS_TOKEN);
});

after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A room message event. */
function message(eventId: string, roomId = "!a:bridge.test", sender = "@alice:bridge.test"): WeakEvent {
  return { type: "m.room.message", event_id: eventId, room_id: roomId, sender, origin_server_ts: Date.now(), content: { msgtype: "m.text", body: eventId } };
}

interface Reply {
  status: number;
  body: string;
}

/** PUT a transaction with the hs_token, on a fresh connection. */
function putTxn(port: number, txnId: string, body: unknown, path = `/_matrix/app/v1/transactions/${encodeURIComponent(txnId)}`): Promise<Reply> {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: "127.0.0.1",
        port,
        method: "PUT",
        path,
        agent: false,
        headers: { authorization: `Bearer ${HS_TOKEN}`, "content-type": "application/json", "content-length": Buffer.byteLength(text) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(text);
  });
}

/** Wait until `cond` holds (polling), or fail after `ms`. */
async function until(cond: () => boolean | Promise<boolean>, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The journal methods of `store`, bound (SqlStore has private fields: no Object.create). */
function journalOf(store: BridgeStore): MatrixEventJournal {
  return {
    recordAppserviceTransaction: (t, e) => store.recordAppserviceTransaction(t, e),
    listMatrixEventHeads: (n) => store.listMatrixEventHeads(n),
    markMatrixEventDone: (id) => store.markMatrixEventDone(id),
    markMatrixEventRetry: (id, err, at) => store.markMatrixEventRetry(id, err, at),
    markMatrixEventFailed: (id, err) => store.markMatrixEventFailed(id, err),
    pruneMatrixJournal: (before) => store.pruneMatrixJournal(before),
  };
}

describe("parseTransaction (pure)", () => {
  const own = (u: string) => u === BOT || u.startsWith("@email_");

  test("keeps room events in order; drops echoes, malformed entries; counts what else came", () => {
    const body = {
      events: [
        message("$1"),
        message("$echo", "!a:bridge.test", "@email_bob=40example.org:bridge.test"),
        message("$bot", "!a:bridge.test", BOT),
        { event_id: "$no-room", type: "m.room.message", sender: "@a:b", content: {} },
        "not an event",
        { ...message("$no-content"), content: null },
        message("$2", "!b:bridge.test"),
      ],
      ephemeral: [{ type: "m.typing" }],
      "de.sorunome.msc2409.ephemeral": [{ type: "m.receipt" }, { type: "m.typing" }],
      to_device: [{ type: "m.room_key_request" }],
      "org.matrix.msc3202.device_one_time_keys_count": { "@a:b": {} },
    };
    const parsed = parseTransaction(body, own);
    assert.deepEqual(parsed.events.map((e) => [e.eventId, e.roomId]), [["$1", "!a:bridge.test"], ["$2", "!b:bridge.test"]]);
    assert.deepEqual(JSON.parse(parsed.events[0]!.json), body.events[0]);
    assert.equal(parsed.echoes, 2);
    assert.deepEqual(parsed.malformed, [3, 4, 5]);
    assert.deepEqual(parsed.ignored, { ephemeral: 1, "de.sorunome.msc2409.ephemeral": 2, to_device: 1, "org.matrix.msc3202.device_one_time_keys_count": 1 });
  });

  test("a missing events list is empty; anything but an object body or an events array is refused", () => {
    assert.deepEqual(parseTransaction({}, own).events, []);
    for (const bad of [null, [], "x", 5, { events: 5 }, { events: {} }]) {
      assert.throws(() => parseTransaction(bad, own), TransactionBodyError);
    }
  });
});

describe("appservice transactions (real HTTP, MatrixGateway, SQLite journal)", () => {
  let store: BridgeStore;
  let sqliteFile: string;
  const gateways: MatrixGateway[] = [];

  /** Create a gateway on `store` with the test's sink, and start its listener. */
  async function startGateway(onEvent: (e: WeakEvent) => Promise<void>, extra: Partial<MatrixGatewayOptions> = {}, journal: MatrixEventJournal = store): Promise<number> {
    const { gateway, port } = await createTestGateway({
      registrationFile,
      journal,
      sink: { onMatrixEvent: onEvent, onUserQuery: async () => null, thirdPartyUserId: () => null, thirdPartyAddress: () => null, isPortalRoom: async () => false },
      dispatch: { retryBackoff: { baseMs: 20, maxMs: 40, jitter: 0 }, maxAttempts: 3, pollMs: 200 },
      ...extra,
    });
    gateways.push(gateway);
    await gateway.listen();
    return port;
  }

  beforeEach(async () => {
    sqliteFile = join(dir, `journal-${randomBytes(4).toString("hex")}.sqlite`);
    store = await openStore({ url: null, sqliteFile });
    logLines.length = 0;
  });

  afterEach(async () => {
    for (const g of gateways.splice(0)) await g.stop();
    await store.close().catch(() => undefined);
  });

  test("200 comes only after the journal commit, and the handler only after the commit", async () => {
    const order: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    // The store, with a commit that waits for the test.
    const slow = journalOf(store);
    slow.recordAppserviceTransaction = async (txnId, events) => {
      await gate;
      const res = await store.recordAppserviceTransaction(txnId, events);
      order.push("committed");
      return res;
    };
    const port = await startGateway(async (e) => {
      order.push(`handled ${e.event_id}`);
    }, {}, slow);
    let answered = false;
    const reply = putTxn(port, "1", { events: [message("$m1")] }).then((r) => {
      answered = true;
      order.push("200");
      return r;
    });
    await sleep(200);
    assert.equal(answered, false, "no answer before the commit");
    assert.equal(await store.getMatrixEvent("$m1"), null);
    release();
    const r = await reply;
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body), {});
    assert.ok(await store.getMatrixEvent("$m1"), "journaled when the 200 arrives");
    await until(() => order.includes("handled $m1"), "the handler");
    // The handler starts once the server has sent the 200 (the client may read it a little later).
    assert.equal(order[0], "committed");
    assert.deepEqual([...order].sort(), ["200", "committed", "handled $m1"]);
    await until(async () => (await store.getMatrixEvent("$m1"))?.state === "done", "done");
  });

  test("a failed commit answers 500 and handles nothing; the homeserver's retry is then handled once", async () => {
    const handled: string[] = [];
    const flaky = journalOf(store);
    let fail = true;
    flaky.recordAppserviceTransaction = async (txnId, events) => {
      if (fail) {
        fail = false;
        throw new Error("database is locked");
      }
      return store.recordAppserviceTransaction(txnId, events);
    };
    const port = await startGateway(async (e) => {
      handled.push(e.event_id);
    }, {}, flaky);
    const r = await putTxn(port, "7", { events: [message("$m1")] });
    assert.equal(r.status, 500);
    assert.deepEqual(JSON.parse(r.body), { errcode: "M_UNKNOWN", error: "Internal server error" });
    assert.ok(!r.body.includes("locked"));
    assert.equal(logLines.filter((l) => l.includes('"appservice transaction not recorded"') && l.includes('"txnId":"7"') && l.includes("database is locked")).length, 1);
    await sleep(100);
    assert.deepEqual(handled, []);
    assert.equal((await putTxn(port, "7", { events: [message("$m1")] })).status, 200);
    await until(() => handled.length === 1, "the handler");
    await sleep(100);
    assert.deepEqual(handled, ["$m1"]);
    // The refusal and its end are told once (no ping: a gateway that only listens asks for none).
    assert.equal(logLines.filter((l) => l.includes('"appservice transactions are journaled again"') && l.includes('"refused":1') && l.includes('"pings":0')).length, 1);
  });

  test("a replayed transaction ID, or a known event ID in a new transaction, is handled once", async () => {
    const handled: string[] = [];
    const port = await startGateway(async (e) => {
      handled.push(e.event_id);
    });
    const body = { events: [message("$m1"), message("$m2", "!b:bridge.test")] };
    assert.equal((await putTxn(port, "1", body)).status, 200);
    assert.equal((await putTxn(port, "1", body)).status, 200, "replay: 200 again");
    // The legacy path is the same route.
    assert.equal((await putTxn(port, "1", body, "/transactions/1")).status, 200);
    assert.equal((await putTxn(port, "2", { events: [message("$m2", "!b:bridge.test"), message("$m3")] })).status, 200);
    await until(() => handled.length >= 3, "three events");
    await sleep(200);
    assert.deepEqual([...handled].sort(), ["$m1", "$m2", "$m3"]);
    // Two replays at once (a homeserver retrying while the first is in flight): one commit.
    const both = await Promise.all([putTxn(port, "3", { events: [message("$m4")] }), putTxn(port, "3", { events: [message("$m4")] })]);
    assert.deepEqual(both.map((r) => r.status), [200, 200]);
    await until(() => handled.includes("$m4"), "$m4");
    await sleep(100);
    assert.equal(handled.filter((h) => h === "$m4").length, 1);
  });

  test("one room's events are handled in arrival order, one at a time; another room does not wait", async () => {
    const handled: string[] = [];
    let inRoomA = 0;
    let maxInRoomA = 0;
    let releaseA!: () => void;
    const roomAGate = new Promise<void>((r) => (releaseA = r));
    const port = await startGateway(async (e) => {
      if (e.room_id === "!a:bridge.test") {
        inRoomA++;
        maxInRoomA = Math.max(maxInRoomA, inRoomA);
        await roomAGate;
        await sleep(5);
        inRoomA--;
      }
      handled.push(e.event_id);
    });
    assert.equal((await putTxn(port, "1", { events: [message("$a1"), message("$a2"), message("$b1", "!b:bridge.test"), message("$a3")] })).status, 200);
    assert.equal((await putTxn(port, "2", { events: [message("$a4"), message("$b2", "!b:bridge.test")] })).status, 200);
    await until(() => handled.includes("$b2"), "room b");
    assert.deepEqual(handled, ["$b1", "$b2"], "room b is not held back by room a");
    releaseA();
    await until(() => handled.length === 6, "all events");
    assert.deepEqual(handled.filter((h) => h.startsWith("$a")), ["$a1", "$a2", "$a3", "$a4"]);
    assert.equal(maxInRoomA, 1, "one event of a room at a time");
  });

  test("a throwing handler is retried with backoff, holding back its room only, then succeeds", async () => {
    const calls: string[] = [];
    let failures = 2;
    const port = await startGateway(async (e) => {
      calls.push(e.event_id);
      if (e.event_id === "$a1" && failures-- > 0) throw new Error("homeserver said 502");
    });
    assert.equal((await putTxn(port, "1", { events: [message("$a1"), message("$a2"), message("$b1", "!b:bridge.test")] })).status, 200);
    await until(() => calls.includes("$a2"), "$a2");
    assert.deepEqual(calls.filter((c) => c.startsWith("$a")), ["$a1", "$a1", "$a1", "$a2"]);
    const a1 = await store.getMatrixEvent("$a1");
    await until(async () => (await store.getMatrixEvent("$a1"))?.state === "done", "done");
    assert.equal(a1?.attempts, 2);
    assert.equal(a1?.lastError, "homeserver said 502");
    const retries = logLines.filter((l) => l.includes('"Matrix event failed: will retry"'));
    assert.equal(retries.length, 2);
    assert.match(retries[0]!, /"txnId":"1"/);
    assert.match(retries[0]!, /"eventId":"\$a1"/);
    assert.match(retries[0]!, /"roomId":"!a:bridge.test"/);
  });

  test("a handler that always throws: failed after maxAttempts, logged once, and its room moves on", async () => {
    const calls: string[] = [];
    const port = await startGateway(async (e) => {
      calls.push(e.event_id);
      if (e.event_id === "$bad") throw new Error("cannot handle this");
    });
    assert.equal((await putTxn(port, "1", { events: [message("$bad"), message("$next")] })).status, 200);
    await until(() => calls.includes("$next"), "$next");
    assert.deepEqual(calls, ["$bad", "$bad", "$bad", "$next"]);
    const bad = await store.getMatrixEvent("$bad");
    assert.equal(bad?.state, "failed");
    assert.equal(bad?.attempts, 3);
    assert.equal(bad?.lastError, "cannot handle this");
    const final = logLines.filter((l) => l.includes('"Matrix event failed: giving up"'));
    assert.equal(final.length, 1);
    assert.match(final[0]!, /"level":"error"/);
    assert.match(final[0]!, /"eventId":"\$bad"/);
    await until(async () => (await store.getMatrixEvent("$next"))?.state === "done", "done");
  });

  test("a homeserver outage is no failure: an event keeps being retried past maxAttempts, then handled", async () => {
    let calls = 0;
    const port = await startGateway(async () => {
      calls++;
      if (calls <= 5) throw Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:8008"), { code: "ECONNREFUSED" });
    });
    assert.equal((await putTxn(port, "1", { events: [message("$down")] })).status, 200);
    await until(async () => (await store.getMatrixEvent("$down"))?.state === "done", "done after the outage");
    assert.equal(calls, 6, "five failed runs (more than maxAttempts = 3), then the one that worked");
    assert.equal(logLines.filter((l) => l.includes('"Matrix event failed: giving up"')).length, 0);
  });

  test("an outcome that cannot be written pauses the room instead of spinning", async () => {
    const calls: string[] = [];
    const broken = journalOf(store);
    broken.markMatrixEventDone = async () => {
      throw new Error("disk I/O error");
    };
    const port = await startGateway(async (e) => {
      calls.push(e.event_id);
    }, {}, broken);
    assert.equal((await putTxn(port, "1", { events: [message("$m1")] })).status, 200);
    await sleep(1000);
    assert.deepEqual(calls, ["$m1"], "handled once, then the room waits");
    assert.equal((await store.getMatrixEvent("$m1"))?.state, "pending", "handled again later");
    const lines = logLines.filter((l) => l.includes('"Matrix event handled but not marked done"'));
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /"eventId":"\$m1".*"retryInMs":5000.*disk I\/O error/);
  });

  test("echoes, malformed events, ephemeral and to-device data are not journaled; a bad body is 400", async () => {
    const handled: string[] = [];
    const port = await startGateway(async (e) => {
      handled.push(e.event_id);
    });
    const r = await putTxn(port, "1", {
      events: [message("$echo", "!a:bridge.test", "@email_bob=40example.org:bridge.test"), message("$bot", "!a:bridge.test", BOT), { event_id: "$broken" }, message("$real")],
      "de.sorunome.msc2409.ephemeral": [{ type: "m.typing", room_id: "!a:bridge.test", content: { user_ids: [] } }],
      to_device: [],
    });
    assert.equal(r.status, 200);
    await until(() => handled.length === 1, "$real");
    await sleep(100);
    assert.deepEqual(handled, ["$real"]);
    for (const id of ["$echo", "$bot", "$broken"]) assert.equal(await store.getMatrixEvent(id), null, id);
    assert.ok(logLines.some((l) => l.includes('"appservice transaction has malformed events: skipped"') && l.includes('"txnId":"1"')));
    const recorded = logLines.find((l) => l.includes('"appservice transaction recorded"'));
    assert.match(recorded!, /"echoes":2/);
    assert.match(recorded!, /"de.sorunome.msc2409.ephemeral":1/);
    const bad = await putTxn(port, "2", { events: "nope" });
    assert.equal(bad.status, 400);
    assert.equal(JSON.parse(bad.body).errcode, "M_BAD_JSON");
    const notJson = await putTxn(port, "3", "{");
    assert.equal(notJson.status, 400);
    assert.equal(JSON.parse(notJson.body).errcode, "M_NOT_JSON");
    // Refused transactions leave no trace: the homeserver's corrected retry is new.
    assert.equal((await putTxn(port, "2", { events: [] })).status, 200);
  });

  test("events left pending by a previous run are handled on start, in order", async () => {
    // A run that journaled three events and stopped before handling them.
    await store.recordAppserviceTransaction("41", [
      { eventId: "$p1", roomId: "!a:bridge.test", json: JSON.stringify(message("$p1")) },
      { eventId: "$p2", roomId: "!a:bridge.test", json: JSON.stringify(message("$p2")) },
    ]);
    await store.recordAppserviceTransaction("42", [{ eventId: "$p3", roomId: "!a:bridge.test", json: JSON.stringify(message("$p3")) }]);
    await store.close();
    store = await openStore({ url: null, sqliteFile });
    const handled: string[] = [];
    const port = await startGateway(async (e) => {
      handled.push(e.event_id);
    });
    await until(() => handled.length === 3, "pending events");
    assert.deepEqual(handled, ["$p1", "$p2", "$p3"]);
    // The homeserver retries the unanswered transaction: nothing is handled twice.
    assert.equal((await putTxn(port, "42", { events: [message("$p3")] })).status, 200);
    await sleep(150);
    assert.deepEqual(handled, ["$p1", "$p2", "$p3"]);
  });

  test("stop() waits for the event being handled; what is left stays pending for the next start", async () => {
    const handled: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const port = await startGateway(async (e) => {
      if (e.event_id === "$s1") await gate;
      handled.push(e.event_id);
    });
    assert.equal((await putTxn(port, "1", { events: [message("$s1"), message("$s2")] })).status, 200);
    await sleep(50);
    const gw = gateways.pop()!;
    const stopped = gw.stop();
    await sleep(50);
    release();
    await stopped;
    assert.deepEqual(handled, ["$s1"]);
    assert.equal((await store.getMatrixEvent("$s1"))?.state, "done");
    assert.equal((await store.getMatrixEvent("$s2"))?.state, "pending");
    await startGateway(async (e) => {
      handled.push(e.event_id);
    });
    await until(() => handled.length === 2, "$s2");
    assert.deepEqual(handled, ["$s1", "$s2"]);
  });
});

describe("crash windows (test failpoints, gateway in a child process)", () => {
  const gatewayUrl = pathToFileURL(join(import.meta.dirname, "../../src/matrix/MatrixGateway.ts")).href;
  const openUrl = pathToFileURL(join(import.meta.dirname, "../../src/store/open.ts")).href;
  /** The child: a gateway on the SQLite journal whose handler must never run before the kill. */
  const child = `
    import { MatrixGateway } from ${JSON.stringify(gatewayUrl)};
    import { openStore } from ${JSON.stringify(openUrl)};
    const store = await openStore({ url: null, sqliteFile: process.env.MEB_TEST_SQLITE });
    const gateway = await MatrixGateway.create({
      homeserverUrl: "http://127.0.0.1:1", serverName: "bridge.test", registrationFile: process.env.MEB_TEST_REGISTRATION,
      botDisplayName: "Email bridge", bindAddress: "127.0.0.1", port: Number(process.env.MEB_TEST_PORT), journal: store,
      sink: { onMatrixEvent: async (e) => { process.stdout.write("HANDLED " + e.event_id + "\\n"); }, onUserQuery: async () => null },
    });
    await gateway.listen();
    process.stdout.write("LISTENING\\n");
  `;

  async function crashRun(failpoint: string, sqliteFile: string, txnId: string, event: WeakEvent): Promise<{ reply: Reply | Error; signal: string | null; stdout: string }> {
    const port = await freePort();
    const { NODE_TEST_CONTEXT: _, ...env } = process.env;
    const p = spawn(process.execPath, ["--input-type=module", "-e", child], {
      env: { ...env, MEB_FAILPOINT: failpoint, MEB_TEST_SQLITE: sqliteFile, MEB_TEST_REGISTRATION: registrationFile, MEB_TEST_PORT: String(port), MEB_LOG_LEVEL: "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<string | null>((resolve) => p.on("close", (_code, signal) => resolve(signal)));
    try {
      await until(() => stdout.includes("LISTENING"), `the child to listen (stderr: ${stderr})`, 20_000);
    } catch (err) {
      p.kill("SIGKILL");
      throw err;
    }
    const reply = await putTxn(port, txnId, { events: [event] }).catch((err: Error) => err);
    const signal = await Promise.race([exited, sleep(10_000).then(() => "still running")]);
    if (signal === "still running") p.kill("SIGKILL");
    assert.match(stderr, /failpoint reached/, stderr);
    return { reply, signal, stdout };
  }

  for (const failpoint of ["after-journal-commit", "after-txn-ack"]) {
    test(`SIGKILL ${failpoint}: the event survives, and is handled exactly once after the restart`, async () => {
      const sqliteFile = join(dir, `crash-${failpoint}.sqlite`);
      const { reply, signal, stdout } = await crashRun(failpoint, sqliteFile, "900", message("$crash"));
      assert.equal(signal, "SIGKILL");
      assert.ok(!stdout.includes("HANDLED"), "killed before any handling");
      if (failpoint === "after-journal-commit") assert.ok(reply instanceof Error, "no answer: the homeserver will retry");
      else assert.equal((reply as Reply).status, 200, "answered 200: the homeserver will not retry");

      const store = await openStore({ url: null, sqliteFile });
      const handled: string[] = [];
      const { gateway, port } = await createTestGateway({
        homeserverUrl: "http://127.0.0.1:1",
        registrationFile,
        journal: store,
        sink: { onMatrixEvent: async (e) => void handled.push(e.event_id), onUserQuery: async () => null, thirdPartyUserId: () => null, thirdPartyAddress: () => null, isPortalRoom: async () => false },
      });
      try {
        assert.equal((await store.getMatrixEvent("$crash"))?.state, "pending");
        await gateway.listen();
        await until(() => handled.length === 1, "the pending event");
        // The homeserver's retry of the same transaction, and a replay of the event in another.
        assert.equal((await putTxn(port, "900", { events: [message("$crash")] })).status, 200);
        assert.equal((await putTxn(port, "901", { events: [message("$crash")] })).status, 200);
        await sleep(300);
        assert.deepEqual(handled, ["$crash"]);
        assert.equal((await store.getMatrixEvent("$crash"))?.state, "done");
      } finally {
        await gateway.stop();
        await store.close();
      }
    });
  }
});
