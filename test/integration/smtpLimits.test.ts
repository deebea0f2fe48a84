/**
 * The SMTP listener's limits (issue 6), over real SMTP on loopback: each test crosses one
 * limit and asserts the exact reply (basic code and RFC 3463 enhanced code) and that the
 * handler's `deliver` was never called for it. DNSBL lookups go through the bridge's real
 * resolver to a real DNS server on loopback (test/harness/dns.ts); nothing is stubbed.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { configureLogging } from "../../src/util/logger.ts";
import { DnsResolver } from "../../src/mail/dns.ts";
import { SmtpListener } from "../../src/mail/inbound/SmtpListener.ts";
import { startDnsServer } from "../harness/dns.ts";
import type { TestDns } from "../harness/dns.ts";
import {
  MAIL_DOMAIN, RawClient, RecordingHandler, checkCertificateRenewal, subjectOfNextSession, delay, makeCert, testWithOpenssl, smtpListenerConfig, startSmtpListener,
} from "../harness/smtpListener.ts";

const logLines: string[] = [];
configureLogging({ level: "debug", format: "json", write: (line) => logLines.push(line) });

function logged(msg: string): Record<string, unknown>[] {
  return logLines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === msg);
}

/** One complete transaction on an open, greeted session; returns the reply to the final dot. */
async function transaction(c: RawClient, message: string | Buffer, to = "room@bridge.test", from = "alice@example.org"): Promise<string[]> {
  assert.deepEqual(await c.command(`MAIL FROM:<${from}>`), ["250 2.1.0 Accepted"]);
  assert.deepEqual(await c.command(`RCPT TO:<${to}>`), ["250 2.1.5 Accepted"]);
  assert.deepEqual(await c.command("DATA"), ["354 End data with <CR><LF>.<CR><LF>"]);
  c.write(typeof message === "string" ? message : message.toString("latin1"));
  c.write("\r\n.\r\n");
  return c.reply();
}

/** Send one message on a new session; returns the reply to the final dot. */
async function sendOne(port: number, message: string, localAddress?: string): Promise<string[]> {
  const c = await RawClient.open(port, localAddress);
  try {
    await c.hello();
    return await transaction(c, message);
  } finally {
    c.close();
  }
}

const SIMPLE = "From: a@example.org\r\nTo: room@bridge.test\r\nSubject: hi\r\n\r\nhello";

describe("connection limits (421 4.7.0)", () => {
  test("per client IP: idle sockets of one address cannot take the slots of another", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { max_clients: 10, max_connections_per_ip: 3 });
    const idle: RawClient[] = [];
    try {
      // 30 sockets from 127.0.0.2 (the issue had 300 fill 200 slots): 3 get in, 27 are refused.
      const opened = await Promise.all(Array.from({ length: 30 }, () => RawClient.open(port, "127.0.0.2")));
      idle.push(...opened);
      const first = await Promise.all(idle.map((c) => c.reply()));
      const greeted = first.filter((r) => /^220 /.test(r[0] ?? ""));
      const refused = first.filter((r) => !/^220 /.test(r[0] ?? ""));
      assert.equal(greeted.length, 3);
      assert.equal(refused.length, 27);
      for (const r of refused) assert.deepEqual(r, ["421 4.7.0 too many connections from 127.0.0.2, try again later"]);
      await Promise.all(idle.filter((_, i) => !/^220 /.test(first[i]![0] ?? "")).map((c) => c.waitClosed()));

      // Another address still gets in and delivers.
      assert.deepEqual(await sendOne(port, SIMPLE, "127.0.0.1"), ["250 2.0.0 OK: message accepted for delivery"]);
      assert.equal(handler.deliveries.length, 1);
      assert.equal(handler.deliveries[0]!.envelope.remoteAddress, "127.0.0.1");

      // A closed session frees its slot.
      const oneGreeted = idle.find((_, i) => /^220 /.test(first[i]![0] ?? ""))!;
      oneGreeted.close();
      await delay(100);
      const again = await RawClient.open(port, "127.0.0.2");
      idle.push(again);
      assert.match((await again.reply())[0] ?? "", /^220 /);
    } finally {
      for (const c of idle) c.close();
      await listener.close();
    }
    assert.equal(logged("smtp connection refused").filter((l) => l.client === "127.0.0.2").length, 27);
  });

  test("in total: over max_clients the reply is exactly 421 4.7.0 and the connection closes", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { max_clients: 2, max_connections_per_ip: 20 });
    const a = await RawClient.open(port, "127.0.0.2");
    const b = await RawClient.open(port, "127.0.0.3");
    try {
      await a.hello();
      await b.hello();
      const c = await RawClient.open(port, "127.0.0.4");
      try {
        assert.deepEqual(await c.reply(), ["421 4.7.0 too many connections, try again later"]);
        await c.waitClosed();
      } finally {
        c.close();
      }
    } finally {
      a.close();
      b.close();
      await listener.close();
    }
    assert.equal(handler.deliveries.length, 0);
  });
});

describe("smtp-server's own client limit (backstop at 2 × max_clients + 100 sockets)", () => {
  test("its 421 carries an enhanced code too", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { max_clients: 1, max_connections_per_ip: 1000 });
    const clients: RawClient[] = [];
    try {
      // 110 sockets at once, all open before the first is greeted (100 ms early-talker wait): the
      // ones past 102 meet smtp-server's check, the first 102 the listener's (one greeted).
      clients.push(...(await Promise.all(Array.from({ length: 110 }, () => RawClient.open(port)))));
      const first = (await Promise.all(clients.map((c) => c.reply()))).map((r) => r.join("\n"));
      const counts = new Map<string, number>();
      for (const r of first) counts.set(r, (counts.get(r) ?? 0) + 1);
      const backstop = "421 4.4.2 mx.bridge.test Too many connected clients, try again in a moment";
      assert.deepEqual(
        new Set(counts.keys()),
        new Set(["220 mx.bridge.test ESMTP matrix-email-bridge", "421 4.7.0 too many connections, try again later", backstop]),
        JSON.stringify([...counts]),
      );
      assert.equal(counts.get("220 mx.bridge.test ESMTP matrix-email-bridge"), 1);
      assert.ok((counts.get(backstop) ?? 0) >= 1);
    } finally {
      for (const c of clients) c.close();
      await listener.close();
    }
  });
});

describe("message rate limits (451 4.7.1 at MAIL FROM)", () => {
  test("per client IP per window", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { max_messages_per_ip: 2, rate_window_ms: 60_000 });
    const c = await RawClient.open(port);
    try {
      await c.hello();
      for (let i = 0; i < 2; i++) {
        assert.deepEqual(await c.command("MAIL FROM:<a@example.org>"), ["250 2.1.0 Accepted"]);
        assert.deepEqual(await c.command("RSET"), ["250 2.0.0 Flushed"]);
      }
      assert.deepEqual(await c.command("MAIL FROM:<b@example.net>"), ["451 4.7.1 too many messages from 127.0.0.1, try again later"]);
      assert.deepEqual(await c.command("RCPT TO:<room@bridge.test>"), ["503 5.5.1 Error: need MAIL command"]);
    } finally {
      c.close();
    }
    // Another address has its own budget.
    assert.deepEqual(await sendOne(port, SIMPLE, "127.0.0.2"), ["250 2.0.0 OK: message accepted for delivery"]);
    await listener.close();
    assert.equal(handler.deliveries.length, 1);
    assert.equal(handler.deliveries[0]!.envelope.remoteAddress, "127.0.0.2");
  });

  test("per sender domain per window (case-insensitive); other domains and <> unaffected", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { max_messages_per_sender_domain: 2, max_messages_per_ip: 100 });
    const c = await RawClient.open(port);
    try {
      await c.hello();
      for (const from of ["a@example.org", "b@EXAMPLE.org"]) {
        assert.deepEqual(await c.command(`MAIL FROM:<${from}>`), ["250 2.1.0 Accepted"]);
        assert.deepEqual(await c.command("RSET"), ["250 2.0.0 Flushed"]);
      }
      assert.deepEqual(await c.command("MAIL FROM:<c@example.org>"), ["451 4.7.1 too many messages from senders at example.org, try again later"]);
      assert.deepEqual(await c.command("MAIL FROM:<c@example.net>"), ["250 2.1.0 Accepted"]);
      assert.deepEqual(await c.command("RSET"), ["250 2.0.0 Flushed"]);
      assert.deepEqual(await c.command("MAIL FROM:<>"), ["250 2.1.0 Accepted"]);
    } finally {
      c.close();
      await listener.close();
    }
    assert.equal(handler.deliveries.length, 0);
  });
});

describe("message content limits (while DATA streams)", () => {
  const handler = new RecordingHandler();
  let listener: SmtpListener<string>;
  let port: number;

  // Default limits (64 KiB header, 50 hops, 500 parts, depth 20); 4 MiB messages.
  before(async () => {
    ({ listener, port } = await startSmtpListener(handler));
  });
  after(async () => {
    await listener.close();
  });

  test("a 1 MiB header section gets 552 5.3.4 (not 451); the session goes on", async () => {
    handler.deliveries = [];
    const header = ("X-Filler: " + "h".repeat(1000) + "\r\n").repeat(1049);
    assert.ok(header.length > 1024 * 1024);
    const c = await RawClient.open(port);
    try {
      await c.hello();
      assert.deepEqual(await transaction(c, header + "\r\nbody"), ["552 5.3.4 message header section exceeds fixed maximum size of 65536 bytes"]);
      // The stream was consumed to its end: the next transaction works.
      assert.deepEqual(await transaction(c, SIMPLE), ["250 2.0.0 OK: message accepted for delivery"]);
    } finally {
      c.close();
    }
    assert.equal(handler.deliveries.length, 1);
    assert.ok(handler.deliveries[0]!.raw.toString().startsWith("From: a@example.org"));
  });

  test("a header section of exactly 64 KiB is accepted", async () => {
    handler.deliveries = [];
    let header = "Subject: exact\r\n";
    while (header.length + 1002 <= 65536) header += "X-Filler: " + "h".repeat(990) + "\r\n";
    header += "X-Last: " + "z".repeat(65536 - header.length - 10) + "\r\n";
    assert.equal(header.length, 65536);
    assert.deepEqual(await sendOne(port, header + "\r\nbody"), ["250 2.0.0 OK: message accepted for delivery"]);
    assert.equal(handler.deliveries.length, 1);
  });

  test("51 Received headers (a loop) get 554 5.4.6; 50 are accepted", async () => {
    handler.deliveries = [];
    const rcvd = (n: number): string =>
      Array.from({ length: n }, (_, i) => `Received: from hop${i}.example.org\r\n\tby mx${i}.example.org; Mon, 1 Jan 2024 00:00:00 +0000\r\n`).join("");
    assert.deepEqual(await sendOne(port, rcvd(51) + SIMPLE), ["554 5.4.6 routing loop detected: more than 50 Received headers"]);
    assert.equal(handler.deliveries.length, 0);
    assert.deepEqual(await sendOne(port, rcvd(50) + SIMPLE), ["250 2.0.0 OK: message accepted for delivery"]);
    assert.equal(handler.deliveries.length, 1);
  });

  test("501 MIME parts get 552 5.6.0; 500 are accepted", async () => {
    handler.deliveries = [];
    const parts = (leaves: number): string => {
      let body = "";
      for (let i = 0; i < leaves; i++) body += `--sep\r\nContent-Type: text/plain\r\n\r\npart ${i}\r\n`;
      return `Subject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="sep"\r\n\r\n${body}--sep--`;
    };
    // The message itself is a part: 500 leaves + root = 501.
    assert.deepEqual(await sendOne(port, parts(500)), ["552 5.6.0 message has more than 500 MIME parts"]);
    assert.equal(handler.deliveries.length, 0);
    assert.deepEqual(await sendOne(port, parts(499)), ["250 2.0.0 OK: message accepted for delivery"]);
    assert.equal(handler.deliveries.length, 1);
  });

  test("MIME nested 21 deep gets 554 5.6.0; 20 deep is accepted", async () => {
    handler.deliveries = [];
    const nested = (depth: number): string => {
      const ct = (b: string): string => `Content-Type: multipart/mixed; boundary="b${b}"\r\n\r\n`;
      let body = `--b${depth}\r\nContent-Type: text/plain\r\n\r\nleaf\r\n--b${depth}--\r\n`;
      for (let d = depth - 1; d >= 1; d--) body = `--b${d}\r\n${ct(String(d + 1))}${body}--b${d}--\r\n`;
      return `Subject: deep\r\nMIME-Version: 1.0\r\n${ct("1")}${body}`;
    };
    // nested(n): n multipart levels; the text leaf sits n levels below the message.
    assert.deepEqual(await sendOne(port, nested(21)), ["554 5.6.0 MIME parts nested deeper than 20 levels"]);
    assert.equal(handler.deliveries.length, 0);
    assert.deepEqual(await sendOne(port, nested(20)), ["250 2.0.0 OK: message accepted for delivery"]);
    assert.equal(handler.deliveries.length, 1);
  });
});

describe("recipients: every RCPT counts, each distinct address is resolved once", () => {
  test("1,200 RCPT TO for one address: 100 get 250, the rest 452 4.5.3; one handler call", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler);
    const c = await RawClient.open(port);
    try {
      await c.hello();
      assert.deepEqual(await c.command("MAIL FROM:<alice@example.org>"), ["250 2.1.0 Accepted"]);
      // Pipelined (RFC 2920), in batches so the test stays bounded.
      const replies: string[] = [];
      for (let batch = 0; batch < 12; batch++) {
        c.write("RCPT TO:<room@bridge.test>\r\n".repeat(100));
        for (let i = 0; i < 100; i++) replies.push(...(await c.reply()));
      }
      assert.equal(replies.length, 1200);
      assert.deepEqual(replies.slice(0, 100), Array(100).fill("250 2.1.5 Accepted"));
      assert.deepEqual(new Set(replies.slice(100)), new Set(["452 4.5.3 too many recipients, at most 100 per message"]));
      assert.deepEqual(await c.command("DATA"), ["354 End data with <CR><LF>.<CR><LF>"]);
      c.write(SIMPLE + "\r\n.\r\n");
      assert.deepEqual(await c.reply(), ["250 2.0.0 OK: message accepted for delivery"]);
    } finally {
      c.close();
      await listener.close();
    }
    assert.deepEqual(handler.checked, ["room@bridge.test"]);
    assert.equal(handler.deliveries.length, 1);
    assert.deepEqual([...handler.deliveries[0]!.envelope.recipients], [["room@bridge.test", "mailbox:room"]]);
    assert.deepEqual(handler.deliveries[0]!.envelope.rcptTo, ["room@bridge.test"]);
  });

  test("a repeated refused recipient gets the same refusal without asking again; a new transaction asks again", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { max_recipients: 3 });
    const c = await RawClient.open(port);
    try {
      await c.hello();
      await c.command("MAIL FROM:<alice@example.org>");
      const refusal = ["550 5.1.1 <nobody@bridge.test>: no such mailbox here"];
      assert.deepEqual(await c.command("RCPT TO:<nobody@bridge.test>"), refusal);
      assert.deepEqual(await c.command("RCPT TO:<nobody@BRIDGE.test>"), refusal);
      assert.deepEqual(await c.command("RCPT TO:<room@bridge.test>"), ["250 2.1.5 Accepted"]);
      assert.deepEqual(await c.command("RCPT TO:<other@bridge.test>"), ["452 4.5.3 too many recipients, at most 3 per message"]);
      assert.deepEqual(await c.command("DATA"), ["354 End data with <CR><LF>.<CR><LF>"]);
      c.write(SIMPLE + "\r\n.\r\n");
      assert.deepEqual(await c.reply(), ["250 2.0.0 OK: message accepted for delivery"]);
      // New transaction: fresh count, fresh decisions.
      await c.command("MAIL FROM:<alice@example.org>");
      assert.deepEqual(await c.command("RCPT TO:<nobody@bridge.test>"), refusal);
    } finally {
      c.close();
      await listener.close();
    }
    assert.deepEqual(handler.checked, ["nobody@bridge.test", "room@bridge.test", "nobody@bridge.test"]);
    assert.deepEqual([...handler.deliveries[0]!.envelope.recipients], [["room@bridge.test", "mailbox:room"]]);
  });

  test("postmaster (bare, any case, @domain) is never refused by the listener, even past the limit", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { max_recipients: 1 });
    const c = await RawClient.open(port);
    try {
      await c.hello();
      await c.command("MAIL FROM:<>");
      assert.deepEqual(await c.command("RCPT TO:<room@bridge.test>"), ["250 2.1.5 Accepted"]);
      assert.deepEqual(await c.command("RCPT TO:<other@bridge.test>"), ["452 4.5.3 too many recipients, at most 1 per message"]);
      assert.deepEqual(await c.command("RCPT TO:<Postmaster>"), ["250 2.1.5 Accepted"]);
      assert.deepEqual(await c.command("RCPT TO:<POSTMASTER@Bridge.Test>"), ["250 2.1.5 Accepted"]);
      // Past the limit, postmaster of a domain that is not ours is refused for what it is: relaying.
      assert.deepEqual(await c.command("RCPT TO:<postmaster@other.test>"), ["550 5.7.1 <postmaster@other.test>: relaying denied"]);
    } finally {
      c.close();
      await listener.close();
    }
    // The handler (the router) decides about postmaster; asked once.
    assert.deepEqual(handler.checked, ["room@bridge.test", "postmaster@bridge.test"]);
  });
});

describe("timeouts (421 4.4.2)", () => {
  test("idle after the greeting: 421 4.4.2 after command_timeout_ms, then closed", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { command_timeout_ms: 300 });
    const c = await RawClient.open(port);
    try {
      await c.reply();
      const started = Date.now();
      assert.deepEqual(await c.reply(3000), ["421 4.4.2 command timeout exceeded, closing connection"]);
      assert.ok(Date.now() - started >= 250);
      await c.waitClosed();
    } finally {
      c.close();
      await listener.close();
    }
  });

  test("slowloris: a command dribbled byte by byte does not extend the command timeout", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { command_timeout_ms: 400 });
    const c = await RawClient.open(port);
    try {
      await c.hello();
      const started = Date.now();
      // One byte every 50 ms, never a complete line (bounded: at most 40 bytes).
      const dribble = (async () => {
        for (let i = 0; i < 40 && !c.closed; i++) {
          c.write("X");
          await delay(50);
        }
      })();
      assert.deepEqual(await c.reply(3000), ["421 4.4.2 command timeout exceeded, closing connection"]);
      const took = Date.now() - started;
      assert.ok(took >= 350 && took < 1500, `timed out after ${took} ms`);
      await c.waitClosed();
      await dribble;
    } finally {
      c.close();
      await listener.close();
    }
  });

  test("DATA dribbled line by line: 421 4.4.2 at data_timeout_ms, deliver never called", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { command_timeout_ms: 400, data_timeout_ms: 800 });
    const c = await RawClient.open(port);
    try {
      await c.hello();
      await c.command("MAIL FROM:<alice@example.org>");
      await c.command("RCPT TO:<room@bridge.test>");
      assert.deepEqual(await c.command("DATA"), ["354 End data with <CR><LF>.<CR><LF>"]);
      const started = Date.now();
      const dribble = (async () => {
        c.write("Subject: slow\r\n\r\n");
        for (let i = 0; i < 60 && !c.closed; i++) {
          c.write(`line ${i}\r\n`);
          await delay(100);
        }
      })();
      assert.deepEqual(await c.reply(5000), ["421 4.4.2 DATA timeout exceeded, closing connection"]);
      const took = Date.now() - started;
      assert.ok(took >= 700 && took < 2000, `timed out after ${took} ms`);
      await c.waitClosed();
      await dribble;
    } finally {
      c.close();
      await listener.close();
    }
    assert.equal(handler.deliveries.length, 0);
  });

  test("DATA idle: no bytes for command_timeout_ms after 354 gives 421 4.4.2", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { command_timeout_ms: 300, data_timeout_ms: 10_000 });
    const c = await RawClient.open(port);
    try {
      await c.hello();
      await c.command("MAIL FROM:<alice@example.org>");
      await c.command("RCPT TO:<room@bridge.test>");
      await c.command("DATA");
      c.write("Subject: half\r\n");
      assert.deepEqual(await c.reply(3000), ["421 4.4.2 DATA idle timeout exceeded, closing connection"]);
      await c.waitClosed();
    } finally {
      c.close();
      await listener.close();
    }
    assert.equal(handler.deliveries.length, 0);
  });

  test("the server's own slowness never counts: slow recipient check and slow deliver still get 250", async () => {
    const handler = new RecordingHandler();
    handler.checkDelayMs = 500;
    handler.deliverDelayMs = 500;
    const { listener, port } = await startSmtpListener(handler, { command_timeout_ms: 250 });
    const c = await RawClient.open(port);
    try {
      await c.hello();
      assert.deepEqual(await transaction(c, SIMPLE), ["250 2.0.0 OK: message accepted for delivery"]);
      assert.deepEqual(await c.command("QUIT"), ["221 2.0.0 Bye"]);
    } finally {
      c.close();
      await listener.close();
    }
    assert.equal(handler.deliveries.length, 1);
  });
});

describe("DNSBL at connect (real DNS server on loopback)", () => {
  let dns: TestDns;
  before(async () => {
    dns = await startDnsServer({
      records: {
        "1.0.0.127.listed.test": { A: ["127.0.0.2"] },
        "1.0.0.127.odd.test": { A: ["127.255.255.254"] },
        "1.0.0.127.in-addr.arpa": { PTR: ["client.ptr.test"] },
      },
      timeout: ["1.0.0.127.slow.test"],
    });
  });
  after(async () => {
    await dns.stop();
  });

  function resolver(): DnsResolver {
    return new DnsResolver({ nameservers: [dns.nameserver], timeoutMs: 300, tries: 1, cacheEntries: 100, cacheTtlMs: 60_000 });
  }

  test("a listed client gets 554 5.7.1 <ip> listed at <zone> and is closed; an unlisted one gets in", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { dnsbl_zones: ["clean.test", "listed.test"] }, { dns: resolver() });
    try {
      const c = await RawClient.open(port);
      try {
        assert.deepEqual(await c.reply(), ["554 5.7.1 127.0.0.1 listed at listed.test"]);
        await c.waitClosed();
      } finally {
        c.close();
      }
      // 127.0.0.2 is not listed.
      assert.deepEqual(await sendOne(port, SIMPLE, "127.0.0.2"), ["250 2.0.0 OK: message accepted for delivery"]);
    } finally {
      await listener.close();
    }
    assert.equal(handler.deliveries.length, 1);
    assert.equal(handler.deliveries[0]!.envelope.remoteAddress, "127.0.0.2");
    const asked = (await dns.takeQueries()).filter((q) => q.type === "A").map((q) => q.name.toLowerCase());
    assert.ok(asked.includes("1.0.0.127.listed.test") && asked.includes("2.0.0.127.clean.test"), JSON.stringify(asked));
  });

  test("a DNSBL that times out, or answers outside 127.0.0.x, does not block (fail open) and is logged", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { dnsbl_zones: ["slow.test", "odd.test"] }, { dns: resolver() });
    try {
      assert.deepEqual(await sendOne(port, SIMPLE), ["250 2.0.0 OK: message accepted for delivery"]);
    } finally {
      await listener.close();
    }
    assert.equal(handler.deliveries.length, 1);
    const failed = logged("smtp dnsbl lookup failed, client let in").filter((l) => l.zone === "slow.test");
    assert.ok(failed.length > 0 && failed[0]!.code === "ETIMEOUT", JSON.stringify(failed));
    assert.ok(logged("smtp dnsbl answer is no listing, client let in").some((l) => l.zone === "odd.test"));
  });

  test("the client's PTR lookup goes through the same resolver", async () => {
    const handler = new RecordingHandler();
    await dns.takeQueries();
    const { listener, port } = await startSmtpListener(handler, {}, { dns: resolver(), reverseLookup: true });
    const c = await RawClient.open(port);
    try {
      const ehlo = await c.hello();
      assert.equal(ehlo[0], "250-mx.bridge.test Nice to meet you, client.ptr.test");
    } finally {
      c.close();
      await listener.close();
    }
    const queries = await dns.takeQueries();
    assert.ok(queries.some((q) => q.type === "PTR" && q.name.toLowerCase() === "1.0.0.127.in-addr.arpa"), JSON.stringify(queries));
  });

  test("dnsbl_zones without a resolver is a constructor error", () => {
    assert.throws(
      () => new SmtpListener({ config: smtpListenerConfig({ dnsbl_zones: ["bl.test"] }), mailDomain: MAIL_DOMAIN, handler: new RecordingHandler() }),
      /dnsbl_zones/,
    );
  });
});

describe("STARTTLS: certificate reload, require_tls, no AUTH", async () => {
  await testWithOpenssl("a certificate replaced on disk is used by the next STARTTLS, without a restart", "meb-smtp-reload-", async (dir) => {
    const files = { certFile: join(dir, "live-cert.pem"), keyFile: join(dir, "live-key.pem") };
    const first = await makeCert(dir, "first.bridge.test");
    await writeFile(files.certFile, await readFile(first.cert));
    await writeFile(files.keyFile, await readFile(first.key));
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { tls_cert_file: files.certFile, tls_key_file: files.keyFile });
    const nextSubject = (): Promise<string | undefined> => subjectOfNextSession(port, (ehlo) => assert.ok(!ehlo.some((l) => /AUTH/.test(l)), ehlo.join("\n")));
    try {
      await checkCertificateRenewal(dir, files, nextSubject, () => {
        assert.ok(logged("smtp tls certificate files unusable, previous certificate kept").length > 0);
      });
    } finally {
      await listener.close();
    }
    assert.equal(handler.deliveries.length, 0);
  });

  await testWithOpenssl("require_tls: MAIL before STARTTLS gets 530 5.7.0; after STARTTLS mail is accepted; AUTH never offered", "meb-smtp-reqtls-", async (dir) => {
    const { cert, key } = await makeCert(dir, "mx.bridge.test");
    const handler = new RecordingHandler();
    const { listener, port } = await startSmtpListener(handler, { tls_cert_file: cert, tls_key_file: key, require_tls: true });
    const c = await RawClient.open(port);
    try {
      const ehlo = await c.hello();
      assert.ok(ehlo.some((l) => /^250[- ]STARTTLS$/.test(l)), ehlo.join("\n"));
      assert.ok(!ehlo.some((l) => /AUTH/.test(l)), ehlo.join("\n"));
      assert.deepEqual(await c.command("MAIL FROM:<alice@example.org>"), ["530 5.7.0 Must issue a STARTTLS command first"]);
      // smtp-server refuses REQUIRETLS (not offered) itself without TLS, before our parameter check.
      assert.deepEqual(await c.command("MAIL FROM:<alice@example.org> REQUIRETLS"), ["530 5.7.0 REQUIRETLS not permitted on non-TLS connections"]);
      await c.startTls();
      const ehlo2 = await c.command("EHLO client.example.org");
      assert.ok(!ehlo2.some((l) => /AUTH|STARTTLS|REQUIRETLS/.test(l)), ehlo2.join("\n"));
      assert.ok(ehlo2.includes("250-ENHANCEDSTATUSCODES"), ehlo2.join("\n"));
      assert.deepEqual(await c.command("MAIL FROM:<alice@example.org> REQUIRETLS"), ["555 5.5.4 unsupported parameter REQUIRETLS"]);
      assert.deepEqual(await transaction(c, SIMPLE), ["250 2.0.0 OK: message accepted for delivery"]);
    } finally {
      c.close();
      await listener.close();
    }
    assert.equal(handler.deliveries.length, 1);
    assert.equal(handler.deliveries[0]!.envelope.secure, true);
    assert.throws(
      () => new SmtpListener({ config: smtpListenerConfig({ require_tls: true }), mailDomain: MAIL_DOMAIN, handler }),
      /require_tls/,
    );
  });
});
