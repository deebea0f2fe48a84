/**
 * The submission listener's replies over raw SMTP on loopback: like the MX listener it
 * advertises ENHANCEDSTATUSCODES and every reply, smtp-server's own included, carries an RFC 3463
 * code (RFC 2034 §3: not the greeting, the replies to EHLO, and 3xx); MAIL FROM and RCPT TO
 * parameters it does not offer get 555 5.5.4 (RFC 5321 §4.1.1.11).
 */
import { describe } from "node:test";
import assert from "node:assert/strict";
import tls from "node:tls";
import { configureLogging } from "../../src/util/logger.ts";
import { SubmissionListener, type SubmissionHandler } from "../../src/mail/submission/SubmissionListener.ts";
import { RawClient, makeCert, testWithOpenssl } from "../harness/smtpListener.ts";

configureLogging({ level: "error", format: "json", write: () => {} });

const ALICE = "alice@bridge.test";
const PASSWORD = "correct horse";

/** `AUTH PLAIN` initial response (RFC 4616): empty authzid, authcid, password. */
const plain = (login: string, password: string): string => Buffer.from(`\0${login}\0${password}`).toString("base64");

/** Reads whole SMTP replies from a TLS socket (the harness client's own STARTTLS pins a reply text). */
class TlsLines {
  readonly #socket: tls.TLSSocket;
  #buffer = "";
  #lines: string[] = [];
  #wake: (() => void) | null = null;

  constructor(socket: tls.TLSSocket) {
    this.#socket = socket;
    socket.on("data", (chunk: Buffer) => {
      this.#buffer += chunk.toString("latin1");
      let i: number;
      while ((i = this.#buffer.indexOf("\r\n")) >= 0) {
        this.#lines.push(this.#buffer.slice(0, i));
        this.#buffer = this.#buffer.slice(i + 2);
      }
      this.#wake?.();
    });
  }

  /** The next complete reply. @throws Error after 5 s */
  async reply(): Promise<string[]> {
    const deadline = Date.now() + 5000;
    for (;;) {
      const end = this.#lines.findIndex((l) => /^\d{3}(?: |$)/.test(l));
      if (end >= 0) return this.#lines.splice(0, end + 1);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout waiting for reply, pending lines: ${JSON.stringify(this.#lines)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  /** Send one line (CRLF added), or raw data with `raw`; returns the reply. */
  command(line: string, raw = false): Promise<string[]> {
    this.#socket.write(raw ? line : `${line}\r\n`);
    return this.reply();
  }
}

describe("submission listener: enhanced status codes and ESMTP parameters", async () => {
  await testWithOpenssl("every reply has its code; parameters not offered get 555 5.5.4", "meb-sub-codes-", async (dir) => {
    const { cert, key } = await makeCert(dir, "mx.bridge.test");
    const delivered: string[][] = [];
    const handler: SubmissionHandler = {
      authenticate: async (login, password) => (login === ALICE && password === PASSWORD ? { userId: "@alice:bridge.test", address: ALICE } : null),
      checkRecipient: async () => {},
      deliver: async (_raw, envelope) => {
        delivered.push(envelope.rcptTo);
      },
    };
    const listener = new SubmissionListener({
      config: {
        bind_address: "127.0.0.1",
        port: 0,
        hostname: "mx.bridge.test",
        tls_cert_file: cert,
        tls_key_file: key,
        max_auth_failures_per_ip: 5,
        max_message_bytes: 1_000_000,
        max_clients: 10,
        max_recipients: 10,
        max_header_bytes: 65_536,
        max_mime_parts: 100,
        max_mime_depth: 10,
        max_received_headers: 50,
      },
      handler,
      closeTimeoutMs: 500,
    });
    const { port } = await listener.listen();
    const c = await RawClient.open(port);
    try {
      assert.deepEqual(await c.reply(), ["220 mx.bridge.test ESMTP matrix-email-bridge submission"]);
      assert.deepEqual(await c.command("EHLO"), ["501 5.5.4 Error: syntax: EHLO hostname"]);
      const ehlo = await c.command("EHLO client.example.org");
      assert.ok(ehlo.includes("250-ENHANCEDSTATUSCODES") && ehlo.includes("250-STARTTLS"), ehlo.join("\n"));
      assert.ok(!ehlo.some((l) => /AUTH/.test(l)), ehlo.join("\n"));
      assert.deepEqual(await c.command("NOOP"), ["250 2.0.0 OK"]);
      assert.deepEqual(await c.command(`MAIL FROM:<${ALICE}>`), ["530 5.7.0 Must issue a STARTTLS command first"]);
      assert.deepEqual(await c.command("STARTTLS"), ["220 2.0.0 Ready to start TLS"]);

      c.socket.removeAllListeners("data");
      const secure = tls.connect({ socket: c.socket, rejectUnauthorized: false });
      await new Promise<void>((resolve, reject) => {
        secure.once("secureConnect", resolve);
        secure.once("error", reject);
      });
      const s = new TlsLines(secure);
      const ehlo2 = await s.command("EHLO client.example.org");
      assert.ok(ehlo2.includes("250-ENHANCEDSTATUSCODES") && ehlo2.some((l) => /^250[- ]AUTH PLAIN LOGIN$/.test(l)), ehlo2.join("\n"));
      const steps: [string, string][] = [
        [`MAIL FROM:<${ALICE}>`, "530 5.7.0 Authentication required"],
        [`AUTH PLAIN ${plain(ALICE, "wrong")}`, "535 5.7.8 Authentication credentials invalid"],
        ["AUTH FOO", "504 5.5.4 Error: Unrecognized authentication type"],
        ["WIZ secret", "500 5.5.2 Error: command not recognized"],
        ["SHELL", "500 5.5.2 Error: command not recognized"],
        ["KILL", "500 5.5.2 Error: command not recognized"],
        [`AUTH PLAIN ${plain(ALICE, PASSWORD)}`, "235 2.7.0 Authentication successful"],
        [`MAIL FROM:<${ALICE}> FOO=BAR`, "555 5.5.4 unsupported parameter FOO"],
        [`MAIL FROM:<${ALICE}> RET=HDRS`, "555 5.5.4 unsupported parameter RET"],
        ["RCPT TO:<bob@example.org>", "503 5.5.1 Error: need MAIL command"],
        [`MAIL FROM:<bob@example.org> FOO=BAR`, `553 5.7.1 <bob@example.org> is not your address; you may send as <${ALICE}> only`],
        ["MAIL FROM:<a@b@example.org>", "501 5.1.7 Error: Bad sender address syntax"],
        [`MAIL FROM:<${ALICE}> AUTH=<${ALICE}> SIZE=100 BODY=8BITMIME`, "250 2.1.0 Accepted"],
        ["RCPT TO:<bob@example.org> NOTIFY=NEVER", "555 5.5.4 unsupported parameter NOTIFY"],
        ["RCPT TO:<odd>", "501 5.1.3 Error: Bad recipient address syntax"],
        ["RCPT TO:<bob@example.org>", "250 2.1.5 Accepted"],
        ["DATA", "354 End data with <CR><LF>.<CR><LF>"],
      ];
      for (const [command, reply] of steps) assert.deepEqual(await s.command(command), [reply], command);
      assert.deepEqual(await s.command(`From: ${ALICE}\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n.\r\n`, true), ["250 2.0.0 OK: message accepted"]);
      assert.deepEqual(await s.command("QUIT"), ["221 2.0.0 Bye"]);
    } finally {
      c.close();
      await listener.close();
    }
    assert.deepEqual(delivered, [["bob@example.org"]]);
  });
});
