/**
 * The rspamd client against a real rspamd (test/harness/rspamd.ts) on loopback, plus a
 * fake loopback HTTP server for the failure modes a healthy rspamd does not produce.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { IncomingHttpHeaders, Server } from "node:http";
import type { AddressInfo } from "node:net";
import { startRspamd } from "../harness/rspamd.ts";
import type { TestRspamd } from "../harness/rspamd.ts";
import { configureLogging } from "../../src/util/logger.ts";
import type { InboundEnvelope } from "../../src/mail/inbound/SmtpListener.ts";
import { SmtpReply } from "../../src/mail/inbound/rejections.ts";
import {
  SPAM_ACTIONS,
  checkWithRspamd,
  verdictReply,
} from "../../src/mail/inbound/rspamd.ts";
import type { SpamVerdict } from "../../src/mail/inbound/rspamd.ts";

configureLogging({ write: () => undefined });

const GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

function envelope(overrides: Partial<InboundEnvelope> = {}): InboundEnvelope {
  return {
    mailFrom: "alice@example.com",
    rcptTo: ["bob@bridge.test"],
    recipients: new Map(),
    remoteAddress: "192.0.2.10",
    clientHostname: "mail.example.com",
    heloName: "mail.example.com",
    sessionId: "sess0001",
    secure: false,
    ...overrides,
  };
}

function message(body: string, to = "bob@bridge.test"): Buffer {
  return Buffer.from(
    [
      "From: Alice <alice@example.com>",
      `To: ${to}`,
      "Subject: lunch tomorrow",
      `Date: ${new Date().toUTCString().replace("GMT", "+0000")}`,
      `Message-ID: <${Date.now()}.${Math.random().toString(36).slice(2)}@example.com>`,
      "MIME-Version: 1.0",
      "Content-Type: text/plain; charset=utf-8",
      "",
      body,
      "",
    ].join("\r\n"),
  );
}

/** A loopback port nothing listens on (bound, then closed). */
function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

interface Captured {
  method: string | undefined;
  url: string | undefined;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
}

/** A fake rspamd on loopback answering every request with `respond`. */
async function fakeRspamd(
  respond: (res: import("node:http").ServerResponse) => void,
): Promise<{ url: string; requests: Captured[]; close(): Promise<void> }> {
  const requests: Captured[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      requests.push({ method: req.method, url: req.url, headers: req.headers, rawHeaders: req.rawHeaders, body: Buffer.concat(chunks) });
      respond(res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function json(body: unknown, status = 200) {
  return (res: import("node:http").ServerResponse): void => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
}

describe("verdictReply (unit)", () => {
  const v = (action: SpamVerdict["action"]): SpamVerdict => ({ action, score: 1, requiredScore: 15, symbols: [] });

  test("reject gives 550 5.7.1", () => {
    const r = verdictReply(v("reject"));
    assert.ok(r instanceof SmtpReply);
    assert.equal(r.responseCode, 550);
    assert.equal(r.enhancedStatus, "5.7.1");
    assert.equal(r.line, "550 5.7.1 message rejected as spam");
    assert.equal(r.permanent, true);
  });

  for (const action of ["soft reject", "greylist"] as const) {
    test(`${action} gives 451 4.7.1`, () => {
      const r = verdictReply(v(action));
      assert.ok(r instanceof SmtpReply);
      assert.equal(r.responseCode, 451);
      assert.equal(r.enhancedStatus, "4.7.1");
      assert.match(r.text, /try again later/);
      assert.equal(r.permanent, false);
    });
  }

  for (const action of ["no action", "add header", "rewrite subject"] as const) {
    test(`${action} accepts (null)`, () => {
      assert.equal(verdictReply(v(action)), null);
    });
  }

  test("every known action is covered", () => {
    assert.deepEqual([...SPAM_ACTIONS].sort(), ["add header", "greylist", "no action", "reject", "rewrite subject", "soft reject"]);
  });
});

describe("checkWithRspamd against a fake rspamd", () => {
  test("sends the message and the envelope as rspamd protocol headers", async () => {
    const fake = await fakeRspamd(json({ action: "add header", score: 7.2, required_score: 15, symbols: { B: {}, A: {} } }));
    try {
      const raw = message("héllo");
      const v = await checkWithRspamd(
        { url: fake.url + "/", timeoutMs: 5_000 },
        raw,
        envelope({ rcptTo: ["bob@bridge.test", "carol@bridge.test"], sessionId: "q123", clientHostname: "[192.0.2.10]", heloName: "helo.example" }),
      );
      assert.deepEqual(v, { action: "add header", score: 7.2, requiredScore: 15, symbols: ["A", "B"] });
      const req = fake.requests[0];
      assert.ok(req);
      assert.equal(req.method, "POST");
      assert.equal(req.url, "/checkv2");
      assert.ok(req.body.equals(raw));
      assert.equal(req.headers["ip"], "192.0.2.10");
      assert.equal(req.headers["helo"], "helo.example");
      assert.equal(req.headers["hostname"], undefined, "no Hostname when the reverse name is unknown");
      assert.equal(req.headers["from"], "alice@example.com");
      assert.equal(req.headers["rcpt"], "bob@bridge.test, carol@bridge.test");
      assert.equal(req.headers["queue-id"], "q123");
    } finally {
      await fake.close();
    }
  });

  test("null reverse-path is sent as From: <>, known reverse name as Hostname", async () => {
    const fake = await fakeRspamd(json({ action: "no action", score: 0, required_score: 15, symbols: {} }));
    try {
      await checkWithRspamd({ url: fake.url, timeoutMs: 5_000 }, message("x"), envelope({ mailFrom: null }));
      assert.equal(fake.requests[0]?.headers["from"], "<>");
      assert.equal(fake.requests[0]?.headers["hostname"], "mail.example.com");
    } finally {
      await fake.close();
    }
  });

  test("non-2xx answer is an Error naming the URL and the status", async () => {
    const fake = await fakeRspamd(json({ error: "boom" }, 500));
    try {
      await assert.rejects(checkWithRspamd({ url: fake.url, timeoutMs: 5_000 }, message("x"), envelope()), (err: unknown) => {
        assert.ok(err instanceof Error);
        assert.ok(err.message.includes(fake.url), err.message);
        assert.match(err.message, /HTTP status 500/);
        return true;
      });
    } finally {
      await fake.close();
    }
  });

  test("unknown action is an Error", async () => {
    const fake = await fakeRspamd(json({ action: "discard", score: 30, required_score: 15, symbols: {} }));
    try {
      await assert.rejects(checkWithRspamd({ url: fake.url, timeoutMs: 5_000 }, message("x"), envelope()), (err: unknown) => {
        assert.ok(err instanceof Error);
        assert.ok(err.message.includes(fake.url), err.message);
        assert.match(err.message, /unknown action "discard"/);
        return true;
      });
    } finally {
      await fake.close();
    }
  });

  test("an invalid URL or one with credentials is an Error that does not echo the password", async () => {
    await assert.rejects(checkWithRspamd({ url: "not a url", timeoutMs: 1_000 }, message("x"), envelope()), /rspamd at not a url: invalid URL/);
    await assert.rejects(checkWithRspamd({ url: "ftp://127.0.0.1:21", timeoutMs: 1_000 }, message("x"), envelope()), /must be http/);
    await assert.rejects(checkWithRspamd({ url: "http://u:secret@127.0.0.1:9/", timeoutMs: 1_000 }, message("x"), envelope()), (err: unknown) => {
      assert.ok(err instanceof Error);
      assert.ok(!err.message.includes("secret"), err.message);
      assert.match(err.message, /rspamd at http:\/\/127\.0\.0\.1:9: URL must not contain/);
      return true;
    });
  });

  test("non-JSON answer is an Error", async () => {
    const fake = await fakeRspamd((res) => res.end("<html>proxy error</html>"));
    try {
      await assert.rejects(checkWithRspamd({ url: fake.url, timeoutMs: 5_000 }, message("x"), envelope()), /not JSON/);
    } finally {
      await fake.close();
    }
  });

  test("no answer within timeoutMs is an Error naming the URL and the timeout", async () => {
    const fake = await fakeRspamd(() => undefined); // never answers
    try {
      const started = Date.now();
      await assert.rejects(checkWithRspamd({ url: fake.url, timeoutMs: 300 }, message("x"), envelope()), (err: unknown) => {
        assert.ok(err instanceof Error);
        assert.ok(err.message.includes(fake.url), err.message);
        assert.match(err.message, /no answer within 300 ms/);
        return true;
      });
      assert.ok(Date.now() - started < 3_000);
    } finally {
      await fake.close();
    }
  });
});

describe("checkWithRspamd against a real rspamd", () => {
  let rspamd: TestRspamd;

  before(async () => {
    rspamd = await startRspamd();
  });
  after(async () => {
    await rspamd?.stop();
  });

  test("a plain message gets no action and is accepted", async () => {
    const v = await checkWithRspamd({ url: rspamd.url, timeoutMs: 10_000 }, message("Hi Bob,\r\n\r\nlunch tomorrow at noon?\r\n\r\nAlice"), envelope());
    assert.equal(v.action, "no action", JSON.stringify(v));
    assert.ok(v.score < v.requiredScore);
    assert.equal(v.requiredScore, 15);
    assert.ok(v.symbols.length > 0);
    assert.equal(verdictReply(v), null);
  });

  test("GTUBE is rejected with 550 5.7.1", async () => {
    const v = await checkWithRspamd({ url: rspamd.url, timeoutMs: 10_000 }, message(`test\r\n${GTUBE}\r\n`), envelope());
    assert.equal(v.action, "reject", JSON.stringify(v));
    assert.ok(v.symbols.includes("GTUBE"), JSON.stringify(v.symbols));
    const reply = verdictReply(v);
    assert.ok(reply);
    assert.equal(reply.line, "550 5.7.1 message rejected as spam");
  });

  test("every recipient reaches rspamd (appended Rcpt headers)", async () => {
    const raw = () => message("Hi both", "bob@bridge.test, carol@bridge.test");
    const both = await checkWithRspamd({ url: rspamd.url, timeoutMs: 10_000 }, raw(), envelope({ rcptTo: ["bob@bridge.test", "carol@bridge.test"] }));
    assert.ok(both.symbols.includes("TO_MATCH_ENVRCPT_ALL"), JSON.stringify(both.symbols));
    const one = await checkWithRspamd({ url: rspamd.url, timeoutMs: 10_000 }, raw(), envelope({ rcptTo: ["bob@bridge.test"] }));
    assert.ok(one.symbols.includes("TO_MATCH_ENVRCPT_SOME"), JSON.stringify(one.symbols));
  });

  test("an unreachable rspamd is an Error naming the URL", async () => {
    const url = `http://127.0.0.1:${await closedPort()}`;
    await assert.rejects(checkWithRspamd({ url, timeoutMs: 2_000 }, message("x"), envelope()), (err: unknown) => {
      assert.ok(err instanceof Error);
      assert.ok(err.message.includes(url), err.message);
      assert.match(err.message, /ECONNREFUSED|request failed/);
      return true;
    });
  });
});
