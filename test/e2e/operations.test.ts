/**
 * End to end, operations: the running bridge (real Synapse, SQLite store) with
 * `metrics.enabled`, scraped over HTTP while a mail goes in and an answer goes out, its
 * /health, and the `queue` command run against the store of the running bridge.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { startEnv, runCli, MAIL_DOMAIN, type E2eEnv } from "./env.ts";

/** The value of one sample of the Prometheus text (0 when absent). */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  const want = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .join(",");
  const prefix = want ? `${name}{${want}} ` : `${name} `;
  const line = text.split("\n").find((l) => l.startsWith(prefix));
  return line === undefined ? 0 : Number(line.slice(prefix.length));
}

describe("operations end to end: metrics, health and the queue command on a running bridge", () => {
  let env: E2eEnv;
  let port: number;
  const scrape = async (): Promise<string> => {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`);
    assert.equal(res.status, 200);
    return res.text();
  };
  const until = async (what: string, check: () => Promise<boolean>): Promise<void> => {
    for (let i = 0; i < 200; i++) {
      if (await check()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.fail(`timed out waiting for ${what}`);
  };

  before(async () => {
    env = await startEnv("sqlite", { config: { metrics: { enabled: true, bind_address: "127.0.0.1", port: 0 } } });
    assert.ok(env.bridge.metricsPort, "the metrics listener runs");
    port = env.bridge.metricsPort;
  });
  after(async () => {
    await env?.stop();
  });

  it("a mail in and an answer out move the counters; /health is ok; the queue command reads the running bridge's store", async () => {
    const health = await fetch(`http://127.0.0.1:${port}/health`);
    assert.equal(health.status, 200);
    assert.deepEqual(((await health.json()) as { checks: unknown }).checks, { store: "ok", smtp: "ok", appservice: "ok" });

    const before = await scrape();
    const erin = await env.synapse.registerUser("erin", { displayName: "Erin" });
    const reply = await env.sendMail({ from: '"Grace Hopper" <grace@example.org>', to: `erin@${MAIL_DOMAIN}`, subject: "COBOL", text: "Have you tried it?" });
    assert.match(reply, /^250/);
    const ghost = "@email_grace=40example.org:localhost";
    const roomId = await erin.waitForInvite(30_000, (i) => i.inviter === ghost);
    await erin.join(roomId);
    const msg = await erin.waitForEvent(roomId, (e) => e.sender === ghost && e.type === "m.room.message");

    await until("the post to be counted", async () => sample(await scrape(), "meb_inbound_posts_total", { result: "posted" }) === 1);
    let text = await scrape();
    // EHLO, MAIL, RCPT, end of DATA.
    assert.ok(sample(text, "meb_smtp_replies_total", { code: "250" }) - sample(before, "meb_smtp_replies_total", { code: "250" }) >= 4);
    assert.equal(sample(text, "meb_smtp_replies_total", { code: "354" }) - sample(before, "meb_smtp_replies_total", { code: "354" }), 1);
    assert.equal(sample(text, "meb_inbound_post_latency_seconds_count"), 1);
    assert.equal(sample(text, "meb_queue_depth", { queue: "inbound" }), 0);
    assert.equal(sample(text, "meb_store_up"), 1);

    await erin.sendText(roomId, "Not yet!", { replyTo: msg.event_id });
    await env.sink.waitForMail((m) => m.rcptTo.includes("grace@example.org"));
    await until("the delivery to be counted", async () => sample(await scrape(), "meb_outbound_deliveries_total", { result: "sent" }) === 1);
    text = await scrape();
    assert.equal(sample(text, "meb_outbound_delivery_latency_seconds_count"), 1);
    assert.equal(sample(text, "meb_queue_depth", { queue: "outbound" }), 0);

    const [row] = await env.bridge.store.listInbound("posted", 1);
    assert.ok(row);
    const list = runCli(["queue", "list", "-c", env.configFile]);
    assert.match(list, new RegExp(`^${row.id} +posted +0 .* grace@example\\.org +${roomId.replace(/[.$]/g, "\\$&")}`, "m"));
    assert.match(list, /^\d+ +sent +1 .* grace@example\.org \(sent\)/m);
    const raw = runCli(["queue", "show", "inbound", String(row.id), "--raw", "-c", env.configFile]);
    assert.match(raw, /^Received: from /, "the stored mail with the bridge's Received header");
    assert.match(raw, /Have you tried it\?/);
  });
});
