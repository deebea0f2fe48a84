/**
 * The SMTP listener's limit building blocks (src/mail/inbound/limits.ts, dnsbl.ts): client
 * keys, connection and rate limiters, the streaming message inspector, DNSBL query names, and
 * that the schema's defaults are the listener's defaults.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { configSchema } from "../../src/config/schema.ts";
import {
  ConnectionLimiter,
  LIMIT_DEFAULTS,
  MessageInspector,
  RateLimiter,
  clientKey,
} from "../../src/mail/inbound/limits.ts";
import type { MessageLimits } from "../../src/mail/inbound/limits.ts";
import { dnsblQueryName } from "../../src/mail/inbound/dnsbl.ts";

describe("LIMIT_DEFAULTS", () => {
  test("equal the config schema's smtp defaults", () => {
    const smtp = (configSchema.properties as Record<string, { properties: Record<string, { default?: unknown; description?: string }> }>).smtp!;
    for (const [key, value] of Object.entries(LIMIT_DEFAULTS)) {
      const prop = smtp.properties[key];
      assert.ok(prop, `smtp.${key} is in the schema`);
      assert.deepEqual(prop.default, value, `smtp.${key} default`);
      assert.ok((prop.description ?? "").length > 10, `smtp.${key} has a description`);
    }
    assert.equal(smtp.properties.max_clients?.default, 200);
  });
});

describe("clientKey", () => {
  test("IPv4 as is, IPv4-mapped as IPv4, IPv6 as its /64", () => {
    assert.equal(clientKey("192.0.2.7"), "192.0.2.7");
    assert.equal(clientKey("::ffff:192.0.2.7"), "192.0.2.7");
    assert.equal(clientKey("2001:db8:1:2:3:4:5:6"), "2001:0db8:0001:0002::/64");
    assert.equal(clientKey("2001:db8:1:2::ffff"), "2001:0db8:0001:0002::/64");
    assert.equal(clientKey("2001:DB8:1:3::1"), "2001:0db8:0001:0003::/64");
    assert.equal(clientKey("::1"), "0000:0000:0000:0000::/64");
    assert.equal(clientKey("not-an-ip"), "not-an-ip");
  });
});

describe("ConnectionLimiter", () => {
  test("per-client and total limits; release frees the slot", () => {
    const l = new ConnectionLimiter(3, 2);
    assert.equal(l.tryAcquire("a"), null);
    assert.equal(l.tryAcquire("a"), null);
    assert.equal(l.tryAcquire("a"), "client");
    assert.equal(l.count("a"), 2);
    assert.equal(l.tryAcquire("b"), null);
    assert.equal(l.tryAcquire("c"), "total");
    assert.equal(l.total, 3);
    l.release("a");
    assert.equal(l.tryAcquire("c"), null);
    l.release("nobody");
    assert.equal(l.total, 3);
    for (const k of ["a", "b", "c"]) l.release(k);
    assert.equal(l.total, 0);
    assert.equal(l.count("a"), 0);
  });

  test("rejects limits that are not positive integers", () => {
    assert.throws(() => new ConnectionLimiter(0, 1), RangeError);
    assert.throws(() => new ConnectionLimiter(1, 1.5), RangeError);
  });
});

describe("RateLimiter", () => {
  test("admits `limit` events per window, then refuses; the next windows admit again", () => {
    let now = 0;
    const r = new RateLimiter({ limit: 3, windowMs: 1000, now: () => now });
    assert.deepEqual([r.hit("k"), r.hit("k"), r.hit("k"), r.hit("k")], [true, true, true, false]);
    assert.equal(r.hit("other"), true, "keys are independent");
    // Two windows later nothing of the burst is left.
    now = 2000;
    assert.deepEqual([r.hit("k"), r.hit("k"), r.hit("k"), r.hit("k")], [true, true, true, false]);
  });

  test("sliding: a burst at the end of one window still counts early in the next", () => {
    let now = 900;
    const r = new RateLimiter({ limit: 4, windowMs: 1000, now: () => now });
    for (let i = 0; i < 4; i++) assert.equal(r.hit("k"), true);
    now = 1100; // 90% of the previous window overlaps: 4 × 0.9 = 3.6 counted
    assert.equal(r.hit("k"), false);
    now = 1800; // 20% overlaps: 4 × 0.2 + 1 (the refused hit) = 1.8, one more fits
    assert.equal(r.hit("k"), true);
  });

  test("refused hits count too (a client hammering stays limited)", () => {
    let now = 0;
    const r = new RateLimiter({ limit: 2, windowMs: 1000, now: () => now });
    for (let i = 0; i < 10; i++) r.hit("k");
    now = 1500; // half of the 10 previous hits still weigh
    assert.equal(r.hit("k"), false);
  });

  test("limit 0 is off", () => {
    const r = new RateLimiter({ limit: 0, windowMs: 1000 });
    for (let i = 0; i < 1000; i++) assert.equal(r.hit("k"), true);
    assert.equal(r.size, 0);
  });

  test("memory is bounded: idle keys are pruned, and at most maxKeys are kept", () => {
    let now = 0;
    const r = new RateLimiter({ limit: 5, windowMs: 1000, maxKeys: 100, now: () => now });
    for (let i = 0; i < 100; i++) r.hit(`a${i}`);
    assert.equal(r.size, 100);
    for (let i = 0; i < 50; i++) r.hit(`b${i}`);
    assert.equal(r.size, 100, "oldest keys evicted at the cap");
    now = 2500;
    r.hit("fresh");
    assert.equal(r.size, 1, "keys idle for two windows are pruned");
  });

  test("rejects bad options", () => {
    assert.throws(() => new RateLimiter({ limit: -1, windowMs: 1 }), RangeError);
    assert.throws(() => new RateLimiter({ limit: 1, windowMs: 0 }), RangeError);
    assert.throws(() => new RateLimiter({ limit: 1, windowMs: 1, maxKeys: 0 }), RangeError);
  });
});

const LIMITS: MessageLimits = { maxHeaderBytes: 200, maxReceivedHeaders: 3, maxMimeParts: 6, maxMimeDepth: 3 };

/** Feed `message` to a new inspector in pieces of `split` bytes (1: byte by byte). */
async function inspect(message: string | Buffer, split = 7, limits: MessageLimits = LIMITS) {
  const buf = typeof message === "string" ? Buffer.from(message, "latin1") : message;
  const inspector = new MessageInspector(limits);
  for (let i = 0; i < buf.length; i += split) inspector.write(buf.subarray(i, i + split));
  const violation = await inspector.finish();
  return { violation, stats: inspector.stats, inspector };
}

function headerOf(bytes: number): string {
  // "X: " + filler + CRLF lines, exactly `bytes` long.
  let out = "";
  while (out.length < bytes) {
    const left = bytes - out.length;
    if (left < 5) {
      out = out.slice(0, out.length - 2) + "y".repeat(left) + "\r\n";
      break;
    }
    const n = Math.min(left, 60);
    out += "X: " + "a".repeat(n - 5) + "\r\n";
  }
  assert.equal(out.length, bytes);
  return out;
}

function multipart(depth: number, leaves = 1): string {
  // depth nested multipart/mixed levels, `leaves` text parts in the innermost one.
  const open = (b: string) => `Content-Type: multipart/mixed; boundary="${b}"\r\n\r\n`;
  let body = "";
  for (let i = 0; i < leaves; i++) body += `--b${depth}\r\nContent-Type: text/plain\r\n\r\nleaf ${i}\r\n`;
  body += `--b${depth}--\r\n`;
  for (let d = depth - 1; d >= 1; d--) body = `--b${d}\r\n${open(`b${d + 1}`)}${body}--b${d}--\r\n`;
  return `Subject: t\r\n${open("b1")}${body}`;
}

describe("MessageInspector", () => {
  test("header section at the limit passes, one byte over gives 552 5.3.4, for any chunking", async () => {
    for (const split of [1, 2, 3, 64, 10_000]) {
      const ok = await inspect(headerOf(200) + "\r\nbody\r\n", split);
      assert.equal(ok.violation, null, `split ${split}`);
      assert.equal(ok.stats.headerBytes, 200);
      const over = await inspect(headerOf(201) + "\r\nbody\r\n", split);
      assert.equal(over.violation?.line, "552 5.3.4 message header section exceeds fixed maximum size of 200 bytes", `split ${split}`);
    }
  });

  test("bare LF line ends; a message without body; an empty header section", async () => {
    assert.equal((await inspect("A: b\nC: d\n\nbody\n", 1)).stats.headerBytes, 10);
    const noBody = await inspect("A: b\r\nC: d\r\n", 3);
    assert.equal(noBody.violation, null);
    assert.equal(noBody.stats.headerBytes, 12);
    assert.equal((await inspect("\r\nbody " + "x".repeat(1000) + "\r\n")).stats.headerBytes, 0);
    // Header lines past the limit in the body do not count.
    assert.equal((await inspect("A: b\r\n\r\n" + headerOf(1000))).violation, null);
  });

  test("Received hop count: at the limit passes, one more gives 554 5.4.6; folded lines and other fields don't count", async () => {
    const rcvd = (n: number) => "Received: from a\r\n\tby b; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(n);
    const limits = { ...LIMITS, maxHeaderBytes: 4096 };
    const ok = await inspect(rcvd(3) + "X-Received: no\r\nSubject: received: no\r\n\r\nReceived: body\r\n", 5, limits);
    assert.equal(ok.violation, null);
    assert.equal(ok.stats.receivedHeaders, 3);
    const loop = await inspect("RECEIVED : x\r\n" + rcvd(3) + "\r\nbody\r\n", 5, limits);
    assert.equal(loop.violation?.line, "554 5.4.6 routing loop detected: more than 3 Received headers");
  });

  test("MIME part count: at the limit passes, one more gives 552 5.6.0", async () => {
    // root + 5 leaves = 6 parts
    const ok = await inspect(multipart(1, 5), 11);
    assert.equal(ok.violation, null);
    assert.equal(ok.stats.mimeParts, 6);
    const over = await inspect(multipart(1, 6), 11);
    assert.equal(over.violation?.line, "552 5.6.0 message has more than 6 MIME parts");
  });

  test("MIME depth: at the limit passes, one deeper gives 554 5.6.0", async () => {
    // depth(3 multipart levels) → leaf at level 3
    const ok = await inspect(multipart(3), 13);
    assert.equal(ok.violation, null);
    assert.equal(ok.stats.mimeDepth, 3);
    const deep = await inspect(multipart(4), 13);
    assert.equal(deep.violation?.line, "554 5.6.0 MIME parts nested deeper than 3 levels");
  });

  test("a MIME part's own header section over the limit gives 552 5.3.4", async () => {
    const msg = `Content-Type: multipart/mixed; boundary="q"\r\n\r\n--q\r\n${headerOf(400)}\r\nx\r\n--q--\r\n`;
    const r = await inspect(msg, 50);
    assert.equal(r.violation?.line, "552 5.3.4 message header section exceeds fixed maximum size of 200 bytes");
  });

  test("writes after a violation are no-ops; abort() is safe", async () => {
    const inspector = new MessageInspector(LIMITS);
    inspector.write(Buffer.from(headerOf(300)));
    assert.equal(inspector.violation?.responseCode, 552);
    inspector.write(Buffer.from("more".repeat(1000)));
    inspector.abort();
    assert.equal((await inspector.finish())?.enhancedStatus, "5.3.4");
    const fresh = new MessageInspector(LIMITS);
    fresh.abort();
    assert.equal(await fresh.finish(), null);
  });

  test("the skeleton keeps headers, boundaries and text, drops binary parts' contents, for any chunking; none after a violation", async () => {
    const pdf = "JVBERi0xLjQK".repeat(40);
    const msg =
      `Subject: s\r\nContent-Type: multipart/mixed; boundary="z"\r\n\r\npreamble\r\n--z\r\nContent-Type: text/plain\r\n\r\nhello\r\n` +
      `--z\r\nContent-Type: application/pdf; name="a.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n${pdf}\r\n` +
      `--z\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner text\r\n--z--\r\n`;
    const expected = msg.replace(pdf, ""); // the line end before a boundary belongs to the boundary
    for (const split of [1, 7, 100_000]) {
      const { violation, inspector } = await inspect(msg, split, { ...LIMITS, maxHeaderBytes: 4096 });
      assert.equal(violation, null);
      assert.equal(inspector.skeleton?.toString("latin1"), expected, `split ${split}`);
    }
    const over = await inspect(multipart(1, 7), 11);
    assert.ok(over.violation);
    assert.equal(over.inspector.skeleton, null);
  });

  test("rejects limits that are not positive integers", () => {
    assert.throws(() => new MessageInspector({ ...LIMITS, maxMimeParts: 0 }), RangeError);
  });
});

describe("dnsblQueryName", () => {
  test("IPv4 octets and IPv6 nibbles reversed under the zone (RFC 5782 §2.1, §2.4)", () => {
    assert.equal(dnsblQueryName("192.0.2.99", "bl.example"), "99.2.0.192.bl.example");
    assert.equal(dnsblQueryName("::ffff:192.0.2.99", "bl.example."), "99.2.0.192.bl.example");
    assert.equal(
      dnsblQueryName("2001:db8:1:2:3:4:567:89ab", "bl.example"),
      "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example",
    );
    assert.throws(() => dnsblQueryName("nope", "bl.example"), RangeError);
  });
});
