/**
 * A crash at the worst moment: the bridge runs as a real process (`matrix-email-bridge start`)
 * on the embedded SQLite store, answers 250 to a burst of mails, and is SIGKILLed right after
 * the last 250, while mail is still being posted. After a restart every mail that got a 250
 * is in the room exactly once.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { prepareEnv, MAIL_DOMAIN, type PreparedEnv } from "./env.ts";

/** Every bridge process started, killed at the end whatever happened. */
const children: ChildProcess[] = [];

interface BridgeProcess {
  child: ChildProcess;
  smtpPort: number;
  output: () => string;
}

/** Start `node src/main.ts start -c <config>` and wait for its "bridge started" line. */
function spawnBridge(configFile: string): Promise<BridgeProcess> {
  const main = new URL("../../src/main.ts", import.meta.url).pathname;
  // NODE_TEST_CONTEXT would make the child behave as a test-runner subprocess.
  const { NODE_TEST_CONTEXT: _, ...parentEnv } = process.env;
  const child = spawn(process.execPath, [main, "start", "-c", configFile], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...parentEnv, MEB_LOG_LEVEL: "info" },
  });
  children.push(child);
  let out = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`bridge did not start within 30 s:\n${out}`)), 30_000);
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const m = /bridge started .*smtp="127\.0\.0\.1:(\d+)"/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, smtpPort: Number(m[1]), output: () => out });
      }
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`bridge exited with ${code} before starting:\n${out}`));
    });
  });
}

describe("crash after 250 (embedded SQLite store, bridge as a process)", () => {
  let env: PreparedEnv;

  before(async () => {
    env = await prepareEnv("sqlite", { logLevel: "info" });
  });
  after(async () => {
    for (const c of children) c.kill("SIGKILL");
    await env?.stop();
  });

  it("every mail answered with 250 is posted exactly once after a SIGKILL and a restart", async (t) => {
    const heidi = await env.synapse.registerUser("heidi");
    const first = await spawnBridge(env.configFile);
    env.smtpPort = first.smtpPort;
    const count = 5;
    const sends = [];
    for (let i = 1; i <= count; i++) {
      sends.push(env.sendMail({ from: "Ivan <ivan@example.org>", to: `heidi@${MAIL_DOMAIN}`, subject: `Note ${i}`, text: `crash test mail ${i}`, messageId: `crash-${i}@example.org` }));
    }
    const replies = await Promise.all(sends);
    first.child.kill("SIGKILL");
    await new Promise((r) => first.child.once("exit", r));
    for (const r of replies) assert.match(r, /^250/);
    const postedBeforeKill = (first.output().match(/mail posted/g) ?? []).length;
    t.diagnostic(`posted before the kill: ${postedBeforeKill} of ${count}`);

    await spawnBridge(env.configFile);
    const ghost = "@email_ivan=40example.org:localhost";
    const roomId = await heidi.waitForInvite(30_000, (i) => i.inviter === ghost);
    await heidi.join(roomId);
    for (let i = 1; i <= count; i++) {
      await heidi.waitForEvent(roomId, (e) => e.sender === ghost && String(e.content.body).includes(`crash test mail ${i}`));
    }
    // Give a duplicate the time to show up, then count.
    await new Promise((r) => setTimeout(r, 1500));
    const events = await heidi.getRoomMessages(roomId, { limit: 100 });
    for (let i = 1; i <= count; i++) {
      const copies = events.filter((e) => e.type === "m.room.message" && String(e.content.body).includes(`crash test mail ${i}`));
      assert.equal(copies.length, 1, `mail ${i} posted ${copies.length} times`);
    }
    const invites = (await heidi.joinedRooms()).length;
    assert.equal(invites, 1, "one DM portal");
  });
});

describe("crash while a batched mail waits (embedded SQLite store, bridge as a process)", () => {
  let env: PreparedEnv;
  const DELAY_MS = 4000;

  before(async () => {
    env = await prepareEnv("sqlite", { logLevel: "info", allowedUsers: ["@judy:localhost"], config: { outbound: { batch_delay_ms: DELAY_MS } } });
  });
  after(async () => {
    for (const c of children) c.kill("SIGKILL");
    await env?.stop();
  });

  it("messages held for batching survive a SIGKILL: after the restart they go out once, as one mail, in order", async () => {
    const judy = await env.synapse.registerUser("judy", { displayName: "Judy" });
    const first = await spawnBridge(env.configFile);
    const ghost = "@email_kim=40example.org:localhost";
    const roomId = await judy.createRoom({ preset: "private_chat", name: "Held" });
    await judy.invite(roomId, ghost);
    await judy.waitForMembership(roomId, ghost, "join");

    for (let i = 1; i <= 3; i++) await judy.sendText(roomId, `held part ${i} (batch-crash)`);
    // Well inside the batching window: whether the bridge had taken the messages into the open
    // mail or they were still in its journal, nothing may be lost or sent twice.
    await new Promise((r) => setTimeout(r, 1500));
    first.child.kill("SIGKILL");
    await new Promise((r) => first.child.once("exit", r));
    assert.equal(env.sink.mails.filter((m) => m.raw.includes("(batch-crash)")).length, 0, "nothing left before the window closed");

    await spawnBridge(env.configFile);
    const sent = await env.sink.waitForMail((m) => m.raw.includes("(batch-crash)"), 60_000);
    await new Promise((r) => setTimeout(r, DELAY_MS + 1500));
    const mails = env.sink.mails.filter((m) => m.raw.includes("(batch-crash)"));
    assert.equal(mails.length, 1, `one mail, got ${mails.length}`);
    const text = sent.raw.toString("utf8");
    const at = [1, 2, 3].map((i) => text.indexOf(`held part ${i} (batch-crash)`));
    assert.ok(at.every((p) => p >= 0) && at[0]! < at[1]! && at[1]! < at[2]!, `all three parts, in order: ${at.join(", ")}`);
    for (let i = 1; i <= 3; i++) assert.equal(text.split(`held part ${i} (batch-crash)`).length - 1, 1, `part ${i} once (plain text: one part)`);
  });
});
