/**
 * The DATA-time parse of received mail (./parse.ts `parseMail` with attachments only counted,
 * the parse the router makes before its 250). A small message is parsed on the event loop (a
 * fraction of a millisecond; handing it to a thread costs more than that); a large one in a
 * worker thread (./parseWorker.ts, util/workerRpc.ts) with a deadline, because mailparser's work
 * grows with the message (seconds for a few MB of HTML) and would hold up every SMTP session and
 * appservice transaction.
 *
 * The worker gets the listener's skeleton of the message (./limits.ts: every header and text
 * part, the binary parts' contents left out), which parses as the whole message does, so a
 * large attachment is never copied to it; without a skeleton, the whole message. It is started
 * on the first mail, and again after it was stopped at a deadline or died.
 */
import { WorkerRpc } from "../../util/workerRpc.ts";
import { parseMail, type ParsedMailSummary } from "./parse.ts";
import type { ParseReply, ParseRequest } from "./parseWorker.ts";

const WORKER_URL = new URL(import.meta.url.endsWith(".ts") ? "./parseWorker.ts" : "./parseWorker.js", import.meta.url);

/**
 * The message could not be parsed: mailparser refused it, or it took longer than the deadline.
 * Either is about the message (the router answers 554 5.6.0); other errors (the worker could
 * not be started, died of something else) are not.
 */
export class MailParseError extends Error {
  override name = "MailParseError";
  /** Whether the parse was stopped at the deadline (the message is not known to be malformed). */
  readonly timedOut: boolean;
  constructor(message: string, opts: { timedOut?: boolean } = {}) {
    super(message);
    this.timedOut = opts.timedOut ?? false;
  }
}

/** Options of {@link ParseThread}. */
export interface ParseThreadOptions {
  /** Longest parse, in ms (`smtp.parse_timeout_ms`); past it the worker is stopped and the parse fails. */
  timeoutMs: number;
  /**
   * Messages up to this size (bytes of what is parsed: the skeleton) are parsed on the event
   * loop, larger ones in the worker. Default {@link PARSE_ON_LOOP_MAX_BYTES}; 0: all in the worker.
   */
  onLoopMaxBytes?: number;
}

/**
 * Largest message parsed on the event loop, in bytes: about 20 ms of mailparser at worst. Larger
 * ones go to the worker, whose hand-over (a copy in, the parse cloned back) costs more than a
 * small parse itself (the ingest benchmark lost a fifth of its rate with every parse there).
 */
export const PARSE_ON_LOOP_MAX_BYTES = 64 * 1024;

/** Longest start of a new worker, in ms (up to its first, empty parse). */
const WORKER_START_TIMEOUT_MS = 60_000;

/** The parse worker; see the module comment. */
export class ParseThread {
  readonly #timeoutMs: number;
  readonly #onLoopMaxBytes: number;
  #rpc: WorkerRpc<Omit<ParseRequest, "id">, ParsedMailSummary> | null = null;
  #starting: Promise<WorkerRpc<Omit<ParseRequest, "id">, ParsedMailSummary>> | null = null;

  /** @throws RangeError when `timeoutMs` is not a positive number */
  constructor(opts: ParseThreadOptions) {
    if (!(opts.timeoutMs > 0)) throw new RangeError(`ParseThread: timeoutMs must be > 0, got ${opts.timeoutMs}`);
    this.#timeoutMs = opts.timeoutMs;
    this.#onLoopMaxBytes = opts.onLoopMaxBytes ?? PARSE_ON_LOOP_MAX_BYTES;
  }

  /**
   * Parse a message as `parseMail(message, { attachments: "metadata" })` does: on the event loop
   * when it is small, else in the worker (`message` is copied to it; the caller keeps its buffer).
   * @param message the skeleton of the message, else the whole message
   * @returns the parse (attachments with size 0 when `message` is a skeleton)
   * @throws MailParseError when mailparser refuses the message or passes the deadline; Error
   *   when the worker fails otherwise
   */
  async parse(message: Buffer): Promise<ParsedMailSummary> {
    if (message.length <= this.#onLoopMaxBytes) {
      try {
        return await parseMail(message, { attachments: "metadata" });
      } catch (err) {
        throw new MailParseError(err instanceof Error ? err.message : String(err));
      }
    }
    const rpc = await this.#worker();
    // A copy whose memory moves to the worker: one copy rather than a clone's two.
    const copy = new Uint8Array(message);
    const started = performance.now();
    try {
      return await rpc.request({ message: copy }, this.#timeoutMs, [copy.buffer]);
    } catch (err) {
      if (err instanceof MailParseError) throw err;
      // At a deadline WorkerRpc stops the worker and fails every parse in flight: only the one
      // that ran out of time is about its message; the others failed through no fault of theirs
      // (a plain Error: the sender is asked to retry).
      if (!rpc.alive && performance.now() - started >= this.#timeoutMs - 1) {
        throw new MailParseError(`the message took longer than ${this.#timeoutMs} ms to parse`, { timedOut: true });
      }
      throw err;
    }
  }

  /**
   * The running worker, or a new one once it has started: its start (loading mailparser, a
   * second or more on a busy machine) must not count against a message's deadline, so a new
   * worker first parses an empty message, with {@link WORKER_START_TIMEOUT_MS}.
   * @throws Error when the worker cannot be started
   */
  async #worker(): Promise<WorkerRpc<Omit<ParseRequest, "id">, ParsedMailSummary>> {
    if (this.#rpc?.alive) return this.#rpc;
    this.#starting ??= (async () => {
      const rpc = new WorkerRpc<Omit<ParseRequest, "id">, ParsedMailSummary>({
        name: "mail parser",
        url: WORKER_URL,
        decode: (reply) => {
          const r = reply as unknown as ParseReply;
          return "error" in r ? { ok: false, error: new MailParseError(r.error) } : { ok: true, value: r.summary };
        },
      });
      await rpc.request({ message: new Uint8Array(0) }, WORKER_START_TIMEOUT_MS);
      this.#rpc = rpc;
      return rpc;
    })().finally(() => {
      this.#starting = null;
    });
    return this.#starting;
  }

  /** Stop the worker (parses in flight fail). */
  async close(): Promise<void> {
    const starting = this.#starting;
    if (starting) await starting.catch(() => undefined);
    await this.#rpc?.terminate("the mail parser is closing");
    this.#rpc = null;
  }
}
