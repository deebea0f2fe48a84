/**
 * End to end, the homeserver goes away mid-burst: Synapse is stopped for 90 s while 100 mails
 * arrive for a room mailbox and a personal mailbox, then started again. Every mail that got 250
 * appears exactly once, in the order it was accepted; mail refused with 4xx while Synapse was
 * down (personal mailboxes need the homeserver to say the user exists) is resent by the test, as
 * an MTA would, and also appears once. The bridge's retry delays are shortened through config
 * (`inbound.retry_base_ms`, `inbound.retry_max_ms`); the outage is not. Then a mail with a 3 MiB
 * attachment (stored in chunks, uploaded as a stream) is accepted while Synapse is down again,
 * and is posted once, byte for byte, when it is back; a follow-up accepted right after it, before
 * its parent could be posted, is posted in the parent's thread.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createMailboxRoom, startEnv, MAIL_DOMAIN, type E2eEnv } from "./env.ts";
import type { MatrixEvent, MatrixTestClient } from "../harness/matrixClient.ts";

const BOB = "@email_bob=40example.org:localhost";
const OUTAGE_MS = 90_000;
const MAILS = 100;

describe("homeserver outage during a burst (PostgreSQL store)", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let dora: MatrixTestClient;
  let teamRoom: string;

  before(async () => {
    env = await startEnv("postgres", {
      allowedUsers: ["@alice:localhost", "@dora:localhost"],
      config: { inbound: { retry_base_ms: 500, retry_max_ms: 5000 } },
    });
    alice = await env.synapse.registerUser("alice");
    dora = await env.synapse.registerUser("dora");
    teamRoom = await createMailboxRoom(alice, "team", "Team");
  });
  after(async () => {
    await env?.stop();
  });

  it("every accepted mail appears exactly once, in order; refused ones are resent and appear once", async () => {
    const accepted: Record<string, number[]> = { team: [], dora: [] };
    const refused: number[] = [];
    const send = async (n: number): Promise<void> => {
      const mailbox = n % 2 === 0 ? "team" : "dora";
      try {
        const reply = await env.sendMail({ from: "Bob <bob@example.org>", to: `${mailbox}@${MAIL_DOMAIN}`, subject: `burst ${n}`, text: `burst body ${n}` });
        assert.match(reply, /^250 /);
        accepted[mailbox]!.push(n);
      } catch (err) {
        const e = err as { responseCode?: number; response?: string };
        assert.ok(e.responseCode !== undefined && e.responseCode >= 400 && e.responseCode < 500, `only temporary refusals are allowed, got ${e.response ?? String(err)}`);
        refused.push(n);
      }
    };

    // The first 20 while the homeserver is up (the DM portal gets made), the rest while it is down.
    for (let n = 0; n < 20; n++) await send(n);
    await env.synapse.stopProcess();
    const downAt = Date.now();
    for (let n = 20; n < MAILS; n++) await send(n);
    assert.ok(accepted.team!.length >= 50, "room mailbox mail is accepted while the homeserver is down");
    await new Promise((r) => setTimeout(r, Math.max(0, OUTAGE_MS - (Date.now() - downAt))));
    await env.synapse.startProcess();
    // The sending MTA retries what it was told to retry.
    for (const n of refused.splice(0)) await send(n);
    assert.deepEqual(refused, [], "nothing is refused once the homeserver is back");

    const dmRoom = await dora.waitForInvite(120_000, (i) => i.inviter === BOB);
    await dora.join(dmRoom);
    const bursts = async (client: MatrixTestClient, roomId: string, expected: number): Promise<number[]> => {
      const deadline = Date.now() + 180_000;
      for (;;) {
        const events: MatrixEvent[] = (await client.getRoomMessages(roomId, { limit: 200 })).reverse();
        const seen = events.filter((e) => e.sender === BOB && e.type === "m.room.message").map((e) => Number(/burst body (\d+)/.exec(String(e.content.body))?.[1]));
        if (seen.length >= expected || Date.now() > deadline) return seen;
        await new Promise((r) => setTimeout(r, 1000));
      }
    };
    assert.deepEqual(await bursts(alice, teamRoom, accepted.team!.length), accepted.team, "room mailbox: each mail once, in the order of its 250");
    assert.deepEqual(await bursts(dora, dmRoom, accepted.dora!.length), accepted.dora, "personal mailbox: each mail once, in the order of its 250");
    assert.equal(accepted.team!.length + accepted.dora!.length, MAILS);
    const stuck = await env.bridge.store.listPendingInbound(10);
    assert.deepEqual(stuck.map((r) => r.id), [], "nothing left in the queue");
  });

  it("a 3 MiB attachment accepted while the homeserver is down (stored in chunks, streamed on upload) appears once, byte for byte", async () => {
    const data = Buffer.from(Array.from({ length: 3 * 1024 * 1024 + 5 }, (_, i) => (i * 17 + (i >> 10)) % 256));
    const raw = [
      "From: Bob <bob@example.org>",
      `To: team@${MAIL_DOMAIN}`,
      "Subject: scan during the outage",
      "Message-ID: <outage-scan@example.org>",
      "MIME-Version: 1.0",
      'Content-Type: multipart/mixed; boundary="s"',
      "",
      "--s",
      "Content-Type: text/plain",
      "",
      "The scan is attached.",
      "--s",
      'Content-Type: application/pdf; name="scan.pdf"',
      'Content-Disposition: attachment; filename="scan.pdf"',
      "Content-Transfer-Encoding: base64",
      "",
      ...(data.toString("base64").match(/.{1,76}/g) ?? []),
      "--s--",
      "",
    ].join("\r\n");
    await env.synapse.stopProcess();
    assert.match(await env.sendRaw(raw, { from: "bob@example.org", to: `team@${MAIL_DOMAIN}` }), /^250 /);
    // Bob follows up before the first mail could be posted: at DATA time its parent is not in
    // the room yet, so the reply finds it when it is posted.
    const followUp = ["From: Bob <bob@example.org>", `To: team@${MAIL_DOMAIN}`, "Subject: Re: scan during the outage", "Message-ID: <outage-scan-2@example.org>", "In-Reply-To: <outage-scan@example.org>", "References: <outage-scan@example.org>", "", "Page 2 follows.", ""].join("\r\n");
    assert.match(await env.sendRaw(followUp, { from: "bob@example.org", to: `team@${MAIL_DOMAIN}` }), /^250 /);
    // Several posting attempts fail against the stopped homeserver (retry_base_ms 500).
    await new Promise((r) => setTimeout(r, 5000));
    const [pending] = await env.bridge.store.listPendingInbound(10);
    assert.ok(pending && pending.attempts >= 1, "the mail waits in the queue, its attempts counted");
    await env.synapse.startProcess();
    const file = await alice.waitForEvent(teamRoom, (e) => e.sender === BOB && e.content.body === "scan.pdf", 120_000);
    assert.deepEqual(file.content.info, { mimetype: "application/pdf", size: data.length });
    const [server, id] = String(file.content.url).replace("mxc://", "").split("/");
    const res = await fetch(`${env.synapse.url}/_matrix/client/v1/media/download/${server}/${id}`, { headers: { authorization: `Bearer ${alice.accessToken}` } });
    assert.equal(res.status, 200);
    assert.ok(Buffer.from(await res.arrayBuffer()).equals(data), "the file is the attachment, byte for byte");
    const deadline = Date.now() + 60_000;
    while ((await env.bridge.store.listPendingInbound(10)).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 500));
    const events = (await alice.getRoomMessages(teamRoom, { limit: 200 })).filter((e) => e.sender === BOB);
    assert.equal(events.filter((e) => e.content.body === "scan.pdf").length, 1, "the file is posted once");
    const message = events.filter((e) => String(e.content.body).includes("The scan is attached."));
    assert.equal(message.length, 1, "the message is posted once");
    const reply = events.find((e) => String(e.content.body).includes("Page 2 follows."));
    assert.equal((reply?.content["m.relates_to"] as { rel_type?: string; event_id?: string } | undefined)?.event_id, message[0]!.event_id, "the follow-up is in the first mail's thread");
  });
});
