/**
 * The SMTP load generator of the benchmark: many concurrent SMTP clients (nodemailer's
 * `SMTPConnection`) in a child process (this same file, run with `--client`), so that the
 * server side, in the bench process or in the bridge's own process, does not share an event
 * loop with its clients. The processes still share the machine's cores.
 *
 * Two connection patterns: one connection per client with RSET between messages
 * (`reuse: true`), or a new connection per message (greeting, EHLO, one transaction, QUIT).
 */
import { fork } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { performance } from "node:perf_hooks";
import SMTPConnection from "nodemailer/lib/smtp-connection";
import type { SMTPEnvelope } from "nodemailer/lib/smtp-connection";

/** What the parent asks the client process to do. */
export interface SmtpLoadJob {
  /** SMTP port on 127.0.0.1. */
  port: number;
  /** Messages to send in all. */
  messages: number;
  /** Concurrent clients (connections open at once). */
  concurrency: number;
  /** true: one connection per client, RSET between messages; false: a new connection per message. */
  reuse: boolean;
  /** No new message is started after this many ms. */
  timeCapMs: number;
  /** Approximate size of each message on the wire, bytes (headers included). */
  messageBytes: number;
  /** Envelope and To: recipient. */
  recipient: string;
  /** More recipients: message `i` goes to `[recipient, ...moreRecipients][i % n]` (one each). */
  moreRecipients?: string[];
  /** Senders are `<senderPrefix><i % senders>@<senderDomain>`. */
  senderPrefix: string;
  senderDomain: string;
  senders: number;
  /** Unique per run: in every Message-ID and Subject (`bench <tag> <i>`). */
  tag: string;
}

/** What the client process reports back. */
export interface SmtpLoadResult {
  /** Messages answered 250. */
  accepted: number;
  /** Messages that got an error (reply or connection). */
  failed: number;
  /** First few error texts. */
  errors: string[];
  /** Bytes of message data of the accepted messages. */
  bytes: number;
  /** When the first connection was started, epoch ms (`Date.now()` in the client process). */
  startedAt: number;
  /** When the last reply came, epoch ms. */
  endedAt: number;
  /** From the first connect to the last reply, ms. */
  wallMs: number;
  /** Per accepted message, ms: MAIL FROM → 250 after DATA (reused), connect → 250 (new connection). */
  latencies: number[];
  /** Connections opened. */
  connections: number;
  /** The time cap stopped the run before all messages were sent. */
  capped: boolean;
  /** CPU time of the client process during the run, ms. */
  cpuMs: number;
}

type ParentToChild = { type: "job"; job: SmtpLoadJob };
type ChildToParent = { type: "result"; result: SmtpLoadResult } | { type: "fatal"; error: string };

// ---------------------------------------------------------------------------------------
// Child: SMTP clients
// ---------------------------------------------------------------------------------------

/** Plain text of about `bytes` bytes in lines of at most 72 characters, CRLF line ends. */
function textOfSize(bytes: number): string {
  const words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua".split(" ");
  const lines: string[] = [];
  let line = "";
  let size = 0;
  for (let i = 0; size < bytes; i++) {
    const w = words[i % words.length]!;
    if (line.length + w.length + 1 > 72) {
      lines.push(line);
      size += line.length + 2;
      line = "";
    }
    line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(line);
  return lines.join("\r\n") + "\r\n";
}

function recipientOf(job: SmtpLoadJob, i: number): string {
  const all = [job.recipient, ...(job.moreRecipients ?? [])];
  return all[i % all.length]!;
}

function senderOf(job: SmtpLoadJob, i: number): string {
  return `${job.senderPrefix}${i % job.senders}@${job.senderDomain}`;
}

/** Header block of message `i` (per-message: sender, subject, date, Message-ID). */
function headOf(job: SmtpLoadJob, i: number): string {
  return (
    `From: "Bench Sender ${i % job.senders}" <${senderOf(job, i)}>\r\n` +
    `To: <${recipientOf(job, i)}>\r\n` +
    `Subject: bench ${job.tag} ${i}\r\n` +
    `Date: ${new Date().toUTCString().replace("GMT", "+0000")}\r\n` +
    `Message-ID: <bench.${job.tag}.${i}@${job.senderDomain}>\r\n` +
    "MIME-Version: 1.0\r\n" +
    "Content-Type: text/plain; charset=utf-8\r\n" +
    "Content-Transfer-Encoding: 7bit\r\n" +
    "\r\n"
  );
}

type SmtpError = Error & { responseCode?: number; response?: string; code?: string };

function errorText(err: unknown): string {
  const e = err as SmtpError;
  return e.response ?? `${e.code ?? "ERROR"}: ${e.message ?? String(err)}`;
}

/** An SMTP client connection; `closed` turns true when the server or the network ends it. */
interface Client {
  conn: SMTPConnection;
  closed: boolean;
}

function openClient(port: number): Promise<Client> {
  const conn = new SMTPConnection({
    host: "127.0.0.1",
    port,
    secure: false,
    ignoreTLS: true,
    name: "client.example.org",
    connectionTimeout: 30_000,
    greetingTimeout: 30_000,
    socketTimeout: 120_000,
  });
  const client: Client = { conn, closed: false };
  conn.on("error", () => {
    client.closed = true;
  });
  conn.on("end", () => {
    client.closed = true;
  });
  return new Promise((resolve, reject) =>
    conn.connect((err) => {
      if (err) {
        conn.close();
        reject(err);
      } else resolve(client);
    }),
  );
}

function sendOn(client: Client, envelope: SMTPEnvelope, message: Buffer): Promise<void> {
  return new Promise((resolve, reject) => client.conn.send(envelope, message, (err) => (err ? reject(err) : resolve())));
}

function resetOn(client: Client): Promise<void> {
  return new Promise((resolve, reject) => client.conn.reset((err) => (err ? reject(err) : resolve())));
}

async function runClients(job: SmtpLoadJob): Promise<SmtpLoadResult> {
  const body = Buffer.from(textOfSize(Math.max(100, job.messageBytes - headOf(job, 0).length)));
  const result: SmtpLoadResult = {
    accepted: 0,
    failed: 0,
    errors: [],
    bytes: 0,
    startedAt: Date.now(),
    endedAt: 0,
    wallMs: 0,
    latencies: [],
    connections: 0,
    capped: false,
    cpuMs: 0,
  };
  const fail = (err: unknown): void => {
    result.failed++;
    if (result.errors.length < 5) result.errors.push(errorText(err));
  };
  let next = 0;
  const started = performance.now();
  const deadline = started + job.timeCapMs;
  const take = (): number | null => {
    if (next >= job.messages) return null;
    if (performance.now() >= deadline) {
      result.capped = true;
      return null;
    }
    return next++;
  };
  const messageOf = (i: number): Buffer => Buffer.concat([Buffer.from(headOf(job, i)), body]);
  const envelopeOf = (i: number): SMTPEnvelope => ({ from: senderOf(job, i), to: [recipientOf(job, i)] });

  /** One connection per client, its messages sent one after the other (RSET between). */
  const reusedWorker = async (): Promise<void> => {
    let client: Client | null = null;
    let sent = 0;
    try {
      for (let i = take(); i !== null; i = take()) {
        const message = messageOf(i);
        try {
          if (!client || client.closed) {
            client = await openClient(job.port);
            result.connections++;
            sent = 0;
          } else if (sent > 0) {
            await resetOn(client);
          }
          const t0 = performance.now();
          await sendOn(client, envelopeOf(i), message);
          result.latencies.push(performance.now() - t0);
          result.accepted++;
          result.bytes += message.length;
          sent++;
        } catch (err) {
          fail(err);
        }
      }
    } finally {
      if (client && !client.closed) client.conn.quit();
    }
  };

  /** A new connection (greeting, EHLO, one transaction, QUIT) for every message. */
  const perMessageWorker = async (): Promise<void> => {
    for (let i = take(); i !== null; i = take()) {
      const message = messageOf(i);
      const t0 = performance.now();
      let client: Client | null = null;
      try {
        client = await openClient(job.port);
        result.connections++;
        await sendOn(client, envelopeOf(i), message);
        result.latencies.push(performance.now() - t0);
        result.accepted++;
        result.bytes += message.length;
      } catch (err) {
        fail(err);
      } finally {
        if (client && !client.closed) client.conn.quit();
      }
    }
  };

  const cpu0 = process.cpuUsage();
  const worker = job.reuse ? reusedWorker : perMessageWorker;
  await Promise.all(Array.from({ length: job.concurrency }, () => worker()));
  result.wallMs = performance.now() - started;
  result.endedAt = Date.now();
  const cpu = process.cpuUsage(cpu0);
  result.cpuMs = (cpu.user + cpu.system) / 1000;
  return result;
}

function clientMain(): void {
  const reply = (msg: ChildToParent): void => {
    process.send?.(msg);
  };
  process.once("message", (msg: ParentToChild) => {
    runClients(msg.job).then(
      (result) => {
        reply({ type: "result", result });
        process.disconnect?.();
      },
      (err: unknown) => {
        reply({ type: "fatal", error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
        process.disconnect?.();
      },
    );
  });
}

// ---------------------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------------------

/** A client process that has started (node and this module loaded) and waits for its job. */
export interface SmtpLoadProcess {
  /**
   * Send the job and wait for the result.
   * @throws Error when the process fails, exits early, or does not finish within `hardMs`
   *   (it is then killed)
   */
  run(job: SmtpLoadJob, hardMs: number): Promise<SmtpLoadResult>;
}

/**
 * Fork the client process. Node's start-up is never part of the figures: the result's
 * `startedAt` and `wallMs` are taken in the child when the job begins.
 */
export function forkSmtpLoad(): SmtpLoadProcess {
  const child: ChildProcess = fork(import.meta.filename, ["--client"], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  let exitedEarly: Error | null = null;
  child.on("exit", (code, signal) => {
    exitedEarly ??= new Error(`client process exited (code ${code}, signal ${signal})`);
  });
  return {
    run(job, hardMs) {
      return new Promise((resolve, reject) => {
        if (exitedEarly) return reject(exitedEarly);
        let done = false;
        const finish = (fn: () => void): void => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          fn();
        };
        const timer = setTimeout(() => {
          finish(() => reject(new Error(`client process did not finish within ${Math.round(hardMs / 1000)} s; killed`)));
          child.kill("SIGKILL");
        }, hardMs);
        child.on("message", (msg: ChildToParent) => {
          if (msg.type === "result") finish(() => resolve(msg.result));
          else finish(() => reject(new Error(`client process failed: ${msg.error}`)));
        });
        child.on("error", (err) => finish(() => reject(err)));
        child.on("exit", (code, signal) => finish(() => reject(new Error(`client process exited early (code ${code}, signal ${signal})`))));
        child.send({ type: "job", job } satisfies ParentToChild);
      });
    },
  };
}

/**
 * Run one job in a fresh client process.
 * @param job what to send
 * @param hardMs kill the process after this long
 * @returns the client's figures
 * @throws Error when the client process fails or times out
 */
export function runSmtpLoad(job: SmtpLoadJob, hardMs: number): Promise<SmtpLoadResult> {
  return forkSmtpLoad().run(job, hardMs);
}

if (process.argv[1] === import.meta.filename && process.argv.includes("--client")) clientMain();
