/**
 * Reaching an address without typing a ghost ID, end to end against a real Synapse:
 * `start <address>` in the bot DM makes the address's ghost open an unencrypted DM with the
 * user (a second `start` points to it); the third-party lookup for the `email` protocol, which
 * Synapse proxies from `/_matrix/client/v3/thirdparty/…` to the appservice, maps an address to
 * its ghost and back.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import { MAIL_DOMAIN, openBotDm, startEnv, type BotDm, type E2eEnv } from "./env.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";

const ZOE_GHOST = "@email_zoe=40example.org:localhost";

describe("start a conversation without a ghost ID", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let botDm: string;
  let botReply: BotDm["reply"];

  before(async () => {
    env = await startEnv("sqlite", { allowedUsers: ["@alice:localhost"] });
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    ({ roomId: botDm, reply: botReply } = await openBotDm(alice));
  });
  after(async () => {
    await env?.stop();
  });


  it("`start bob@…` in the bot DM: the ghost invites the user to a new unencrypted DM portal; mail goes both ways; a second start points to it", async () => {
    await alice.sendText(botDm, "start Zoe@Example.org");
    await botReply(/^Started: @email_zoe=40example\.org:localhost invited you/);
    const roomId = await alice.waitForInvite(30_000, (i) => i.inviter === ZOE_GHOST);
    await alice.join(roomId);
    const encryption = await alice.request("GET", `/rooms/${encodeURIComponent(roomId)}/state/m.room.encryption/`).catch(() => null);
    assert.equal(encryption, null, "the DM is not encrypted");

    await alice.sendText(roomId, "Hello Zoe, long time! (start-1)");
    const out = await env.sink.waitForMail((m) => m.raw.includes("(start-1)"));
    assert.deepEqual(out.rcptTo, ["zoe@example.org"]);
    assert.equal(out.mailFrom, `alice@${MAIL_DOMAIN}`);

    await env.sendMail({ from: "Zoe <zoe@example.org>", to: `alice@${MAIL_DOMAIN}`, subject: "Re: hello", text: "Hi Alice! (start-2)" });
    await alice.waitForEvent(roomId, (e) => e.sender === ZOE_GHOST && String(e.content.body).includes("(start-2)"));

    await alice.sendText(botDm, "start zoe@example.org");
    await botReply(new RegExp(`^You already have a chat with zoe@example\\.org: https://matrix\\.to/#/${encodeURIComponent(roomId).replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`));
  });

  it("`start` refuses a bad address and the bridge's own addresses, naming the command", async () => {
    await alice.sendText(botDm, "start not-an-address");
    await botReply(/^`start not-an-address`: /);
    await alice.sendText(botDm, `start someone@${MAIL_DOMAIN}`);
    await botReply(/^`start someone@bridge\.test`: .*this bridge/);
  });

  it("the third-party lookup through Synapse: the email protocol, an address to its ghost, a ghost to its address", async () => {
    const protocols = await alice.request<Record<string, { user_fields?: string[] }>>("GET", "/thirdparty/protocols");
    assert.deepEqual(protocols.email?.user_fields, ["address"]);
    const users = await alice.request<unknown>("GET", "/thirdparty/user/email", undefined, { query: { address: "Bob@Example.org" } });
    assert.deepEqual(users, [{ userid: "@email_bob=40example.org:localhost", protocol: "email", fields: { address: "bob@example.org" } }]);
    // The reverse lookup is the appservice's (`GET /_matrix/app/v1/thirdparty/user?userid=`):
    // Synapse 1.163 does not proxy `/thirdparty/user` without a protocol to appservices.
    const registration = parseYaml(readFileSync(env.config.appservice.registration_file, "utf8")) as { hs_token: string; url: string };
    const res = await fetch(`${registration.url}/_matrix/app/v1/thirdparty/user?userid=${encodeURIComponent("@email_bob=40example.org:localhost")}`, {
      headers: { authorization: `Bearer ${registration.hs_token}` },
    });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), [{ userid: "@email_bob=40example.org:localhost", protocol: "email", fields: { address: "bob@example.org" } }]);
    const unverified = await fetch(`${registration.url}/_matrix/app/v1/thirdparty/user?userid=${encodeURIComponent("@email_bob=40example.org/unverified:localhost")}`, {
      headers: { authorization: `Bearer ${registration.hs_token}` },
    });
    assert.deepEqual(await unverified.json(), [], "an unverified ghost speaks for no address");
    const none = await alice.request<unknown>("GET", "/thirdparty/user/email", undefined, { query: { address: "no address" } }).catch((err: unknown) => err);
    assert.ok(Array.isArray(none) ? none.length === 0 : (none as { status?: number }).status === 404, `an invalid address finds nobody: ${JSON.stringify(none)}`);
  });

  it("block and allow: a blocked domain's mail gets 550 5.7.1; an allowed address gets through; rejecting its DM invite blocks it again", async () => {
    const mail = (n: string) => ({ from: "Eve <eve@example.net>", to: `alice@${MAIL_DOMAIN}`, subject: `Offer ${n}`, text: `Buy now (${n})` });
    await alice.sendText(botDm, "block Example.NET");
    await botReply(/^Blocked example\.net: mail from that domain to your mailbox is refused/);
    await assert.rejects(env.sendMail(mail("b1")), /550 5\.7\.1 alice@bridge\.test does not accept mail from eve@example\.net/);

    await alice.sendText(botDm, "allow eve@example.net");
    await botReply(/^Allowed eve@example\.net/);
    assert.match(await env.sendMail(mail("b2")), /^250 /);
    const eveGhost = "@email_eve=40example.net:localhost";
    const roomId = await alice.waitForInvite(30_000, (i) => i.inviter === eveGhost);

    // Rejecting the DM invite refuses the sender, as `block eve@example.net` would.
    await alice.leave(roomId);
    const deadline = Date.now() + 20_000;
    let refused: unknown = null;
    while (Date.now() < deadline && refused === null) {
      refused = await env.sendMail(mail(`b3-${Date.now()}`)).then(() => null, (err: unknown) => err);
      if (refused === null) await new Promise((r) => setTimeout(r, 500));
    }
    assert.match(String(refused), /550 5\.7\.1 alice@bridge\.test does not accept mail from eve@example\.net/);

    await alice.sendText(botDm, "contacts");
    await botReply(/^Mode: invite [^\n]*\nRefused:\n• eve@example\.net\n• example\.net\nAccepted:\n• zoe@example\.org$/);
  });
});
