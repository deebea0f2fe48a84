/**
 * Test harness for the inbound SMTP listener (src/mail/inbound/SmtpListener.ts) over real
 * SMTP on loopback: a listener started on a free port with a test configuration, a handler
 * that records what it is asked and given, a line-based raw SMTP client for checking exact
 * reply lines, and self-signed certificates for the STARTTLS tests.
 *
 * Used by test/integration/smtpListener.test.ts and test/integration/smtpLimits.test.ts.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import tls from "node:tls";
import { promisify } from "node:util";
import { SmtpListener } from "../../src/mail/inbound/SmtpListener.ts";
import type { InboundEnvelope, InboundHandler, SmtpListenerConfig, SmtpListenerOptions } from "../../src/mail/inbound/SmtpListener.ts";
import { Rejections } from "../../src/mail/inbound/rejections.ts";
import { LIMIT_DEFAULTS, MessageInspector } from "../../src/mail/inbound/limits.ts";

/** The bridge's mail domain in these tests; the listener's hostname is `mx.` + this. */
export const MAIL_DOMAIN = "bridge.test";

/** Resolves after `ms` milliseconds. */
export const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A listener configuration for tests: 127.0.0.1, port 0 (any free port), hostname
 * `mx.bridge.test`, 4 MiB messages, 50 clients, no TLS; `overrides` replace any of these
 * and add the optional limits. Pure: throws nothing.
 */
export function smtpListenerConfig(overrides: Partial<SmtpListenerConfig> = {}): SmtpListenerConfig {
  return {
    bind_address: "127.0.0.1",
    port: 0,
    hostname: `mx.${MAIL_DOMAIN}`,
    max_message_bytes: 4 * 1024 * 1024,
    max_clients: 50,
    tls_cert_file: null,
    tls_key_file: null,
    ...overrides,
  };
}

/**
 * Start an SmtpListener for {@link MAIL_DOMAIN} with `handler`, on the configuration
 * {@link smtpListenerConfig}(`overrides`), without reverse lookups and with a 1 s close
 * timeout; `extra` replaces or adds listener options (e.g. `closeTimeoutMs`, `dns`,
 * `reverseLookup: true`).
 * @returns the listening listener (the caller closes it) and the port it is bound to
 * @throws what the SmtpListener constructor throws for a bad configuration (e.g. TLS files
 *   without each other), and what `listen()` rejects with (e.g. EADDRINUSE)
 */
export async function startSmtpListener<T>(
  handler: InboundHandler<T>,
  overrides: Partial<SmtpListenerConfig> = {},
  extra: Partial<SmtpListenerOptions<T>> = {},
): Promise<{ listener: SmtpListener<T>; port: number }> {
  const listener = new SmtpListener<T>({
    config: smtpListenerConfig(overrides),
    mailDomain: MAIL_DOMAIN,
    handler,
    reverseLookup: false,
    closeTimeoutMs: 1000,
    ...extra,
  });
  const { port } = await listener.listen();
  return { listener, port };
}

/** One message handed to {@link RecordingHandler.deliver}. */
export interface Delivery {
  raw: Buffer;
  envelope: InboundEnvelope<string>;
}

/**
 * An InboundHandler that records every recipient check and every delivery.
 *
 * Recipients by local part: `nobody*` → 550 5.1.1 (no such mailbox), `disabled*` → 550 5.2.1
 * (mailbox disabled), `broken*` → a plain Error (the listener answers 451 4.3.0), `slow*`
 * never answers; any other resolves to `mailbox:<local part lower-cased>`.
 *
 * Knobs: `checkDelayMs` / `deliverDelayMs` make the handler slow; `deliverImpl` runs before a
 * delivery is recorded (throw from it to refuse the message). {@link reset} restores all.
 */
export class RecordingHandler implements InboundHandler<string> {
  /** The addresses asked about, in order. */
  checked: string[] = [];
  /** The envelope as it was at each check (a copy), parallel to {@link checked}. */
  checkedEnvelopes: InboundEnvelope<string>[] = [];
  /** The messages delivered (only those whose `deliverImpl` resolved), in order. */
  deliveries: Delivery[] = [];
  checkDelayMs = 0;
  deliverDelayMs = 0;
  deliverImpl: (raw: Buffer, envelope: InboundEnvelope<string>) => Promise<void> = async () => {};

  /** @throws SmtpReply for `nobody*` and `disabled*`, Error for `broken*` (see the class comment) */
  async checkRecipient(address: string, envelope: InboundEnvelope<string>): Promise<string> {
    this.checked.push(address);
    this.checkedEnvelopes.push(structuredClone(envelope));
    if (this.checkDelayMs) await delay(this.checkDelayMs);
    const local = address.slice(0, address.lastIndexOf("@"));
    if (local.startsWith("nobody")) throw Rejections.noSuchMailbox(address);
    if (local.startsWith("disabled")) throw Rejections.mailboxDisabled(address);
    if (local.startsWith("broken")) throw new Error("database is down");
    if (local.startsWith("slow")) await new Promise<never>(() => {});
    return `mailbox:${local.toLowerCase()}`;
  }

  /** Waits `deliverDelayMs`, runs `deliverImpl`, then records the message. @throws what `deliverImpl` throws */
  async deliver(raw: Buffer, envelope: InboundEnvelope<string>): Promise<void> {
    if (this.deliverDelayMs) await delay(this.deliverDelayMs);
    await this.deliverImpl(raw, envelope);
    // A copy: the listener frees a large message's buffer once deliver() settles.
    this.deliveries.push({ raw: Buffer.from(raw), envelope });
  }

  /** Forget everything recorded and restore the default behaviour. */
  reset(): void {
    this.checked = [];
    this.checkedEnvelopes = [];
    this.deliveries = [];
    this.checkDelayMs = 0;
    this.deliverDelayMs = 0;
    this.deliverImpl = async () => {};
  }
}

/**
 * A minimal line-based SMTP client on 127.0.0.1 (optionally from another loopback source
 * address), for checking exact reply lines; can upgrade with STARTTLS. Write raw bytes with
 * {@link write} (or on `socket` before STARTTLS); read whole replies with {@link reply}.
 */
export class RawClient {
  readonly socket: net.Socket;
  #stream: net.Socket | tls.TLSSocket;
  #buffer = "";
  #lines: string[] = [];
  #waiters: (() => void)[] = [];
  /** True once the server (or {@link close}) closed the connection. */
  closed = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.#stream = socket;
    this.#attach(socket);
    socket.on("close", () => {
      this.closed = true;
      this.#wake();
    });
  }

  #attach(stream: net.Socket | tls.TLSSocket): void {
    stream.on("data", (chunk: Buffer) => {
      this.#buffer += chunk.toString("latin1");
      let i: number;
      while ((i = this.#buffer.indexOf("\r\n")) >= 0) {
        this.#lines.push(this.#buffer.slice(0, i));
        this.#buffer = this.#buffer.slice(i + 2);
      }
      this.#wake();
    });
    stream.on("error", () => {});
  }

  /**
   * Connect to `port` on 127.0.0.1, from `localAddress` when given (e.g. "127.0.0.2").
   * @returns the connected client (the greeting is not read yet)
   * @throws the socket error when the connection fails (e.g. ECONNREFUSED)
   */
  static async open(port: number, localAddress?: string): Promise<RawClient> {
    const socket = net.connect({ port, host: "127.0.0.1", ...(localAddress ? { localAddress } : {}) });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    return new RawClient(socket);
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  /** Resolves on the next data or close event, or after `timeoutMs`, whichever is first. */
  #nextEvent(timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const t = setTimeout(resolve, timeoutMs);
      this.#waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  /**
   * The next complete reply (all lines of a multi-line reply).
   * @throws Error when the connection closes first, or after `timeoutMs`
   */
  async reply(timeoutMs = 5000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const end = this.#lines.findIndex((l) => /^\d{3}(?: |$)/.test(l));
      if (end >= 0) return this.#lines.splice(0, end + 1);
      if (this.closed) throw new Error(`connection closed, pending lines: ${JSON.stringify(this.#lines)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("timeout waiting for reply");
      await this.#nextEvent(left);
    }
  }

  /** Resolves once the server closed the connection. @throws Error after `timeoutMs` */
  async waitClosed(timeoutMs = 7000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("connection not closed");
      await this.#nextEvent(left);
    }
  }

  /** Write raw data (over TLS after {@link startTls}). */
  write(data: string): void {
    this.#stream.write(data);
  }

  /** Send one command line (CRLF added); returns its reply. @throws as {@link reply} */
  async command(line: string): Promise<string[]> {
    this.write(line + "\r\n");
    return this.reply();
  }

  /** Read the greeting and send EHLO; returns the EHLO reply. @throws AssertionError when the greeting is not 220 */
  async hello(): Promise<string[]> {
    const greeting = await this.reply();
    assert.match(greeting[0] ?? "", /^220 /, greeting.join("\n"));
    return this.command("EHLO client.example.org");
  }

  /**
   * STARTTLS, then the TLS handshake (any certificate accepted).
   * @returns the server's certificate
   * @throws AssertionError when STARTTLS is not answered 220; the TLS error when the handshake fails
   */
  async startTls(): Promise<tls.PeerCertificate> {
    assert.deepEqual(await this.command("STARTTLS"), ["220 2.0.0 Ready to start TLS"]);
    this.socket.removeAllListeners("data");
    const secure = tls.connect({ socket: this.socket, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => {
      secure.once("secureConnect", resolve);
      secure.once("error", reject);
    });
    this.#stream = secure;
    this.#attach(secure);
    return secure.getPeerCertificate();
  }

  /** Destroy the connection. */
  close(): void {
    this.socket.destroy();
  }
}

const execFileP = promisify(execFile);

let opensslChecked: Promise<boolean> | undefined;

/** Whether the openssl CLI runs (checked once per process). Throws nothing. */
function haveOpenssl(): Promise<boolean> {
  opensslChecked ??= execFileP("openssl", ["version"]).then(
    () => true,
    () => false,
  );
  return opensslChecked;
}

/**
 * Define a node:test test that needs the openssl CLI (for {@link makeCert}) and a fresh
 * temporary directory: `body` gets the directory, which is removed afterwards, pass or fail.
 * Without openssl the test is skipped, except in CI (CI set), where it fails: the STARTTLS
 * path must be tested there. Await it inside an `async` describe (the openssl check is async).
 * @param name the test's name
 * @param tmpPrefix the temporary directory's name prefix (under the OS temp directory)
 * @param body the test; what it throws fails the test
 * @returns once the test is defined (it runs later, as node:test schedules it)
 */
export async function testWithOpenssl(name: string, tmpPrefix: string, body: (dir: string) => Promise<void>): Promise<void> {
  const available = await haveOpenssl();
  const skip = !available && !process.env.CI ? "openssl CLI not available" : false;
  test(name, { skip }, async () => {
    assert.ok(available, "openssl CLI is required for this test (CI is set)");
    const dir = await mkdtemp(join(tmpdir(), tmpPrefix));
    try {
      await body(dir);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
}

/**
 * A self-signed EC (P-256) certificate for `cn`, valid one day, written to `dir` as
 * `<cn>.cert.pem` and `<cn>.key.pem`.
 * @returns the two file paths
 * @throws the execFile error when openssl fails or is missing
 */
export async function makeCert(dir: string, cn: string): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${cn}.cert.pem`);
  const key = join(dir, `${cn}.key.pem`);
  await execFileP("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", key, "-out", cert, "-days", "1", "-subj", `/CN=${cn}`,
  ]);
  return { cert, key };
}

/**
 * Open a session on `port`, do STARTTLS and EHLO again, and return the CN of the certificate
 * the listener presented.
 * @param checkEhlo asserts on the EHLO reply after STARTTLS (e.g. whether AUTH is offered)
 */
export async function subjectOfNextSession(port: number, checkEhlo: (ehlo: string[]) => void): Promise<string | undefined> {
  const c = await RawClient.open(port);
  try {
    await c.hello();
    const cert = await c.startTls();
    checkEhlo(await c.command("EHLO client.example.org"));
    return cert.subject?.CN as string | undefined;
  } finally {
    c.close();
  }
}

/**
 * Renew a listener's certificate on disk the ways real tools do, checking after each step which
 * certificate the next STARTTLS presents: `a` is in use at first; `b` renamed over it (certbot,
 * acme.sh) is picked up; a half-written renewal (the key of `c` with `b`'s certificate) keeps
 * `b`; `c` completed in place is picked up.
 * @param files the live certificate and key files the listener reads
 * @param subjectOfNextSession opens a session, does STARTTLS, returns the certificate's CN
 * @param onHalfDone called after the half-written step (e.g. to check the log)
 * @throws AssertionError at the first step whose certificate is not the expected one
 */
export async function checkCertificateRenewal(
  dir: string,
  files: { certFile: string; keyFile: string },
  subjectOfNextSession: () => Promise<string | undefined>,
  onHalfDone: () => void = () => {},
): Promise<void> {
  const a = await makeCert(dir, "a.bridge.test");
  const b = await makeCert(dir, "b.bridge.test");
  const c = await makeCert(dir, "c.bridge.test");
  await writeFile(files.certFile, await readFile(a.cert));
  await writeFile(files.keyFile, await readFile(a.key));
  assert.equal(await subjectOfNextSession(), "a.bridge.test");
  // Replaced the way certbot/acme tools do: new files renamed over the old ones.
  await writeFile(files.certFile + ".new", await readFile(b.cert));
  await writeFile(files.keyFile + ".new", await readFile(b.key));
  await rename(files.keyFile + ".new", files.keyFile);
  await rename(files.certFile + ".new", files.certFile);
  assert.equal(await subjectOfNextSession(), "b.bridge.test");
  // A half-done renewal (the key of another certificate): the previous pair stays in use.
  await writeFile(files.keyFile, await readFile(c.key));
  assert.equal(await subjectOfNextSession(), "b.bridge.test");
  onHalfDone();
  // Completed (overwritten in place): picked up.
  await writeFile(files.certFile, await readFile(c.cert));
  assert.equal(await subjectOfNextSession(), "c.bridge.test");
}

/**
 * The listener's skeleton of a message (mail/inbound/limits.ts `MessageInspector`, default
 * limits), written in 1000-byte chunks as SMTP delivers it.
 * @throws AssertionError when the message breaks a limit or no skeleton could be made
 */
export async function skeletonOf(bytes: Buffer): Promise<Buffer> {
  const inspector = new MessageInspector({
    maxHeaderBytes: LIMIT_DEFAULTS.max_header_bytes,
    maxMimeParts: LIMIT_DEFAULTS.max_mime_parts,
    maxMimeDepth: LIMIT_DEFAULTS.max_mime_depth,
    maxReceivedHeaders: LIMIT_DEFAULTS.max_received_headers,
  });
  for (let i = 0; i < bytes.length; i += 1000) inspector.write(bytes.subarray(i, i + 1000));
  assert.equal(await inspector.finish(), null, "the message breaks no limit");
  assert.ok(inspector.skeleton, "a skeleton is made");
  return inspector.skeleton;
}
