/**
 * End to end: the bridge is restarted while its homeserver is down (a crash during a homeserver
 * upgrade). It opens its SMTP listener at once: room-mailbox mail is accepted (250) and queued,
 * personal-mailbox mail gets 451 (the homeserver cannot say who exists), and the queued mail is
 * posted once the homeserver is back. A real Synapse, the embedded SQLite store, a real DNS server.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createMailboxRoom, prepareEnv, MAIL_DOMAIN, type PreparedEnv } from "./env.ts";
import { startBridge, type RunningBridge } from "../../src/bridge/Bridge.ts";
import { freePort } from "../harness/ports.ts";

describe("bridge started while the homeserver is down (embedded SQLite store)", () => {
  let env: PreparedEnv;
  let bridge: RunningBridge | null = null;

  before(async () => {
    env = await prepareEnv("sqlite", { allowedUsers: ["@alice:localhost"] });
  });
  after(async () => {
    await bridge?.stop();
    await env?.stop();
  });

  it("takes room-mailbox mail at once and posts it when the homeserver is back", async () => {
    const config = { ...env.config, smtp: { ...env.config.smtp, port: await freePort() } };
    env.smtpPort = config.smtp.port;
    bridge = await startBridge(config);
    const alice = await env.synapse.registerUser("alice");
    const room = await createMailboxRoom(alice, "ops", "Ops");
    await bridge.stop();
    bridge = null;

    await env.synapse.stopProcess();
    let started: RunningBridge | null = null;
    const starting = startBridge(config).then((b) => (started = b));
    try {
      // The SMTP listener is up although the homeserver is not (startBridge is still waiting).
      let reply: string | null = null;
      for (let i = 0; i < 100 && reply === null; i++) {
        reply = await env.sendMail({ from: "Bob <bob@example.org>", to: `ops@${MAIL_DOMAIN}`, subject: "During the outage", text: "queued while down" }).catch(() => null);
        if (reply === null) await new Promise((r) => setTimeout(r, 100));
      }
      assert.match(String(reply), /^250 /);
      assert.equal(started, null, "the bridge is still waiting for the homeserver");
      await assert.rejects(env.sendMail({ from: "bob@example.org", to: `alice@${MAIL_DOMAIN}`, text: "to a person" }), (err: Error & { responseCode?: number }) => {
        assert.equal(err.responseCode, 451);
        return true;
      });
    } finally {
      await env.synapse.startProcess();
      bridge = await starting;
    }
    const posted = await alice.waitForEvent(room, (e) => String(e.content.body ?? "").includes("queued while down"), 60_000);
    assert.equal(posted.sender, "@email_bob=40example.org:localhost");
  });
});
