/**
 * Addressing end to end against a real Synapse: a second mail domain (room mailboxes exist on
 * it), aliases and a catch-all (unknown addresses elsewhere still get 550 5.1.1), `name+tag@`
 * delivered to `name` with the tag shown, one alias with two rooms (each gets the mail once),
 * and aliases by bot command (moderators only). The bridge runs in-process on the embedded
 * SQLite store; mail goes through its SMTP listener on loopback; domains and the catch-all are
 * added through the bridge's `Addressing`, as the admin API does.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createMailboxRoom, startEnv, MAIL_DOMAIN, type E2eEnv } from "./env.ts";
import type { MatrixEvent, MatrixTestClient } from "../harness/matrixClient.ts";

const BOT = "@emailbot:localhost";
const SECOND = "second.test";
const THIRD = "third.test";

type SmtpError = Error & { responseCode?: number; response?: string };

describe("addressing end to end (embedded SQLite store)", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let bob: MatrixTestClient;
  let team: string;
  let sales: string;

  before(async () => {
    env = await startEnv("sqlite", { allowedUsers: ["@alice:localhost", "@bob:localhost"] });
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    bob = await env.synapse.registerUser("bob", { displayName: "Bob" });
    team = await createMailboxRoom(alice, "team", "Team");
    sales = await createMailboxRoom(alice, "sales", "Sales");
    await env.bridge.addressing.addDomain(SECOND, "@alice:localhost");
  });
  after(async () => {
    await env?.stop();
  });

  /** The mail event whose body contains `text`, in `room`, as `client` sees it. */
  const mailEvent = (client: MatrixTestClient, room: string, text: string): Promise<MatrixEvent> =>
    client.waitForEvent(room, (e) => e.type === "m.room.message" && e.sender !== BOT && String(e.content.body ?? "").includes(text));

  it("a second domain: a room mailbox on it lands, the address it came to shown; other domains are still refused", async () => {
    assert.deepEqual((await env.bridge.addressing.listDomains()).map((d) => d.domain), [MAIL_DOMAIN, SECOND]);
    assert.match(await env.sendMail({ from: "carol@example.org", to: `team@${SECOND}`, subject: "On the second domain", text: "Hello via the second domain" }), /^250 /);
    const ev = await mailEvent(alice, team, "Hello via the second domain");
    assert.match(String(ev.content.body), new RegExp(`^📨 To team@${SECOND.replace(".", "\\.")}\n`));
    assert.deepEqual(ev.content["io.github.matrix-email-bridge.recipient"], { address: `team@${SECOND}`, tag: null });
    await assert.rejects(env.sendMail({ from: "carol@example.org", to: "team@elsewhere.test", text: "relay?" }), (err: SmtpError) => {
      assert.equal(err.responseCode, 550);
      assert.match(String(err.response), /^550 5\.7\.1 .*relaying denied/);
      return true;
    });
  });

  it("an alias lands in its room; a catch-all takes unknown addresses of its domain; elsewhere an unknown address gets 550 5.1.1", async () => {
    await env.bridge.addressing.addAlias(`help@${SECOND}`, sales, "@alice:localhost");
    assert.match(await env.sendMail({ from: "carol@example.org", to: `help@${SECOND}`, subject: "Help", text: "Alias mail for sales" }), /^250 /);
    const ev = await mailEvent(alice, sales, "Alias mail for sales");
    assert.match(String(ev.content.body), /^📨 To help@second\.test\n/);

    await assert.rejects(env.sendMail({ from: "carol@example.org", to: `nobody@${SECOND}`, text: "anyone?" }), (err: SmtpError) => {
      assert.equal(err.responseCode, 550);
      assert.match(String(err.response), /^550 5\.1\.1 /);
      return true;
    });

    await env.bridge.addressing.addDomain(THIRD, "@alice:localhost");
    await env.bridge.addressing.addAlias(`*@${THIRD}`, "@alice:localhost", "@alice:localhost");
    assert.match(await env.sendMail({ from: "erin@example.com", to: `whatever@${THIRD}`, subject: "Catch me", text: "Caught by the catch-all" }), /^250 /);
    const erin = "@email_erin=40example.com:localhost";
    const dm = await alice.waitForInvite(30_000, (i) => i.inviter === erin);
    await alice.join(dm);
    const caught = await mailEvent(alice, dm, "Caught by the catch-all");
    assert.match(String(caught.content.body), /^📨 To whatever@third\.test\n/);
  });

  it("name+tag@ lands in name's DM and room with the tag shown", async () => {
    assert.match(await env.sendMail({ from: "dora@example.net", to: `bob+shopping@${MAIL_DOMAIN}`, subject: "Your order", text: "Your order has shipped" }), /^250 /);
    const dora = "@email_dora=40example.net:localhost";
    const dm = await bob.waitForInvite(30_000, (i) => i.inviter === dora);
    await bob.join(dm);
    const ev = await mailEvent(bob, dm, "Your order has shipped");
    assert.match(String(ev.content.body), /^📨 To bob\+shopping@bridge\.test \(tag: shopping\)\n/);
    assert.deepEqual(ev.content["io.github.matrix-email-bridge.recipient"], { address: `bob+shopping@${MAIL_DOMAIN}`, tag: "shopping" });

    assert.match(await env.sendMail({ from: "carol@example.org", to: `team+news@${MAIL_DOMAIN}`, subject: "News", text: "Tagged room mail" }), /^250 /);
    const roomEv = await mailEvent(alice, team, "Tagged room mail");
    assert.match(String(roomEv.content.body), /\(tag: news\)/);
  });

  it("1:N: one mail to an alias with two rooms lands once in each", async () => {
    await env.bridge.addressing.addAlias(`all@${SECOND}`, team, "@alice:localhost");
    await env.bridge.addressing.addAlias(`all@${SECOND}`, sales, "@alice:localhost");
    // The alias and one of its rooms' own address in one envelope: still once per room.
    const raw = `From: carol@example.org\r\nTo: all@${SECOND}, team@${MAIL_DOMAIN}\r\nSubject: Everyone\r\nMessage-ID: <fanout-1@example.org>\r\n\r\nFan-out to everyone\r\n`;
    assert.match(await env.sendRaw(raw, { from: "carol@example.org", to: [`all@${SECOND}`, `team@${MAIL_DOMAIN}`] }), /^250 /);
    await mailEvent(alice, team, "Fan-out to everyone");
    await mailEvent(alice, sales, "Fan-out to everyone");
    // Whatever is still on its way has had time to arrive.
    assert.match(await env.sendMail({ from: "carol@example.org", to: `all@${SECOND}`, subject: "Later", text: "Marker after the fan-out" }), /^250 /);
    await mailEvent(alice, team, "Marker after the fan-out");
    await mailEvent(alice, sales, "Marker after the fan-out");
    for (const room of [team, sales]) {
      const events = await alice.getRoomMessages(room, { limit: 100 });
      assert.equal(events.filter((e) => e.type === "m.room.message" && String(e.content.body ?? "").includes("Fan-out to everyone")).length, 1, room);
    }
  });

  it("a moderator adds, lists and removes an alias by bot command; a non-moderator is refused", async () => {
    const botReply = (client: MatrixTestClient, pattern: RegExp) => client.waitForEvent(sales, (e) => e.sender === BOT && pattern.test(String(e.content.body)));
    await alice.sendText(sales, `!email mailbox alias add Orders@${SECOND}`);
    await botReply(alice, /^Done: mail to orders@second\.test now lands in this room too\.$/);
    assert.match(await env.sendMail({ from: "carol@example.org", to: `orders@${SECOND}`, subject: "Order", text: "An order by alias" }), /^250 /);
    await mailEvent(alice, sales, "An order by alias");

    await alice.sendText(sales, "!email mailbox aliases");
    const list = await botReply(alice, /^This room's email address: sales@bridge\.test/);
    assert.match(String(list.content.body), /• orders@second\.test/);
    assert.match(String(list.content.body), /• help@second\.test/);

    await alice.invite(sales, "@bob:localhost");
    await bob.join(sales);
    await bob.sendText(sales, "!email mailbox alias add bobs-corner");
    await botReply(bob, /^`mailbox alias`: you need power level 50 \(moderator\) in this room; you have 0$/);
    await assert.rejects(env.sendMail({ from: "carol@example.org", to: `bobs-corner@${MAIL_DOMAIN}`, text: "hi" }), (err: SmtpError) => err.responseCode === 550);

    await alice.sendText(sales, `!email mailbox alias add team@${SECOND}`);
    await botReply(alice, /^`mailbox alias`: team@second\.test is the address of a room mailbox \(team@bridge\.test\)$/);
    await alice.sendText(sales, `!email mailbox alias remove orders@${SECOND}`);
    await botReply(alice, /^Done: orders@second\.test no longer delivers to this room\.$/);
    await assert.rejects(env.sendMail({ from: "carol@example.org", to: `orders@${SECOND}`, text: "gone?" }), (err: SmtpError) => err.responseCode === 550);
  });
});
