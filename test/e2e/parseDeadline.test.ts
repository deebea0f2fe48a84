/**
 * A mail built to take long to parse (megabytes of HTML) is parsed beside the event loop with a
 * deadline (`smtp.parse_timeout_ms`, mail/inbound/parseThread.ts): past it the sender gets
 * 554 5.6.0, nothing is posted, and mail arriving meanwhile is taken and posted as usual.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createMailboxRoom, MAIL_DOMAIN, startEnv, type E2eEnv } from "./env.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";

describe("the parse deadline", () => {
  let env: E2eEnv;
  let alice: MatrixTestClient;
  let roomId: string;

  before(async () => {
    env = await startEnv("sqlite", { allowedUsers: ["@alice:localhost"], config: { smtp: { parse_timeout_ms: 400 } } });
    alice = await env.synapse.registerUser("alice", { displayName: "Alice" });
    roomId = await createMailboxRoom(alice, "parse", "Parse");
  });
  after(async () => {
    await env?.stop();
  });

  it("megabytes of HTML past smtp.parse_timeout_ms: 554 5.6.0 and nothing posted; a mail sent meanwhile is posted", async () => {
    const row = '<tr><td style="color:red"><a href="https://example.org/x?y=1&amp;z=2"><b>bold</b></a> text &amp; more</td></tr>';
    const html = `<html><body><table>${row.repeat(40_000)}</table></body></html>`;
    const heavy = Buffer.from(
      ["From: Bob <bob@example.org>", `To: <parse@${MAIL_DOMAIN}>`, "Subject: heavy", "Message-ID: <heavy.1@example.org>", "MIME-Version: 1.0", "Content-Type: text/html; charset=utf-8", "", html, ""].join("\r\n"),
    );
    const heavyReply = env.sendRaw(heavy, { from: "bob@example.org", to: `parse@${MAIL_DOMAIN}` }).then(
      (r) => r,
      (err: unknown) => String((err as { response?: string }).response ?? err),
    );
    const light = await env.sendMail({ from: "Carol <carol@example.org>", to: `parse@${MAIL_DOMAIN}`, subject: "light", text: "A short note." });
    assert.match(light, /^250 /);
    assert.match(await heavyReply, /^554 5\.6\.0 .*longer than 400 ms/);
    await alice.waitForEvent(roomId, (e) => e.type === "m.room.message" && String(e.content.body).includes("A short note."));
    const events = await alice.getRoomMessages(roomId, { limit: 30 });
    assert.ok(!events.some((e) => String(e.content.body ?? "").includes("heavy")), "the heavy mail is not posted");
  });
});
