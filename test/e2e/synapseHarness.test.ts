/**
 * Smoke test for the real-Synapse harness (test/harness/synapse.ts) and the
 * Matrix test client (test/harness/matrixClient.ts).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startSynapse, type SynapseHandle } from "../harness/synapse.ts";
import { MatrixApiError, MatrixTestClient } from "../harness/matrixClient.ts";

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
