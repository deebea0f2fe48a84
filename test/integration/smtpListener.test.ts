/**
 * The inbound SMTP listener over real SMTP on loopback, with nodemailer as the sending MTA.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import nodemailer from "nodemailer";
import SMTPConnection from "nodemailer/lib/smtp-connection";
import type { SMTPConnectionOptions, SMTPConnectionSendInfo, SMTPEnvelope } from "nodemailer/lib/smtp-connection";
import { configureLogging } from "../../src/util/logger.ts";
import { LARGE_MESSAGE_BYTES, SmtpListener, TRACE_HEADROOM_BYTES, withTrace } from "../../src/mail/inbound/SmtpListener.ts";
import { largeWork } from "../../src/util/reclaim.ts";
import type { InboundHandler, SmtpListenerConfig, SmtpListenerOptions } from "../../src/mail/inbound/SmtpListener.ts";
import { Rejections, SmtpReply, unsupportedParameter } from "../../src/mail/inbound/rejections.ts";
import { MAIL_DOMAIN, RawClient, RecordingHandler, delay, makeCert, testWithOpenssl, smtpListenerConfig, startSmtpListener } from "../harness/smtpListener.ts";

const MAX_BYTES = 8192;

const logLines: string[] = [];
configureLogging({ level: "debug", format: "json", write: (line) => logLines.push(line) });

/** This file's listener configuration: small messages (MAX_BYTES) and 20 clients, then `overrides`. */
function smtpConfig(overrides: Partial<SmtpListenerConfig> = {}): SmtpListenerConfig {
  return smtpListenerConfig({ max_message_bytes: MAX_BYTES, max_clients: 20, ...overrides });
}

/** {@link startSmtpListener} with this file's configuration and a 2 s close timeout. */
function startListener(
  handler: InboundHandler<string>,
  overrides: Partial<SmtpListenerConfig> = {},
  extra: Partial<SmtpListenerOptions<string>> = {},
): Promise<{ listener: SmtpListener<string>; port: number }> {
  return startSmtpListener(handler, smtpConfig(overrides), { closeTimeoutMs: 2000, ...extra });
}

/** A message with CRLF line ends, a dot-stuffed line, 8-bit UTF-8, and no final reformatting needed. */
function rawMessage(body = "Hello from the test.\r\n"): Buffer {
  return Buffer.from(
    "From: Alice <alice@example.org>\r\n" +
      "To: room-one@bridge.test\r\n" +
      "Subject: test\r\n" +
      "Message-ID: <t-1@example.org>\r\n" +
      "MIME-Version: 1.0\r\n" +
      "Content-Type: text/plain; charset=utf-8\r\n" +
      "Content-Transfer-Encoding: 8bit\r\n" +
      "\r\n" +
      body +
      ".leading dot line\r\n" +
      "..two dots\r\n" +
      "Grüße €\r\n",
    "utf8",
  );
}

/** One low-level SMTP session with nodemailer's SMTPConnection. */
async function connect(port: number, opts: SMTPConnectionOptions = {}): Promise<SMTPConnection> {
  const conn = new SMTPConnection({ host: "127.0.0.1", port, secure: false, ignoreTLS: true, name: "client.example.org", ...opts });
  conn.on("error", () => {});
  await new Promise<void>((resolve, reject) => conn.connect((err) => (err ? reject(err) : resolve())));
  return conn;
}

type SendError = Error & { response?: string; responseCode?: number; code?: string };

function send(conn: SMTPConnection, envelope: SMTPEnvelope, message: Buffer): Promise<SMTPConnectionSendInfo> {
  return new Promise((resolve, reject) => conn.send(envelope, message, (err, info) => (err ? reject(err) : resolve(info))));
}

async function sendOnce(port: number, envelope: SMTPEnvelope, message: Buffer): Promise<SMTPConnectionSendInfo> {
  const conn = await connect(port);
  try {
    return await send(conn, envelope, message);
  } finally {
    conn.quit();
  }
}

describe("SmtpReply", () => {
  test("message carries the enhanced code exactly once", () => {
    const r = Rejections.noSuchMailbox("x@y");
    assert.equal(r.responseCode, 550);
    assert.equal(r.enhancedStatus, "5.1.1");
    assert.equal(r.message, "5.1.1 <x@y>: no such mailbox here");
    assert.equal(r.line, "550 5.1.1 <x@y>: no such mailbox here");
    assert.equal(r.permanent, true);
    assert.equal(Rejections.tooManyRecipients(100).line, "452 4.5.3 too many recipients, at most 100 per message");
    assert.equal(Rejections.tooManyRecipients(100).permanent, false);
  });

  test("class of the enhanced code must match the reply code", () => {
    assert.throws(() => new SmtpReply(550, "4.1.1", "x"), RangeError);
    assert.throws(() => new SmtpReply(250, "2.0.0", "x"), RangeError);
    assert.throws(() => new SmtpReply(550, "5.1", "x"), RangeError);
    assert.throws(() => new SmtpReply(550, "5.1.1", "a\r\nb"), RangeError);
  });

  test("every catalogue entry is well formed", () => {
    const entries: SmtpReply[] = [
      Rejections.noSuchMailbox("a@b"), Rejections.relayDenied("a@b"), Rejections.mailboxDisabled("a@b"),
      Rejections.portalGone("a@b"), Rejections.roomEncrypted("a@b"), Rejections.mailboxUnavailable("a@b"),
      Rejections.messageTooBig(1), Rejections.tooManyRecipients(1), Rejections.temporaryFailure(),
      Rejections.insufficientStorage(), Rejections.badSenderSyntax("a"), Rejections.badRecipientSyntax("a"),
      Rejections.senderRefused("a@b"), Rejections.loopDetected(), Rejections.malformedMessage(),
      Rejections.loopDetected(50), Rejections.headerTooBig(1), Rejections.tooManyMimeParts(1), Rejections.mimeTooDeep(1),
      Rejections.tooManyConnections(), Rejections.tooManyConnectionsFromClient("192.0.2.1"),
      Rejections.clientRateLimited("192.0.2.1"), Rejections.senderDomainRateLimited("example.org"),
      Rejections.timeout("command"), Rejections.dnsblListed("192.0.2.1", "bl.example"), Rejections.tlsRequired(),
      Rejections.parameterNotRecognized("FOO"),
    ];
    for (const e of entries) assert.match(e.line, /^[45]\d\d [45]\.\d{1,3}\.\d{1,3} \S/);
  });

  test("unsupportedParameter: 555 5.5.4 for the first keyword not offered; the echo is printable and short", () => {
    const offered = new Set(["SIZE", "BODY"]);
    assert.equal(unsupportedParameter(false, offered), null);
    assert.equal(unsupportedParameter({ SIZE: "10", BODY: "8BITMIME" }, offered), null);
    assert.equal(unsupportedParameter({ SIZE: "10", FOO: "BAR", RET: "FULL" }, offered)?.line, "555 5.5.4 unsupported parameter FOO");
    assert.equal(unsupportedParameter({ SMTPUTF8: true }, new Set())?.line, "555 5.5.4 unsupported parameter SMTPUTF8");
    const long = Rejections.parameterNotRecognized("X\u0001".repeat(2500));
    assert.equal(long.line, `555 5.5.4 unsupported parameter ${"X?".repeat(32)}...`);
  });
});

describe("SmtpListener over loopback", () => {
  const handler = new RecordingHandler();
  let listener: SmtpListener<string>;
  let port: number;

  before(async () => {
    ({ listener, port } = await startListener(handler));
  });
  after(async () => {
    await listener.close();
  });

  test("greeting and EHLO: hostname, SIZE, no AUTH, no STARTTLS without a certificate", async () => {
    const c = await RawClient.open(port);
    try {
      const greeting = await c.reply();
      assert.deepEqual(greeting, ["220 mx.bridge.test ESMTP matrix-email-bridge"]);
      const ehlo = await c.command("EHLO client.example.org");
      // RFC 2034 §3: the reply to EHLO has no enhanced codes, it lists keywords; ENHANCEDSTATUSCODES is one.
      assert.deepEqual(ehlo, [
        "250-mx.bridge.test Nice to meet you, [127.0.0.1]",
        "250-PIPELINING",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250-ENHANCEDSTATUSCODES",
        `250 SIZE ${MAX_BYTES}`,
      ]);
      assert.ok(!ehlo.some((l) => /AUTH|STARTTLS|DSN|REQUIRETLS/.test(l)), ehlo.join("\n"));
      // AUTH is disabled: smtp-server treats it as an unknown command.
      assert.deepEqual(await c.command("AUTH PLAIN AGJvYgBzZWNyZXQ="), ["500 5.5.2 Error: command not recognized"]);
      assert.deepEqual(await c.command("QUIT"), ["221 2.0.0 Bye"]);
    } finally {
      c.close();
    }
  });

  test("talking before the greeting is refused (early-talker delay is kept)", async () => {
    const c = await RawClient.open(port);
    try {
      c.socket.write("EHLO early.example.org\r\n");
      const reply = await c.reply();
      assert.deepEqual(reply, ["421 4.4.2 mx.bridge.test You talk too soon"]);
    } finally {
      c.close();
    }
  });

  test("accepted mail reaches deliver() byte-identical and gets 250 (nodemailer transport)", async () => {
    handler.reset();
    const raw = rawMessage();
    const transport = nodemailer.createTransport({
      host: "127.0.0.1",
      port,
      secure: false,
      ignoreTLS: true,
      tls: { rejectUnauthorized: false },
    });
    try {
      const info = await transport.sendMail({
        envelope: { from: "alice@example.org", to: ["room-one@bridge.test"] },
        raw,
      });
      assert.match(info.response, /^250 2\.0\.0 /);
      assert.deepEqual(info.accepted, ["room-one@bridge.test"]);
    } finally {
      transport.close();
    }
    assert.equal(handler.deliveries.length, 1);
    const d = handler.deliveries[0]!;
    assert.ok(d.raw.equals(raw), `raw differs:\n${JSON.stringify(d.raw.toString())}\n${JSON.stringify(raw.toString())}`);
    assert.equal(d.envelope.mailFrom, "alice@example.org");
    assert.deepEqual(d.envelope.rcptTo, ["room-one@bridge.test"]);
    assert.equal(d.envelope.remoteAddress, "127.0.0.1");
    assert.equal(d.envelope.clientHostname, "[127.0.0.1]");
    assert.equal(d.envelope.secure, false);
    assert.ok(d.envelope.heloName.length > 0);
    assert.ok(d.envelope.sessionId.length > 0);
  });

  test("exact reply lines for a mixed recipient list; deliver only gets the accepted ones", async () => {
    handler.reset();
    const c = await RawClient.open(port);
    try {
      await c.reply();
      await c.command("EHLO client.example.org");
      assert.deepEqual(await c.command("MAIL FROM:<alice@example.org>"), ["250 2.1.0 Accepted"]);
      assert.deepEqual(await c.command("RCPT TO:<room-one@bridge.test>"), ["250 2.1.5 Accepted"]);
      assert.deepEqual(await c.command("RCPT TO:<nobody@bridge.test>"), ["550 5.1.1 <nobody@bridge.test>: no such mailbox here"]);
      assert.deepEqual(await c.command("RCPT TO:<someone@other.test>"), ["550 5.7.1 <someone@other.test>: relaying denied"]);
      assert.deepEqual(await c.command("RCPT TO:<someone@bridge.test.other.test>"), ["550 5.7.1 <someone@bridge.test.other.test>: relaying denied"]);
      assert.deepEqual(await c.command("RCPT TO:<someone@[127.0.0.1]>"), ["550 5.7.1 <someone@[127.0.0.1]>: relaying denied"]);
      assert.deepEqual(await c.command("RCPT TO:<disabled@bridge.test>"), ["550 5.2.1 <disabled@bridge.test>: mailbox disabled, not accepting messages"]);
      assert.deepEqual(await c.command("RCPT TO:<broken@bridge.test>"), ["451 4.3.0 temporary local failure, try again later"]);
      assert.deepEqual(await c.command("RCPT TO:<Room-Two@BRIDGE.Test>"), ["250 2.1.5 Accepted"]);
      assert.deepEqual(await c.command("DATA"), ["354 End data with <CR><LF>.<CR><LF>"]);
      c.socket.write("Subject: x\r\n\r\nbody\r\n.\r\n");
      assert.deepEqual(await c.reply(), ["250 2.0.0 OK: message accepted for delivery"]);
      assert.deepEqual(await c.command("QUIT"), ["221 2.0.0 Bye"]);
    } finally {
      c.close();
    }
    // The handler was never asked about the foreign domains; the domain part is lower-cased.
    assert.deepEqual(
      handler.checked,
      ["room-one@bridge.test", "nobody@bridge.test", "disabled@bridge.test", "broken@bridge.test", "Room-Two@bridge.test"],
    );
    assert.deepEqual(handler.checkedEnvelopes.at(-1)?.rcptTo, ["room-one@bridge.test"]);
    assert.deepEqual([...handler.checkedEnvelopes.at(-1)!.recipients], [["room-one@bridge.test", "mailbox:room-one"]]);
    assert.equal(handler.deliveries.length, 1);
    assert.deepEqual(handler.deliveries[0]!.envelope.rcptTo, ["room-one@bridge.test", "Room-Two@bridge.test"]);
    // The resolved values reach deliver, accepted recipients only, in RCPT order.
    assert.deepEqual(
      [...handler.deliveries[0]!.envelope.recipients],
      [["room-one@bridge.test", "mailbox:room-one"], ["Room-Two@bridge.test", "mailbox:room-two"]],
    );
    assert.equal(handler.deliveries[0]!.raw.toString(), "Subject: x\r\n\r\nbody\r\n");
  });

  test("bare postmaster is accepted as postmaster@<domain> (RFC 5321 §4.5.1)", async () => {
    handler.reset();
    const c = await RawClient.open(port);
    try {
      await c.reply();
      await c.command("EHLO client.example.org");
      await c.command("MAIL FROM:<>");
      assert.deepEqual(await c.command("RCPT TO:<Postmaster>"), ["250 2.1.5 Accepted"]);
      await c.command("QUIT");
    } finally {
      c.close();
    }
    assert.deepEqual(handler.checked, ["postmaster@bridge.test"]);
  });

  test("RCPT to another domain gets 550 5.7.1 (SMTPConnection)", async () => {
    handler.reset();
    await assert.rejects(sendOnce(port, { from: "alice@example.org", to: ["bob@example.com"] }, rawMessage()), (err: SendError) => {
      assert.equal(err.responseCode, 550);
      assert.equal(err.response, "550 5.7.1 <bob@example.com>: relaying denied");
      return true;
    });
    assert.equal(handler.checked.length, 0);
    assert.equal(handler.deliveries.length, 0);
  });

  test("handler rejecting the only recipient: 550 5.1.1, deliver never called", async () => {
    handler.reset();
    await assert.rejects(sendOnce(port, { from: "alice@example.org", to: ["nobody@bridge.test"] }, rawMessage()), (err: SendError) => {
      assert.equal(err.responseCode, 550);
      assert.equal(err.response, "550 5.1.1 <nobody@bridge.test>: no such mailbox here");
      return true;
    });
    assert.equal(handler.deliveries.length, 0);
  });

  test("handler rejecting one of two recipients: that one is reported rejected, deliver gets the other", async () => {
    handler.reset();
    const info = await sendOnce(port, { from: "alice@example.org", to: ["nobody@bridge.test", "room-one@bridge.test"] }, rawMessage());
    assert.deepEqual(info.accepted, ["room-one@bridge.test"]);
    assert.deepEqual(info.rejected, ["nobody@bridge.test"]);
    assert.equal(info.rejectedErrors?.[0]?.response, "550 5.1.1 <nobody@bridge.test>: no such mailbox here");
    assert.equal(handler.deliveries.length, 1);
    assert.deepEqual(handler.deliveries[0]!.envelope.rcptTo, ["room-one@bridge.test"]);
  });

  test("deliver throwing a plain Error gives 451 4.3.0", async () => {
    handler.reset();
    handler.deliverImpl = async () => {
      throw new Error("disk on fire");
    };
    await assert.rejects(sendOnce(port, { from: "alice@example.org", to: ["room-one@bridge.test"] }, rawMessage()), (err: SendError) => {
      assert.equal(err.responseCode, 451);
      assert.equal(err.response, "451 4.3.0 temporary local failure, try again later");
      return true;
    });
    assert.equal(handler.deliveries.length, 0);
  });

  test("deliver throwing an SmtpReply gives that reply", async () => {
    handler.reset();
    handler.deliverImpl = async () => {
      throw Rejections.roomEncrypted("room-one@bridge.test");
    };
    await assert.rejects(sendOnce(port, { from: "alice@example.org", to: ["room-one@bridge.test"] }, rawMessage()), (err: SendError) => {
      assert.equal(err.response, "550 5.2.1 <room-one@bridge.test>: the Matrix room of this mailbox is encrypted and cannot receive mail");
      return true;
    });
  });

  test("a message over max_message_bytes gets 552 5.3.4 and is not delivered", async () => {
    handler.reset();
    const big = rawMessage("x".repeat(76) + "\r\n".repeat(1) + ("y".repeat(98) + "\r\n").repeat(100));
    assert.ok(big.length > MAX_BYTES);
    await assert.rejects(sendOnce(port, { from: "alice@example.org", to: ["room-one@bridge.test"] }, big), (err: SendError) => {
      assert.equal(err.responseCode, 552);
      assert.equal(err.response, `552 5.3.4 message exceeds fixed maximum message size of ${MAX_BYTES} bytes`);
      return true;
    });
    assert.equal(handler.deliveries.length, 0);
  });

  test("a message of exactly max_message_bytes is accepted", async () => {
    handler.reset();
    const base = rawMessage("");
    const filler = MAX_BYTES - base.length;
    const lines = [];
    let left = filler;
    while (left > 0) {
      const n = Math.min(left, 80);
      lines.push(n >= 2 ? "z".repeat(n - 2) + "\r\n" : "\r\n".slice(0, n));
      left -= n;
    }
    const exact = rawMessage(lines.join(""));
    assert.equal(exact.length, MAX_BYTES);
    const info = await sendOnce(port, { from: "alice@example.org", to: ["room-one@bridge.test"] }, exact);
    assert.match(info.response, /^250 /);
    assert.ok(handler.deliveries[0]!.raw.equals(exact));
  });

  test("null sender <> is accepted and reaches deliver with mailFrom null", async () => {
    handler.reset();
    const info = await sendOnce(port, { from: false, to: ["room-one@bridge.test"] }, rawMessage());
    assert.match(info.response, /^250 /);
    assert.equal(handler.deliveries.length, 1);
    assert.equal(handler.deliveries[0]!.envelope.mailFrom, null);
  });

  test("250 is sent only after deliver() resolves", async () => {
    handler.reset();
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let entered!: () => void;
    const deliverEntered = new Promise<void>((resolve) => (entered = resolve));
    handler.deliverImpl = async () => {
      entered();
      await gate;
    };
    const conn = await connect(port);
    try {
      let replied = false;
      const sent = send(conn, { from: "alice@example.org", to: ["room-one@bridge.test"] }, rawMessage()).finally(() => {
        replied = true;
      });
      await deliverEntered;
      await delay(300);
      assert.equal(replied, false, "client got a reply before deliver() resolved");
      assert.equal(handler.deliveries.length, 0);
      release();
      const info = await sent;
      assert.match(info.response, /^250 2\.0\.0 /);
      assert.equal(handler.deliveries.length, 1);
    } finally {
      conn.quit();
    }
  });

  test("two messages in one session, RSET in between", async () => {
    handler.reset();
    const conn = await connect(port);
    try {
      await send(conn, { from: "a@example.org", to: ["room-one@bridge.test"] }, rawMessage("first\r\n"));
      await new Promise<void>((resolve, reject) => conn.reset((err) => (err ? reject(err) : resolve())));
      await send(conn, { from: "b@example.org", to: ["room-two@bridge.test"] }, rawMessage("second\r\n"));
    } finally {
      conn.quit();
    }
    assert.equal(handler.deliveries.length, 2);
    assert.equal(handler.deliveries[0]!.envelope.mailFrom, "a@example.org");
    assert.deepEqual(handler.deliveries[1]!.envelope.rcptTo, ["room-two@bridge.test"]);
    assert.equal(handler.deliveries[1]!.envelope.mailFrom, "b@example.org");
  });

  test("log lines carry the session id and never the message body", () => {
    const accepted = logLines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === "smtp message accepted");
    assert.ok(accepted.length > 0);
    for (const l of accepted) {
      assert.equal(typeof l.session, "string");
      assert.equal(l.remote, "127.0.0.1");
      assert.equal(l.module, "mail/inbound");
    }
    assert.ok(!logLines.some((l) => l.includes("leading dot line") || l.includes("Hello from the test")));
    assert.ok(logLines.some((l) => l.includes('"msg":"smtp recipient rejected"') && l.includes("550 5.7.1")));
  });
});

/**
 * RFC 2034 §3 (4): the text of every 2xx, 4xx and 5xx reply but the greeting and the replies to
 * HELO/EHLO starts with an RFC 3463 code of the reply's class; 3xx replies have none.
 */
function assertCoded(reply: string[]): void {
  assert.ok(reply.length > 0);
  for (const line of reply) {
    const m = /^(\d)\d\d[ -](?:(\d)\.\d{1,3}\.\d{1,3} )?/.exec(line);
    assert.ok(m, `not a reply line: ${JSON.stringify(line)}`);
    if (m[1] === "3") assert.equal(m[2], undefined, line);
    else assert.equal(m[2], m[1], `no enhanced code of class ${m[1]}: ${JSON.stringify(line)}`);
  }
}

describe("enhanced status codes on every reply, smtp-server's own included (RFC 2034, RFC 3463), over raw SMTP", () => {
  const handler = new RecordingHandler();
  let listener: SmtpListener<string>;
  let port: number;

  before(async () => {
    ({ listener, port } = await startListener(handler));
  });
  after(async () => {
    await listener.close();
  });

  /** A session past the greeting; with `ehlo`, past EHLO too. */
  async function open(ehlo = true): Promise<RawClient> {
    const c = await RawClient.open(port);
    assert.deepEqual(await c.reply(), ["220 mx.bridge.test ESMTP matrix-email-bridge"]);
    if (ehlo) assert.ok((await c.command("EHLO client.example.org")).includes("250-ENHANCEDSTATUSCODES"));
    return c;
  }

  /** Run `fn` on a session past EHLO ({@link open}), closed afterwards. */
  async function withSession(fn: (c: RawClient) => Promise<void>): Promise<void> {
    const c = await open();
    try {
      await fn(c);
    } finally {
      c.close();
    }
  }

  /** Send each command and check its exact reply; every reply must also carry a code of its class. */
  async function expect(c: RawClient, pairs: [command: string, reply: string][]): Promise<void> {
    for (const [command, reply] of pairs) {
      const got = await c.command(command);
      assert.deepEqual(got, [reply], `reply to ${JSON.stringify(command.slice(0, 80))}`);
      assertCoded(got);
    }
  }

  test("a whole transaction: 250 2.1.0, 250 2.1.5, 354 without a code, 250 2.0.0, 221 2.0.0; RSET, NOOP, HELP, VRFY too", async () => {
    handler.reset();
    await withSession(async (c) => {
      await expect(c, [
        ["NOOP", "250 2.0.0 OK"],
        ["HELP", "214 2.0.0 See https://tools.ietf.org/html/rfc5321 for details"],
        ["VRFY someone", "252 2.1.5 Try to send something. No promises though"],
        ["MAIL FROM:<alice@example.org>", "250 2.1.0 Accepted"],
        ["RSET", "250 2.0.0 Flushed"],
        ["MAIL FROM:<alice@example.org> SIZE=100 BODY=8BITMIME SMTPUTF8", "250 2.1.0 Accepted"],
        ["RCPT TO:<room-one@bridge.test>", "250 2.1.5 Accepted"],
        ["DATA", "354 End data with <CR><LF>.<CR><LF>"],
      ]);
      c.write("Subject: x\r\n\r\nbody\r\n.\r\n");
      assert.deepEqual(await c.reply(), ["250 2.0.0 OK: message accepted for delivery"]);
      await expect(c, [
        ["MAIL FROM:<> BODY=7BIT", "250 2.1.0 Accepted"],
        ["QUIT", "221 2.0.0 Bye"],
      ]);
    });
    assert.equal(handler.deliveries.length, 1);
    assert.equal(handler.deliveries[0]!.envelope.mailFrom, "alice@example.org");
  });

  test("commands out of sequence: 503 5.5.1; malformed HELO/EHLO: 501 5.5.4", async () => {
    const c = await open(false);
    try {
      await expect(c, [
        ["MAIL FROM:<alice@example.org>", "503 5.5.1 Error: send HELO/EHLO first"],
        ["RCPT TO:<room-one@bridge.test>", "503 5.5.1 Error: send HELO/EHLO first"],
        ["DATA", "503 5.5.1 Error: send HELO/EHLO first"],
        ["EHLO", "501 5.5.4 Error: syntax: EHLO hostname"],
        ["EHLO two words", "501 5.5.4 Error: syntax: EHLO hostname"],
        ["HELO", "501 5.5.4 Error: Syntax: HELO hostname"],
      ]);
      assert.deepEqual(await c.command("HELO client.example.org"), ["250 mx.bridge.test Nice to meet you, [127.0.0.1]"]);
      await expect(c, [
        ["RCPT TO:<room-one@bridge.test>", "503 5.5.1 Error: need MAIL command"],
        ["DATA", "503 5.5.1 Error: need RCPT command"],
        ["MAIL FROM:<alice@example.org>", "250 2.1.0 Accepted"],
        ["MAIL FROM:<alice@example.org>", "503 5.5.1 Error: nested MAIL command"],
        ["DATA", "503 5.5.1 Error: need RCPT command"],
      ]);
    } finally {
      c.close();
    }
  });

  test("unknown and not offered commands: 500 5.5.2 (AUTH, STARTTLS without a certificate, BDAT, LHLO, names of smtp-server's code contexts, sendmail's WIZ/SHELL/KILL)", async () => {
    await withSession(async (c) => {
      const unknown = "500 5.5.2 Error: command not recognized";
      await expect(c, [
        ["FOO bar", unknown],
        ["AUTH PLAIN AGJvYgBzZWNyZXQ=", unknown],
        ["AUTH LOGIN", unknown],
        ["STARTTLS", unknown],
        ["BDAT 10 LAST", unknown],
        ["LHLO client.example.org", unknown],
        ["DATA_OK", unknown],
        ["MAIL_FROM_OK", unknown],
      ]);
    });
    // A session of its own: the tenth unrecognized command of a session gets 421 and a close.
    await withSession(async (c) => {
      const unknown = "500 5.5.2 Error: command not recognized";
      await expect(c, [
        ["WIZ secret", unknown],
        ["SHELL", unknown],
        ["KILL", unknown],
      ]);
    });
  });

  test("malformed MAIL FROM: 501 5.1.7; SIZE over the limit: 552 5.3.4", async () => {
    await withSession(async (c) => {
      const bad = "501 5.1.7 Error: Bad sender address syntax";
      await expect(c, [
        ["MAIL FROM:<a@b@example.org>", bad],
        ["MAIL FROM:<nodomain>", bad],
        [`MAIL FROM:<${"l".repeat(1000)}@example.org>`, bad],
        ["MAIL FROM:alice@example.org", bad],
        ["MAIL FROM:<x@example.org> SIZE=99999999999999", `552 5.3.4 Error: message exceeds fixed maximum message size ${MAX_BYTES}`],
        [`MAIL FROM:<x@example.org> SIZE=${MAX_BYTES + 1}`, `552 5.3.4 Error: message exceeds fixed maximum message size ${MAX_BYTES}`],
        ["MAIL FROM:<x@example.org> SIZE=abc", "501 5.5.4 Error: Bad message size syntax"],
        ["MAIL FROM:<x@example.org> BODY=BINARYMIME", "501 5.5.4 Invalid BODY parameter value. Must be 7BIT or 8BITMIME"],
        [`MAIL FROM:<x@example.org> SIZE=${MAX_BYTES}`, "250 2.1.0 Accepted"],
      ]);
    });
  });

  test("malformed RCPT TO: 501 5.1.3; the handler is not asked", async () => {
    handler.reset();
    await withSession(async (c) => {
      await c.command("MAIL FROM:<alice@example.org>");
      const bad = "501 5.1.3 Error: Bad recipient address syntax";
      await expect(c, [
        ["RCPT TO:<odd>", bad],
        [`RCPT TO:<${"r".repeat(300)}@bridge.test>`, bad],
        ["RCPT TO:<a\u0000b@bridge.test>", bad],
        ["RCPT TO:<>", bad],
        ["RCPT TO:<room-one@bridge.test>", "250 2.1.5 Accepted"],
      ]);
    });
    assert.deepEqual(handler.checked, ["room-one@bridge.test"]);
  });

  test("MAIL FROM and RCPT TO parameters not offered: 555 5.5.4 (RFC 5321 §4.1.1.11), nothing counted or asked", async () => {
    handler.reset();
    await withSession(async (c) => {
      await expect(c, [
        ["MAIL FROM:<alice@example.org> FOO=BAR", "555 5.5.4 unsupported parameter FOO"],
        ["MAIL FROM:<alice@example.org> SIZE=100 FOO", "555 5.5.4 unsupported parameter FOO"],
        // DSN (RFC 3461) and AUTH (RFC 4954) are not advertised.
        ["MAIL FROM:<alice@example.org> RET=FULL", "555 5.5.4 unsupported parameter RET"],
        ["MAIL FROM:<alice@example.org> ENVID=abc", "555 5.5.4 unsupported parameter ENVID"],
        ["MAIL FROM:<alice@example.org> AUTH=<>", "555 5.5.4 unsupported parameter AUTH"],
      ]);
      const long = await c.command(`MAIL FROM:<alice@example.org> X-${"p".repeat(5000)}=1`);
      assert.deepEqual(long, [`555 5.5.4 unsupported parameter X-${"P".repeat(62)}...`]);
      assert.ok(long[0]!.length < 512, "the reply stays within RFC 5321's 512 octets");
      await expect(c, [
        ["MAIL FROM:<alice@example.org>", "250 2.1.0 Accepted"],
        ["RCPT TO:<room-one@bridge.test> NOTIFY=SUCCESS", "555 5.5.4 unsupported parameter NOTIFY"],
        ["RCPT TO:<room-one@bridge.test> ORCPT=rfc822;room-one@bridge.test", "555 5.5.4 unsupported parameter ORCPT"],
        ["RCPT TO:<room-one@bridge.test> FOO=BAR", "555 5.5.4 unsupported parameter FOO"],
        ["RCPT TO:<Postmaster> FOO", "555 5.5.4 unsupported parameter FOO"],
        ["RCPT TO:<room-one@bridge.test>", "250 2.1.5 Accepted"],
      ]);
    });
    assert.deepEqual(handler.checked, ["room-one@bridge.test"]);
  });

  test("a non-ASCII address without SMTPUTF8 on MAIL FROM: 553 5.6.7 (RFC 6531 §3.4, §3.5); with it, the address is taken", async () => {
    handler.reset();
    await withSession(async (c) => {
      await expect(c, [
        ["MAIL FROM:<jürgen@example.org>", "553 5.6.7 a non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM"],
        ["MAIL FROM:<alice@exämple.org>", "553 5.6.7 a non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM"],
        ["MAIL FROM:<alice@example.org>", "250 2.1.0 Accepted"],
        ["RCPT TO:<räum@bridge.test>", "553 5.6.7 a non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM"],
        ["RCPT TO:<room-one@bridge.test>", "250 2.1.5 Accepted"],
        ["RSET", "250 2.0.0 Flushed"],
        ["MAIL FROM:<jürgen@example.org> SMTPUTF8", "250 2.1.0 Accepted"],
        ["RCPT TO:<räum@bridge.test>", "250 2.1.5 Accepted"],
      ]);
    });
    assert.deepEqual(handler.checked, ["room-one@bridge.test", "räum@bridge.test"], "the refused address is never looked up");
  });

  test("the listener's own refusals keep their exact code and enhanced code (no second code, no table code)", async () => {
    handler.reset();
    handler.deliverImpl = async () => {
      throw Rejections.loopDetected(50);
    };
    const c = await open();
    try {
      await expect(c, [
        ["MAIL FROM:<alice@example.org>", "250 2.1.0 Accepted"],
        ["RCPT TO:<nobody@bridge.test>", "550 5.1.1 <nobody@bridge.test>: no such mailbox here"],
        ["RCPT TO:<someone@other.test>", "550 5.7.1 <someone@other.test>: relaying denied"],
        ["RCPT TO:<broken@bridge.test>", "451 4.3.0 temporary local failure, try again later"],
        ["RCPT TO:<room-one@bridge.test>", "250 2.1.5 Accepted"],
        ["DATA", "354 End data with <CR><LF>.<CR><LF>"],
      ]);
      c.write("Subject: x\r\n\r\nbody\r\n.\r\n");
      const reply = await c.reply();
      assert.deepEqual(reply, ["554 5.4.6 routing loop detected: more than 50 Received headers"]);
      assertCoded(reply);
    } finally {
      c.close();
      handler.reset();
    }
    assert.equal(handler.deliveries.length, 0);
  });
});

describe("SmtpListener limits and lifecycle", () => {
  test("a large message is written in place as it arrives: byte-identical, room for the trace in front, over the limit still 552", async () => {
    const handler = new RecordingHandler();
    const max = 3 * LARGE_MESSAGE_BYTES;
    const { listener, port } = await startListener(handler, { max_message_bytes: max });
    try {
      const line = (i: number): string => `${String(i).padStart(8, "0")} ${"q".repeat(68)}\r\n`;
      const body = (bytes: number): string => Array.from({ length: Math.ceil(bytes / 79) }, (_, i) => line(i)).join("");
      const large = rawMessage(body(2 * LARGE_MESSAGE_BYTES));
      assert.ok(large.length > LARGE_MESSAGE_BYTES && large.length <= max);
      /** The buffer deliver() was lent, as it is after the reply. */
      let lent: Buffer | null = null;
      /** The message with a trace header in front, as the router stores it (a copy of it). */
      let stored: Buffer | null = null;
      const trace = Buffer.from("Received: from test\r\n");
      handler.deliverImpl = async (raw, envelope) => {
        lent = raw;
        const traced = withTrace(trace, raw, envelope.traceHeadroom ?? 0);
        assert.equal(traced.buffer, raw.buffer, "the trace header goes in front without a copy");
        stored = Buffer.from(traced);
      };
      const noted = largeWork.noted;
      const info = await sendOnce(port, { from: "alice@example.org", to: ["room-one@bridge.test"] }, large);
      assert.match(info.response, /^250 /);
      const got = handler.deliveries[0]!;
      const counted = largeWork.noted - noted;
      assert.ok(counted > 0 && counted <= large.length - LARGE_MESSAGE_BYTES, `the bytes past 1 MiB are counted as large-message work (util/reclaim.ts): ${counted}`);
      assert.ok(got.raw.equals(large), "the message reaches deliver() byte for byte");
      assert.equal(got.envelope.traceHeadroom, TRACE_HEADROOM_BYTES);
      assert.ok(stored!.equals(Buffer.concat([trace, large])));
      assert.equal(lent!.length, 0, "once deliver() settled, the large message's memory was freed (its buffer detached)");

      const over = rawMessage(body(max));
      await assert.rejects(sendOnce(port, { from: "alice@example.org", to: ["room-one@bridge.test"] }, over), (err: SendError) => {
        assert.equal(err.responseCode, 552);
        return true;
      });
      assert.equal(handler.deliveries.length, 1, "the message over the limit is not delivered");
      const next = rawMessage(body(LARGE_MESSAGE_BYTES + 100));
      assert.match((await sendOnce(port, { from: "alice@example.org", to: ["room-one@bridge.test"] }, next)).response, /^250 /);
      assert.ok(handler.deliveries[1]!.raw.equals(next), "the next large message is not mixed with the refused one");
    } finally {
      await listener.close();
    }
  });

  test("a large message's MIME checks read its in-place copy: the skeleton leaves the attachment out, a part past 1 MiB still counts", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startListener(handler, { max_message_bytes: 4 * LARGE_MESSAGE_BYTES, max_mime_parts: 4 });
    try {
      const attachment = Buffer.alloc(Math.ceil(1.5 * LARGE_MESSAGE_BYTES), 7).toString("base64").replace(/.{76}/g, "$&\r\n");
      const message = (textParts: number): Buffer =>
        Buffer.from(
          [
            "From: Alice <alice@example.org>",
            "To: room-one@bridge.test",
            "Subject: large",
            "MIME-Version: 1.0",
            'Content-Type: multipart/mixed; boundary="b"',
            "",
            "--b",
            "Content-Type: application/octet-stream",
            'Content-Disposition: attachment; filename="big.bin"',
            "Content-Transfer-Encoding: base64",
            "",
            attachment,
            ...Array.from({ length: textParts }, (_, i) => ["--b", "Content-Type: text/plain", "", `after the attachment ${i}`]).flat(),
            "--b--",
            "",
          ].join("\r\n"),
        );
      const ok = message(2);
      assert.ok(ok.length > LARGE_MESSAGE_BYTES);
      assert.match((await sendOnce(port, { from: "alice@example.org", to: ["room-one@bridge.test"] }, ok)).response, /^250 /);
      const got = handler.deliveries[0]!;
      assert.ok(got.raw.equals(ok));
      const skeleton = got.envelope.skeleton?.toString("latin1") ?? "";
      assert.match(skeleton, /after the attachment 1/, "the parts after 1 MiB are in the skeleton");
      assert.ok(skeleton.length < 10_000, `the attachment's content is left out (skeleton ${skeleton.length} bytes)`);
      // The message, its attachment and 3 text parts: 5 MIME parts, the 5th past 1 MiB.
      await assert.rejects(sendOnce(port, { from: "alice@example.org", to: ["room-one@bridge.test"] }, message(3)), (err: SendError) => {
        assert.equal(err.responseCode, 552);
        assert.match(err.response ?? "", /5\.6\.0 message has more than 4 MIME parts/);
        return true;
      });
      assert.equal(handler.deliveries.length, 1);
    } finally {
      await listener.close();
    }
  });

  test("too many recipients: 452 4.5.3 past the limit", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startListener(handler, { max_recipients: 3 });
    try {
      const to = ["r1@bridge.test", "r2@bridge.test", "r3@bridge.test", "r4@bridge.test", "r5@bridge.test"];
      const info = await sendOnce(port, { from: "alice@example.org", to }, rawMessage());
      assert.deepEqual(info.accepted, to.slice(0, 3));
      assert.deepEqual(info.rejected, to.slice(3));
      for (const e of info.rejectedErrors ?? []) {
        assert.equal(e.response, "452 4.5.3 too many recipients, at most 3 per message");
      }
      assert.deepEqual(handler.deliveries[0]?.envelope.rcptTo, to.slice(0, 3));
    } finally {
      await listener.close();
    }
  });

  test("a repeated recipient counts against the limit again, but is resolved only once", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startListener(handler, { max_recipients: 2 });
    const c = await RawClient.open(port);
    try {
      await c.reply();
      await c.command("EHLO client.example.org");
      await c.command("MAIL FROM:<a@example.org>");
      assert.deepEqual(await c.command("RCPT TO:<r1@bridge.test>"), ["250 2.1.5 Accepted"]);
      assert.deepEqual(await c.command("RCPT TO:<r1@BRIDGE.TEST>"), ["250 2.1.5 Accepted"]);
      assert.deepEqual(await c.command("RCPT TO:<r2@bridge.test>"), ["452 4.5.3 too many recipients, at most 2 per message"]);
      assert.deepEqual(await c.command("RCPT TO:<r1@bridge.test>"), ["452 4.5.3 too many recipients, at most 2 per message"]);
    } finally {
      c.close();
      await listener.close();
    }
    assert.deepEqual(handler.checked, ["r1@bridge.test"]);
    assert.equal(handler.deliveries.length, 0);
  });

  test("a recipient check that hangs gets 451 4.3.0 after recipientTimeoutMs", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startListener(handler, {}, { recipientTimeoutMs: 200 });
    const c = await RawClient.open(port);
    try {
      await c.reply();
      await c.command("EHLO client.example.org");
      await c.command("MAIL FROM:<a@example.org>");
      const started = Date.now();
      assert.deepEqual(await c.command("RCPT TO:<slow@bridge.test>"), ["451 4.3.0 temporary local failure, try again later"]);
      assert.ok(Date.now() - started >= 150);
      assert.deepEqual(await c.command("RCPT TO:<r1@bridge.test>"), ["250 2.1.5 Accepted"]);
    } finally {
      c.close();
      await listener.close();
    }
  });

  test("max_clients: the connection over the limit gets 421 4.7.0", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startListener(handler, { max_clients: 1 });
    const first = await RawClient.open(port);
    try {
      assert.match((await first.reply())[0] ?? "", /^220 /);
      const second = await RawClient.open(port);
      try {
        assert.deepEqual(await second.reply(), ["421 4.7.0 too many connections, try again later"]);
      } finally {
        second.close();
      }
    } finally {
      first.close();
      await listener.close();
    }
  });

  test("listen() with port 0 returns the bound port; binding a used port rejects", async () => {
    const handler = new RecordingHandler();
    const a = await startListener(handler);
    try {
      assert.ok(a.port > 0);
      const b = new SmtpListener({ config: smtpConfig({ port: a.port }), mailDomain: MAIL_DOMAIN, handler, reverseLookup: false });
      await assert.rejects(b.listen(), /EADDRINUSE/);
      await b.close();
    } finally {
      await a.listener.close();
    }
  });

  test("close() is bounded when a client stays connected", async () => {
    const handler = new RecordingHandler();
    const { listener, port } = await startListener(handler, {}, { closeTimeoutMs: 300 });
    const c = await RawClient.open(port);
    await c.reply();
    await c.command("EHLO client.example.org");
    const started = Date.now();
    await listener.close();
    assert.ok(Date.now() - started < 2000, "close took too long");
    c.close();
    await assert.rejects(RawClient.open(port));
  });

  test("close() waits for a delivery in progress", async () => {
    const handler = new RecordingHandler();
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let entered!: () => void;
    const deliverEntered = new Promise<void>((resolve) => (entered = resolve));
    handler.deliverImpl = async () => {
      entered();
      await gate;
    };
    const { listener, port } = await startListener(handler, {}, { closeTimeoutMs: 5000 });
    const conn = await connect(port);
    const sent = send(conn, { from: "alice@example.org", to: ["room-one@bridge.test"] }, rawMessage());
    await deliverEntered;
    let closed = false;
    const closing = listener.close().then(() => (closed = true));
    await delay(200);
    assert.equal(closed, false);
    release();
    const info = await sent;
    assert.match(info.response, /^250 /);
    conn.quit();
    await closing;
    assert.equal(handler.deliveries.length, 1);
  });

  test("constructor rejects half-configured TLS and a bad domain", () => {
    const handler = new RecordingHandler();
    assert.throws(() => new SmtpListener({ config: smtpConfig({ tls_cert_file: "/x.pem" }), mailDomain: MAIL_DOMAIN, handler }), /together/);
    assert.throws(() => new SmtpListener({ config: smtpConfig(), mailDomain: "", handler }), /mail domain/);
  });
});

describe("SmtpListener STARTTLS", async () => {
  await testWithOpenssl("STARTTLS with a self-signed certificate; envelope.secure is true", "meb-smtp-tls-", async (dir) => {
    const { cert, key } = await makeCert(dir, "mx.bridge.test");
    const handler = new RecordingHandler();
    const { listener, port } = await startListener(handler, { tls_cert_file: cert, tls_key_file: key });
    try {
      const c = await RawClient.open(port);
      try {
        await c.reply();
        const ehlo = await c.command("EHLO client.example.org");
        assert.ok(ehlo.some((l) => /^250[- ]STARTTLS$/.test(l)), ehlo.join("\n"));
        assert.ok(!ehlo.some((l) => /AUTH/.test(l)), ehlo.join("\n"));
        // RFC 2034 §3 (4): a 2xx reply other than the greeting and to EHLO, so it has its code.
        assert.deepEqual(await c.command("STARTTLS x"), ["501 5.5.4 Error: syntax: STARTTLS"]);
        assert.deepEqual(await c.command("STARTTLS"), ["220 2.0.0 Ready to start TLS"]);
      } finally {
        c.close();
      }
      const conn = await connect(port, { ignoreTLS: false, requireTLS: true, tls: { rejectUnauthorized: false } });
      try {
        assert.equal(conn.secure, true);
        const info = await send(conn, { from: "alice@example.org", to: ["room-one@bridge.test"] }, rawMessage());
        assert.match(info.response, /^250 /);
      } finally {
        conn.quit();
      }
      assert.equal(handler.deliveries.length, 1);
      assert.equal(handler.deliveries[0]!.envelope.secure, true);
      assert.ok(handler.deliveries[0]!.raw.equals(rawMessage()));
    } finally {
      await listener.close();
    }
  });
});
