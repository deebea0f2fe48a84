/**
 * Smoke test for the real-Synapse harness (test/harness/synapse.ts) and the
 * Matrix test client (test/harness/matrixClient.ts).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startSynapse, type SynapseHandle } from "../harness/synapse.ts";
import { MatrixApiError, MatrixTestClient } from "../harness/matrixClient.ts";

const execFileAsync = promisify(execFile);

describe("Synapse harness", () => {
  let dir: string;
  let synapse: SynapseHandle;
  const asToken = randomBytes(16).toString("hex");
  const hsToken = randomBytes(16).toString("hex");

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "meb-harness-test-"));
    const registration = join(dir, "registration.yaml");
    await writeFile(
      registration,
      [
        "id: harness-test",
        "url: http://127.0.0.1:1",
        `as_token: ${asToken}`,
        `hs_token: ${hsToken}`,
        "sender_localpart: harnessbot",
        "rate_limited: false",
        "namespaces:",
        "  users:",
        "    - exclusive: true",
        "      regex: '@harness_.*:localhost'",
        "  aliases: []",
        "  rooms: []",
        "",
      ].join("\n"),
    );
    synapse = await startSynapse({ registrationFiles: [registration] });
    console.log(`# Synapse answered after ${synapse.startupMs} ms at ${synapse.url}`);
  });

  after(async () => {
    await synapse?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test("users can create a room, invite, join, send, reply and see the events", async () => {
    const alice = await synapse.registerUser("alice", { admin: true });
    const bob = await synapse.registerUser("bob", { displayName: "Bob B" });
    assert.equal(alice.userId, "@alice:localhost");
    assert.equal((await bob.whoami()).user_id, "@bob:localhost");
    assert.equal((await bob.getProfile()).displayname, "Bob B");

    const roomId = await alice.createRoom({ name: "Harness room", invite: [bob.userId], preset: "private_chat" });
    const invited = await bob.waitForInvite(15_000, (inv) => inv.inviter === alice.userId);
    assert.equal(invited, roomId);
    await alice.waitForMembership(roomId, bob.userId, "invite", 5_000);
    assert.equal(await bob.join(roomId), roomId);
    await alice.waitForMembership(roomId, bob.userId, "join", 5_000);
    await bob.waitForMembership(roomId, bob.userId, "join", 5_000);
    assert.deepEqual(Object.keys(await alice.getJoinedMembers(roomId)).sort(), [alice.userId, bob.userId].sort());
    assert.ok((await bob.joinedRooms()).includes(roomId));

    const helloId = await alice.sendText(roomId, "hello bob", { html: "<b>hello</b> bob" });
    const hello = await bob.waitForEvent(roomId, (ev) => ev.type === "m.room.message" && ev.content.body === "hello bob");
    assert.equal(hello.event_id, helloId);
    assert.equal(hello.sender, alice.userId);
    assert.equal(hello.content.format, "org.matrix.custom.html");
    assert.equal(hello.content.formatted_body, "<b>hello</b> bob");

    const replyId = await bob.sendText(roomId, "hi alice", { replyTo: helloId });
    const reply = await alice.waitForEvent(roomId, (ev) => ev.event_id === replyId);
    assert.equal(reply.content["m.relates_to"]?.["m.in_reply_to"]?.event_id, helloId);

    await bob.setDisplayName("Robert");
    assert.equal((await alice.getProfile(bob.userId)).displayname, "Robert");

    // bob has power level 0 in a private_chat room: state events are forbidden
    await assert.rejects(
      bob.sendState(roomId, "org.example.test", "k", { v: 1 }),
      (err: unknown) => err instanceof MatrixApiError && err.status === 403 && err.errcode === "M_FORBIDDEN",
    );
    await alice.sendState(roomId, "org.example.test", "k", { v: 2 });
    assert.deepEqual(await bob.getState(roomId, "org.example.test", "k"), { v: 2 });

    await bob.leave(roomId);
    await alice.waitForMembership(roomId, bob.userId, "leave", 5_000);
  });

  test("waitForEvent times out with a list of the events it saw", async () => {
    const carol = await synapse.registerUser("carol");
    const roomId = await carol.createRoom({ name: "timeout" });
    await carol.sendText(roomId, "only message");
    await assert.rejects(
      carol.waitForEvent(roomId, (ev) => ev.content.body === "never sent", 600),
      (err: Error) => /no matching event within 600 ms/.test(err.message) && /only message/.test(err.message),
    );
  });

  test("server errors carry method, path, status and errcode", async () => {
    const dave = await synapse.registerUser("dave");
    await assert.rejects(dave.join("!doesnotexist:localhost"), (err: unknown) => {
      assert.ok(err instanceof MatrixApiError);
      assert.equal(err.method, "POST");
      assert.match(err.path, /^\/_matrix\/client\/v3\/join\//);
      assert.ok(err.status >= 400);
      assert.match(err.errcode, /^M_/);
      assert.match(err.message, /POST \/_matrix\/client\/v3\/join\/.* -> \d{3} M_/);
      return true;
    });
  });

  test("the appservice token can act as its users (identity assertion)", async () => {
    const bot = MatrixTestClient.forAppserviceUser(synapse.url, asToken, "@harnessbot:localhost");
    assert.equal((await bot.whoami()).user_id, "@harnessbot:localhost");

    const ghost = await MatrixTestClient.registerAppserviceUser(synapse.url, asToken, "harness_ghost");
    assert.equal(ghost.userId, "@harness_ghost:localhost");
    const who = await ghost.request<{ user_id: string }>("GET", "/account/whoami", undefined, {
      query: { user_id: "@harness_ghost:localhost" },
    });
    assert.equal(who.user_id, "@harness_ghost:localhost");
    // registering again is harmless
    assert.equal((await MatrixTestClient.registerAppserviceUser(synapse.url, asToken, "harness_ghost")).userId, ghost.userId);

    // a ghost can take part in a room
    const erin = await synapse.registerUser("erin");
    const roomId = await erin.createRoom({ invite: [ghost.userId], is_direct: true, preset: "trusted_private_chat" });
    assert.equal(await ghost.waitForInvite(10_000), roomId);
    await ghost.join(roomId);
    await ghost.setDisplayName("Ghost (email)");
    await ghost.sendText(roomId, "from the ghost");
    const ev = await erin.waitForEvent(roomId, (e) => e.content.body === "from the ghost");
    assert.equal(ev.sender, ghost.userId);

    // outside the namespace masquerading is refused
    const outsider = MatrixTestClient.forAppserviceUser(synapse.url, asToken, "@erin:localhost");
    await assert.rejects(outsider.whoami(), (err: unknown) => err instanceof MatrixApiError && err.status === 403);
    // users cannot be registered by hand inside the exclusive namespace
    await assert.rejects(synapse.registerUser("harness_manual"), MatrixApiError);
  });
});

test("Synapse can be stopped and started again with the same data (restart / outage)", { timeout: 120_000 }, async () => {
  const synapse = await startSynapse({ registrationFiles: [] });
  try {
    const { url, port, registrationSharedSecret: secret } = synapse;
    assert.equal(synapse.running, true);
    const frank = await synapse.registerUser("frank");
    const roomId = await frank.createRoom({ name: "restart room" });
    const beforeId = await frank.sendText(roomId, "before the outage");

    let t0 = Date.now();
    await synapse.stopProcess();
    console.log(`# stopProcess took ${Date.now() - t0} ms`);
    assert.equal(synapse.running, false);
    await synapse.stopProcess(); // idempotent

    // While it is down, requests fail fast with a connection error, not a hang.
    t0 = Date.now();
    await assert.rejects(frank.whoami(), (err: unknown) => {
      assert.ok(!(err instanceof MatrixApiError), `expected a connection error, got ${String(err)}`);
      const cause = (err as Error).cause as { cause?: { code?: string } } | undefined;
      assert.equal(cause?.cause?.code, "ECONNREFUSED", `unexpected error: ${(err as Error).message}`);
      return true;
    });
    await assert.rejects(
      fetch(`${url}/_matrix/client/versions`, { signal: AbortSignal.timeout(2000) }),
      (err: Error) => err.name === "TypeError" && (err.cause as { code?: string }).code === "ECONNREFUSED",
    );
    assert.ok(Date.now() - t0 < 2000, "requests to a stopped Synapse should fail fast");
    assert.match(synapse.logTail(), /homeserver\.log/);

    t0 = Date.now();
    await synapse.startProcess();
    console.log(`# startProcess took ${Date.now() - t0} ms (startupMs ${synapse.startupMs})`);
    assert.equal(synapse.running, true);
    await synapse.startProcess(); // no-op while running
    assert.equal(synapse.url, url);
    assert.equal(synapse.port, port);
    assert.equal(synapse.registrationSharedSecret, secret);

    // Same server, same access token, same room and history.
    assert.equal((await frank.whoami()).user_id, "@frank:localhost");
    assert.ok((await frank.joinedRooms()).includes(roomId));
    const history = await frank.getRoomMessages(roomId);
    assert.ok(history.some((ev) => ev.event_id === beforeId && ev.content.body === "before the outage"));
    const afterId = await frank.sendText(roomId, "after the restart");
    // Registering via the shared secret still works, and old users still exist.
    const grace = await synapse.registerUser("grace");
    await assert.rejects(synapse.registerUser("frank"), (err: unknown) => err instanceof MatrixApiError && err.errcode === "M_USER_IN_USE");

    t0 = Date.now();
    await synapse.restart(500);
    const took = Date.now() - t0;
    console.log(`# restart(500) took ${took} ms`);
    assert.ok(took >= 500);
    assert.equal(synapse.running, true);
    const latest = await frank.getRoomMessages(roomId, { limit: 10 });
    assert.ok(latest.some((ev) => ev.event_id === afterId));
    assert.ok(latest.some((ev) => ev.event_id === beforeId));
    const thirdId = await frank.sendText(roomId, "after the second restart");
    await frank.invite(roomId, grace.userId);
    await grace.join(roomId);
    const seen = await grace.waitForEvent(roomId, (ev) => ev.event_id === thirdId, 5_000);
    assert.equal(seen.content.body, "after the second restart");
  } finally {
    await synapse.stop();
  }
  assert.equal(synapse.running, false);
  assert.equal(existsSync(synapse.dataDir), process.env["MEB_KEEP_SYNAPSE_DATA"] === "1");
  await synapse.stop(); // idempotent
  await assert.rejects(synapse.startProcess(), /stopped with stop\(\)/);
});

test("startProcess retries while the port is briefly still taken", { timeout: 90_000 }, async () => {
  const synapse = await startSynapse({ registrationFiles: [] });
  try {
    const henry = await synapse.registerUser("henry");
    await synapse.stopProcess();
    // Something else holds the port for a moment (like a socket not yet released).
    const squatter = createServer((sock) => sock.destroy());
    await new Promise<void>((resolve, reject) => {
      squatter.once("error", reject);
      squatter.listen(synapse.port, "127.0.0.1", () => resolve());
    });
    const starting = synapse.startProcess();
    await sleep(3000);
    await new Promise<void>((resolve) => squatter.close(() => resolve()));
    await starting;
    assert.match(synapse.logTail(50_000), /Address already in use/);
    assert.equal((await henry.whoami()).user_id, "@henry:localhost");
  } finally {
    await synapse.stop();
  }
});

test("the exit hook kills the restarted Synapse if the test process exits without stop()", { timeout: 60_000 }, async () => {
  const harness = new URL("../harness/synapse.ts", import.meta.url).href;
  const script = [
    `import { startSynapse } from ${JSON.stringify(harness)};`,
    `const s = await startSynapse({ registrationFiles: [] });`,
    `await s.restart();`,
    `console.log(JSON.stringify({ port: s.port, dataDir: s.dataDir }));`,
    `process.exit(0);`,
  ].join("\n");
  const { stdout } = await execFileAsync(process.execPath, ["--input-type=module", "-e", script], {
    env: { ...process.env, MEB_KEEP_SYNAPSE_DATA: "" },
    timeout: 50_000,
  });
  const { port, dataDir } = JSON.parse(stdout.trim().split("\n").pop()!) as { port: number; dataDir: string };
  assert.equal(existsSync(dataDir), false, "the exit hook should remove the data dir");
  // The restarted process was killed: its port stops accepting connections.
  const deadline = Date.now() + 10_000;
  for (;;) {
    const open = await fetch(`http://127.0.0.1:${port}/_matrix/client/versions`, { signal: AbortSignal.timeout(1000) })
      .then(() => true, () => false);
    if (!open) break;
    assert.ok(Date.now() < deadline, `Synapse on port ${port} survived its parent`);
    await sleep(200);
  }
});

test("stop() works while the process is stopped", { timeout: 60_000 }, async () => {
  const synapse = await startSynapse({ registrationFiles: [] });
  try {
    await synapse.stopProcess();
  } finally {
    await synapse.stop();
  }
  assert.equal(existsSync(synapse.dataDir), process.env["MEB_KEEP_SYNAPSE_DATA"] === "1");
});

test("startSynapse fails loudly when the virtualenv is missing", async () => {
  const saved = process.env["MEB_SYNAPSE_VENV"];
  process.env["MEB_SYNAPSE_VENV"] = "/nonexistent/synapse-venv";
  try {
    await assert.rejects(startSynapse({ registrationFiles: [] }), /Synapse virtualenv not found/);
  } finally {
    if (saved === undefined) delete process.env["MEB_SYNAPSE_VENV"];
    else process.env["MEB_SYNAPSE_VENV"] = saved;
  }
});
