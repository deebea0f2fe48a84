/**
 * Request/reply with a worker thread: one shape for every job the bridge moves off its event
 * loop (the SQLite connection, the reply parser).
 *
 * The worker answers each request `{ id, ... }` with exactly one message carrying the same
 * `id`; the caller's `decode` turns that message into a value or an error. Requests are
 * numbered here. While a reply is owed the worker keeps the process alive; an idle worker
 * does not. A worker that fails or exits fails every request in flight and every later one.
 */
import { Worker } from "node:worker_threads";
import { getLogger } from "./logger.ts";

const log = getLogger("util/worker-rpc");

/** What `decode` makes of one reply. */
export type RpcOutcome<T> = { ok: true; value: T } | { ok: false; error: Error };

/** Options of {@link WorkerRpc}. */
export interface WorkerRpcOptions<T> {
  /** Name in log lines and errors, e.g. `sqlite`. */
  name: string;
  /** The worker's module (`.ts` from source, `.js` when built). */
  url: URL;
  /** Turn one reply message (it has the request's `id`) into a value or an error. */
  decode: (reply: { id: number } & Record<string, unknown>) => RpcOutcome<T>;
}

/** A request/reply connection to one worker thread; see the module comment. */
export class WorkerRpc<Req extends object, T> {
  readonly #opts: WorkerRpcOptions<T>;
  readonly #worker: Worker;
  readonly #pending = new Map<number, { resolve: (value: T) => void; reject: (e: Error) => void; timer: NodeJS.Timeout | null }>();
  #nextId = 1;
  #dead: Error | null = null;

  /** Start the worker thread. */
  constructor(opts: WorkerRpcOptions<T>) {
    this.#opts = opts;
    // The worker inherits the process's flags; `--input-type` (only for `node -e`) would make it fail.
    const inputType = process.execArgv.some((a) => a.startsWith("--input-type"));
    this.#worker = new Worker(opts.url, inputType ? { execArgv: process.execArgv.filter((a) => !a.startsWith("--input-type")) } : {});
    this.#worker.unref();
    this.#worker.on("message", (reply: { id: number } & Record<string, unknown>) => {
      const waiter = this.#pending.get(reply.id);
      if (!waiter) return;
      this.#settle(reply.id);
      const outcome = opts.decode(reply);
      if (outcome.ok) waiter.resolve(outcome.value);
      else waiter.reject(outcome.error);
    });
    this.#worker.on("error", (err) => {
      log.error("worker thread failed", { worker: opts.name, error: err.message });
      this.#fail(err);
    });
    this.#worker.on("exit", (code) => this.#fail(new Error(`${opts.name} worker thread exited (code ${code})`)));
  }

  /** Whether the worker can take requests. */
  get alive(): boolean {
    return this.#dead === null;
  }

  /**
   * Send one request and wait for its reply.
   * @param body the request without its `id`
   * @param timeoutMs when given, a reply later than this (ms) stops the worker: this and every
   *   other request in flight fail, and the connection is dead
   * @param transfer buffers moved to the worker instead of copied (their owner must not use
   *   them again: they are detached here)
   * @throws what `decode` made of the reply; Error when the worker is gone or too slow
   */
  request(body: Req, timeoutMs?: number, transfer: ArrayBuffer[] = []): Promise<T> {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer =
        timeoutMs === undefined
          ? null
          : setTimeout(() => {
              this.#fail(new Error(`${this.#opts.name} worker took longer than ${timeoutMs} ms`));
              void this.#worker.terminate();
            }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      // Keep the process alive while a reply is owed (an idle bridge must not hold it open).
      if (this.#pending.size === 1) this.#worker.ref();
      this.#worker.postMessage({ ...body, id }, transfer);
    });
  }

  /** Stop the worker; requests in flight and later ones fail with `reason`. */
  async terminate(reason = `${this.#opts.name} worker stopped`): Promise<void> {
    this.#fail(new Error(reason));
    await this.#worker.terminate();
  }

  #settle(id: number): void {
    const waiter = this.#pending.get(id);
    if (!waiter) return;
    if (waiter.timer) clearTimeout(waiter.timer);
    this.#pending.delete(id);
    if (this.#pending.size === 0) this.#worker.unref();
  }

  #fail(err: Error): void {
    this.#dead ??= err;
    for (const [id, waiter] of [...this.#pending]) {
      this.#settle(id);
      waiter.reject(err);
    }
  }
}
