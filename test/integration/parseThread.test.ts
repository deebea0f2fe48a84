/**
 * The DATA-time parse in its worker thread (mail/inbound/parseThread.ts): the same parse as on
 * the event loop for every fixture, given the listener's skeleton alone; a message that takes
 * longer than the deadline fails as a MailParseError (the router's 554 5.6.0), the parses
 * caught in the stopped worker fail as temporary errors, and the next parse gets a new worker.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { parseMail } from "../../src/mail/inbound/parse.ts";
import { MailParseError, ParseThread } from "../../src/mail/inbound/parseThread.ts";
import { skeletonOf } from "../harness/smtpListener.ts";

// Every parse in the worker (the default parses small messages on the event loop).
const thread = new ParseThread({ timeoutMs: 30_000, onLoopMaxBytes: 0 });
after(() => thread.close());

/** An HTML-only message of about `mb` MB: seconds of mailparser and html-to-text work. */
function bigHtml(mb: number, id: string): Buffer {
  const row = '<tr><td style="color:red"><a href="https://example.org/x?y=1&amp;z=2"><b>bold</b></a> text &amp; more</td></tr>';
  const html = `<html><body><table>${row.repeat(Math.round((mb * 1e6) / row.length))}</table></body></html>`;
  return Buffer.from(`From: <a@example.org>\r\nMessage-ID: <${id}@example.org>\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n${html}\r\n`);
}

test("the worker's parse of the skeleton is the event loop's parse of the message, for every fixture", async () => {
  const dir = new URL("../fixtures/eml/", import.meta.url);
  const files = [
    ...(await readdir(dir)).filter((f) => f.endsWith(".eml")).map((f) => new URL(f, dir)),
    ...(await readdir(new URL("corpus/", dir))).filter((f) => f.endsWith(".eml")).map((f) => new URL(`corpus/${f}`, dir)),
  ];
  assert.ok(files.length >= 30, `fixtures found: ${files.length}`);
  for (const file of files) {
    const bytes = Buffer.from((await readFile(file)).toString("latin1").replace(/\r?\n/g, "\r\n"), "latin1");
    const skeleton = await skeletonOf(bytes);
    const onLoop = await parseMail(bytes, { attachments: "metadata", skeleton });
    const inWorker = await thread.parse(skeleton);
    assert.deepEqual(inWorker, onLoop, file.pathname);
    assert.equal(skeleton.length > 0, true, "the caller's buffer is still there (copied, not moved)");
  }
});

test("past the deadline: MailParseError for that message, a temporary error for the others in the worker, a new worker next", async () => {
  const short = new ParseThread({ timeoutMs: 300, onLoopMaxBytes: 0 });
  try {
    const slow = short.parse(bigHtml(4, "slow"));
    // Sent 100 ms later, so its own deadline is not yet reached when the worker is stopped.
    await new Promise((r) => setTimeout(r, 100));
    const bystander = short.parse(bigHtml(0.001, "bystander"));
    const [slowResult, bystanderResult] = await Promise.allSettled([slow, bystander]);
    assert.equal(slowResult.status, "rejected");
    assert.ok((slowResult as PromiseRejectedResult).reason instanceof MailParseError, String((slowResult as PromiseRejectedResult).reason));
    assert.match(String((slowResult as PromiseRejectedResult).reason), /longer than 300 ms/);
    assert.equal(((slowResult as PromiseRejectedResult).reason as MailParseError).timedOut, true);
    if (bystanderResult.status === "rejected") {
      assert.ok(!(bystanderResult.reason instanceof MailParseError), `a bystander's failure is temporary: ${String(bystanderResult.reason)}`);
    }
    const next = await short.parse(bigHtml(0.001, "next"));
    assert.equal(next.messageId, "next@example.org");
  } finally {
    await short.close();
  }
});

test("a message mailparser refuses is a MailParseError", async () => {
  // More than mailparser's 1000 MIME parts.
  const parts = Array.from({ length: 1100 }, (_, i) => `--b\r\nContent-Type: text/plain\r\n\r\npart ${i}\r\n`).join("");
  const raw = Buffer.from(`From: <a@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n${parts}--b--\r\n`);
  await assert.rejects(thread.parse(raw), MailParseError);
});

test("small messages are parsed on the event loop, with the same result and the same error type", async () => {
  const here = new ParseThread({ timeoutMs: 30_000 });
  try {
    const small = bigHtml(0.001, "small");
    assert.deepEqual(await here.parse(small), await thread.parse(small));
    const parts = Array.from({ length: 1100 }, (_, i) => `--b\r\nContent-Type: text/plain\r\n\r\np${i}\r\n`).join("");
    const refused = Buffer.from(`From: <a@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n${parts}--b--\r\n`);
    assert.ok(refused.length < 64 * 1024);
    await assert.rejects(here.parse(refused), MailParseError);
  } finally {
    await here.close();
  }
});
