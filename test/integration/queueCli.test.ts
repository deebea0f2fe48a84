/**
 * The `queue` command, run for real (`node src/main.ts queue ... -c config.yaml`) against a
 * SQLite store this test fills. The test keeps its own connection open the whole time, as
 * the running bridge would.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openStore } from "../../src/store/open.ts";
import type { BridgeStore, InboundRow, NewInbound, OutboundRow } from "../../src/store/Store.ts";
import { configureLogging } from "../../src/util/logger.ts";
import { newInbound } from "../harness/rows.ts";

if (!process.env.MEB_LOG_LEVEL) configureLogging({ level: "warn" });

const MAIN = new URL("../../src/main.ts", import.meta.url).pathname;

interface CliResult {
  status: number | null;
  stdout: Buffer;
  text: string;
  stderr: string;
}

/** Run the real CLI (as an admin would, not as a test-runner subprocess). */
function runCli(configFile: string, ...args: string[]): CliResult {
  const { NODE_TEST_CONTEXT: _, MEB_LOG_LEVEL: __, ...env } = process.env;
  const r = spawnSync(process.execPath, [MAIN, "queue", ...args, "-c", configFile], { env, timeout: 60_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, text: r.stdout.toString("utf8"), stderr: r.stderr.toString("utf8") };
}

/** The failure contract: the exit code, and one line on stderr naming the command, no stack trace. */
function assertFails(r: CliResult, status: number, pattern: RegExp): void {
  assert.equal(r.status, status, `exit code; stderr: ${r.stderr}`);
  assert.equal(r.stdout.length, 0, "nothing on stdout");
  const lines = r.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `one line: ${r.stderr}`);
  assert.match(lines[0]!, /^matrix-email-bridge: queue/);
  assert.match(lines[0]!, pattern);
}

/** Not valid UTF-8, every byte value, CRLF: `--raw` must give back exactly these bytes. */
const RAW = Buffer.concat([
  Buffer.from("From: Bob <bob@example.org>\r\nTo: alice@bridge.test\r\nSubject: =?utf-8?q?caf=C3=A9_au_lait?=\r\nMessage-ID: <m1@example.org>\r\n\r\n", "latin1"),
  Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
  Buffer.from([0xc3, 0x28, 0xff, 0xfe, 0x00, 0x0d, 0x0a]),
]);

function inbound(over: Partial<NewInbound> = {}): NewInbound {
  return newInbound({ messageId: "m1@example.org", raw: RAW, ...over });
}

describe("queue CLI", () => {
  let dir: string;
  let configFile: string;
  let store: BridgeStore;
  let pending: InboundRow;
  let failed: InboundRow;
  let posted: InboundRow;
  let bounced: OutboundRow;
  let deferred: OutboundRow;
  let sent: OutboundRow;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "meb-queue-cli-"));
    configFile = join(dir, "config.yaml");
    writeFileSync(
      configFile,
      [
        "homeserver: { url: 'http://127.0.0.1:8008', domain: hs.test }",
        "appservice: { url: 'http://127.0.0.1:8090' }",
        "mail: { domain: bridge.test }",
        "smtp: { hostname: mx.bridge.test }",
        "database: { sqlite_file: data/bridge.sqlite }",
        "",
      ].join("\n"),
    );
    store = await openStore({ url: null, sqliteFile: join(dir, "data", "bridge.sqlite") });
    pending = (await store.insertInbound(inbound({ messageId: "pending@x", contentHash: "p" }))).row;
    await store.markInboundRetry(pending.id, "homeserver unreachable: \u001b[31mECONNREFUSED\u001b[0m\nsecond line", Date.now() + 3_600_000);
    failed = (await store.insertInbound(inbound({ messageId: "failed@x", contentHash: "f", roomId: null, dmLocalUserId: "@alice:hs.test", senderVerified: false }))).row;
    await store.markInboundFailed(failed.id, "the homeserver refused the message: M_TOO_LARGE");
    posted = (await store.insertInbound(inbound({ messageId: "posted@x", contentHash: "o" }))).row;
    await store.markInboundPosted(posted.id, "$posted");

    const mail = (eventId: string) => ({
      roomId: "!room:hs.test",
      eventId,
      messageId: `${eventId.slice(1)}@bridge.test`,
      envelopeFrom: "alice@bridge.test",
      recipients: ["bob@example.org", "carol@example.net"],
      raw: Buffer.from(`From: alice@bridge.test\r\nSubject: mail ${eventId}\r\n\r\nhello\r\n`),
    });
    bounced = (await store.enqueueOutbound(mail("$bounced"))).row;
    await store.recordOutboundAttempt(
      bounced.id,
      [
        { address: "bob@example.org", state: "sent", code: 250, reply: "250 2.0.0 OK", nextAttemptAt: null },
        { address: "carol@example.net", state: "failed", code: 550, reply: "550 5.1.1 No such user", nextAttemptAt: null },
      ],
      Date.now(),
    );
    deferred = (await store.enqueueOutbound(mail("$deferred"))).row;
    const later = Date.now() + 3_600_000;
    await store.recordOutboundAttempt(
      deferred.id,
      ["bob@example.org", "carol@example.net"].map((address) => ({ address, state: "deferred" as const, code: 451, reply: "451 4.7.1 Greylisted", nextAttemptAt: later })),
      later,
    );
    sent = (await store.enqueueOutbound(mail("$sent"))).row;
    await store.recordOutboundAttempt(
      sent.id,
      ["bob@example.org", "carol@example.net"].map((address) => ({ address, state: "sent" as const, code: 250, reply: "250 OK", nextAttemptAt: null })),
      Date.now(),
    );
  });

  after(async () => {
    await store?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("list: both queues, newest first, with state, attempts, age, next attempt, addresses, room and last error", () => {
    const r = runCli(configFile, "list");
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, "", "nothing logged below warnings");
    const [inboundPart, outboundPart] = r.text.split("\n\n");
    assert.match(inboundPart!, /^Inbound mail, newest first: 3\n/);
    assert.match(inboundPart!, /ID +STATE +ATTEMPTS +AGE +NEXT ATTEMPT +FROM +ROOM +LAST ERROR/);
    const lines = inboundPart!.trimEnd().split("\n").slice(2);
    assert.deepEqual(lines.map((l) => Number(l.split(/\s+/)[0])), [posted.id, failed.id, pending.id]);
    const pendingLine = lines[2]!;
    assert.match(pendingLine, new RegExp(`^${pending.id} +pending +1 +\\d+s +in (59m|1h) +bob@example\\.org +!room:hs\\.test +homeserver unreachable:`));
    assert.ok(!r.text.includes("\u001b"), "control characters from stored text are cleaned");
    assert.match(pendingLine, / \[31mECONNREFUSED \[0m second line$/);
    assert.match(lines[1]!, new RegExp(`^${failed.id} +failed +1 .* bob@example\\.org \\(unverified\\) +new DM with @alice:hs\\.test +the homeserver refused the message: M_TOO_LARGE$`));
    assert.match(outboundPart!, /^Outbound mail, newest first: 3\n/);
    assert.match(outboundPart!, new RegExp(`\\n${bounced.id} +bounced +1 .* bob@example\\.org \\(sent\\), carol@example\\.net \\(failed\\) +!room:hs\\.test +carol@example\\.net: 550 5\\.1\\.1 No such user`));
    assert.match(outboundPart!, new RegExp(`\\n${deferred.id} +deferred +1 +\\d+s +in (59m|1h) +bob@example\\.org \\(deferred\\), carol@example\\.net \\(deferred\\)`));
  });

  it("list: one queue, by state, with a limit", () => {
    const r = runCli(configFile, "list", "inbound", "--state", "failed");
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.text, /^Inbound mail \(failed\), newest first: 1\n/);
    assert.doesNotMatch(r.text, /Outbound/);
    const limited = runCli(configFile, "list", "outbound", "--limit", "1");
    assert.match(limited.text, /^Outbound mail, newest first: 1 shown \(--limit 1; there may be more\)\n/);
    assert.match(limited.text, new RegExp(`\\n${sent.id} +sent `));
    const none = runCli(configFile, "list", "--state", "queued");
    assert.equal(none.text, "Outbound mail (queued), newest first: none\n", "a state of one queue lists that queue only");
  });

  it("show: every field of an inbound mail, the subject decoded", () => {
    const r = runCli(configFile, "show", "inbound", String(failed.id));
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.text, new RegExp(`^Inbound mail ${failed.id}\\n`));
    for (const line of [
      /  state: +failed\n/,
      /  attempts: +1\n/,
      /  received: +\d{4}-\d\d-\d\dT[\d:.]+Z \(\d+s ago\)\n/,
      /  last error: +the homeserver refused the message: M_TOO_LARGE\n/,
      /  sender: +bob@example\.org \(unverified\)\n/,
      /  envelope from: +<bob@example\.org>\n/,
      /  room: +- \(a DM portal is made for it\)\n/,
      /  dm user: +@alice:hs\.test\n/,
      /  message-id: +<failed@x>\n/,
      /  subject: +café au lait\n/,
      /  auth: +spf=pass dkim=pass dmarc=pass arc=none verified=true\n/,
      new RegExp(`  message: +${RAW.length} bytes \\(queue show inbound ${failed.id} --raw writes it\\)\\n`),
    ]) {
      assert.match(r.text, line);
    }
  });

  it("show --raw: exactly the stored bytes, nothing else, so an undeliverable mail can be taken out", () => {
    const r = runCli(configFile, "show", "inbound", String(failed.id), "--raw");
    assert.equal(r.status, 0, r.stderr);
    assert.ok(r.stdout.equals(RAW), "byte for byte");
    const out = runCli(configFile, "show", "outbound", String(bounced.id), "--raw");
    assert.equal(out.text, `From: alice@bridge.test\r\nSubject: mail $bounced\r\n\r\nhello\r\n`);
  });

  it("show: an outbound mail with each recipient's state and last reply", () => {
    const r = runCli(configFile, "show", "outbound", String(bounced.id));
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.text, /  state: +bounced\n/);
    assert.match(r.text, /  event: +\$bounced\n/);
    assert.match(r.text, /  envelope from: +<alice@bridge\.test>\n/);
    assert.match(r.text, /  subject: +mail \$bounced\n/);
    assert.match(r.text, /Recipients:\nADDRESS +STATE +ATTEMPTS +NEXT ATTEMPT +LAST REPLY\n/);
    assert.match(r.text, /bob@example\.org +sent +1 +- +250 2\.0\.0 OK\n/);
    assert.match(r.text, /carol@example\.net +failed \(not reported yet\) +1 +- +550 5\.1\.1 No such user\n/);
  });

  it("retry: a failed inbound mail and a bounced outbound mail are due now", async () => {
    const r = runCli(configFile, "retry", "inbound", String(failed.id));
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.text, new RegExp(`^inbound mail ${failed.id} is due now`));
    const row = await store.getInbound(failed.id);
    assert.equal(row?.state, "pending");
    assert.ok(row!.nextAttemptAt <= Date.now());

    const o = runCli(configFile, "retry", "outbound", String(bounced.id));
    assert.equal(o.status, 0, o.stderr);
    const mail = await store.getOutboundById(bounced.id);
    assert.equal(mail?.state, "deferred");
    assert.deepEqual(mail?.recipients, ["carol@example.net"], "the accepted recipient is not sent to again");
    assert.ok(mail!.nextAttemptAt <= Date.now());
  });

  it("retry: refuses, with one line and exit code 1, what was posted or sent and what does not exist", () => {
    assertFails(runCli(configFile, "retry", "inbound", String(posted.id)), 1, /inbound mail \d+ is posted \(event \$posted\); nothing to retry$/);
    assertFails(runCli(configFile, "retry", "outbound", String(sent.id)), 1, /was sent to every recipient; nothing to retry$/);
    assertFails(runCli(configFile, "retry", "inbound", "999999"), 1, /there is no inbound mail 999999$/);
  });

  it("drop: asks for --yes (exit code 2, nothing deleted), then deletes; never a posted or sent mail", async () => {
    assertFails(runCli(configFile, "drop", "inbound", String(pending.id)), 2, /this deletes inbound mail \d+ \(pending, from bob@example\.org, .*\) .*--raw > mail-\d+\.eml", then add --yes$/);
    assert.ok(await store.getInbound(pending.id), "still there");
    const r = runCli(configFile, "drop", "inbound", String(pending.id), "--yes");
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.text, `inbound mail ${pending.id} deleted\n`);
    assert.equal(await store.getInbound(pending.id), null);

    assertFails(runCli(configFile, "drop", "outbound", String(deferred.id)), 2, /add --yes$/);
    assert.equal(runCli(configFile, "drop", "outbound", String(deferred.id), "--yes").status, 0);
    assert.equal(await store.getOutboundById(deferred.id), null);
    assert.deepEqual(await store.listOutboundRecipients(deferred.id), []);

    assertFails(runCli(configFile, "drop", "inbound", String(posted.id), "--yes"), 1, /was posted \(event \$posted\); only mail not posted can be dropped$/);
    assertFails(runCli(configFile, "drop", "outbound", String(sent.id), "--yes"), 1, /was sent; only mail not sent can be dropped$/);
    assertFails(runCli(configFile, "show", "outbound", String(deferred.id)), 1, /there is no outbound mail \d+$/);
  });

  it("bad command lines: one line, exit code 2, before the store is opened", () => {
    assertFails(runCli(configFile), 2, /needs an action/);
    assertFails(runCli(configFile, "list", "sideways"), 2, /"sideways" is neither inbound nor outbound/);
    assertFails(runCli(configFile, "show", "inbound"), 2, /needs the ID/);
    assertFails(runCli(configFile, "show", "inbound", "12x"), 2, /the ID must be a positive whole number/);
    assertFails(runCli(configFile, "list", "--limit", "0"), 2, /--limit must be a whole number/);
    assertFails(runCli(configFile, "list", "inbound", "--state", "bounced"), 2, /unknown state "bounced" \(inbound: pending, posted, failed\)/);
    assertFails(runCli(configFile, "retry", "inbound", "1", "--yes"), 2, /--yes goes with queue drop only/);
    assertFails(runCli(configFile, "purge"), 2, /unknown action "purge"/);
    const missing = join(dir, "missing.yaml");
    writeFileSync(missing, "homeserver: { url: 'http://127.0.0.1:8008', domain: hs.test }\nappservice: { url: 'http://127.0.0.1:8090' }\nmail: { domain: bridge.test }\nsmtp: { hostname: mx.bridge.test }\ndatabase: { sqlite_file: nowhere/bridge.sqlite }\n");
    assertFails(runCli(missing, "list"), 1, /there is no store at .*nowhere\/bridge\.sqlite \(database\.sqlite_file\)/);
  });
});
