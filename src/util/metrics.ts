/**
 * The bridge's Prometheus metrics ({@link BridgeMetrics}) and the small HTTP listener that
 * serves them with the health check ({@link startMetricsListener}).
 *
 * The metrics live in a prom-client registry of their own (never prom-client's global one),
 * so two bridges in one process (tests) do not mix. The parts that produce events do not
 * import this module: they take a callback (`SmtpListener`'s `onReply`, `InboundPoster`'s
 * `onResult`, `OutboundQueue`'s `onRecipientResult`) and the composition root
 * (bridge/Bridge.ts) points it here. The queue gauges are read from a {@link QueueSizeSource}
 * (the store) when Prometheus scrapes, so they are never stale and cost nothing between scrapes.
 *
 * Every metric, with its meaning, is listed in docs/operations.md.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { errorFields, getLogger } from "./logger.ts";

const log = getLogger("util/metrics");

/** The two queues of the bridge, as the `queue` label. */
export type QueueName = "inbound" | "outbound";

/** The size of one queue at one moment (the store's `QueueCounts` fits). */
export interface QueueSizes {
  /** Items waiting (inbound `pending`; outbound `queued`/`deferred`). */
  waiting: number;
  /** Arrival of the oldest waiting item, epoch ms; null when none waits. */
  oldestWaitingAt: number | null;
  /** Items given up and kept (inbound `failed`; outbound `bounced`). */
  failed: number;
}

/**
 * Reads both queues' sizes (the store's `queueCounts`), called once per scrape.
 * @throws whatever the store throws; the scrape then reports `meb_store_up 0` and no queue samples
 */
export type QueueSizeSource = () => Promise<Record<QueueName, QueueSizes>>;

/** One attempt to post an inbound mail into Matrix, as `InboundPoster` reports it. */
export interface InboundPostObservation {
  /** `posted`; `retry`: a temporary failure, tried again later; `failed`: given up. */
  result: "posted" | "retry" | "failed";
  /** Which attempt of the row this was, 1 for the first. */
  attempt: number;
  /** Time from the SMTP 250 (the row's `receivedAt`) to the end of this attempt, in ms. */
  ageMs: number;
}

/** The outcome of one recipient in one delivery attempt, as `OutboundQueue` reports it. */
export interface OutboundDeliveryObservation {
  /** `sent`: the remote server said 250; `deferred`: temporary failure, retried; `failed`: for good. */
  result: "sent" | "deferred" | "failed";
  /** Which attempt of the mail this was, 1 for the first. */
  attempt: number;
  /** Time from the Matrix event (the outbound row's `createdAt`) to the end of this attempt, in ms. */
  ageMs: number;
}

/** Options of {@link BridgeMetrics}. */
export interface BridgeMetricsOptions {
  /** Where the queue gauges come from; without it they have no samples and `meb_store_up` is absent. */
  queueSizes?: QueueSizeSource;
  /** Also export prom-client's process and Node.js metrics (`process_*`, `nodejs_*`) into this registry. Default true. */
  processMetrics?: boolean;
  /** Current time in epoch ms, for the oldest item's age (default `Date.now`). */
  clock?: () => number;
}

/** Latency buckets in seconds: sub-second posting up to the retry windows (days). */
const INBOUND_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 48 * 3600];
const OUTBOUND_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 96 * 3600];

const QUEUES: readonly QueueName[] = ["inbound", "outbound"];

/**
 * The bridge's metrics, in a registry of their own. Observing never throws for valid input
 * and never does I/O; only {@link render} reads the store (through the queue source).
 */
export class BridgeMetrics {
  /** The registry every metric of this instance is in. */
  readonly registry: Registry;
  readonly #smtpReplies: Counter<"code">;
  readonly #inboundPosts: Counter<"result">;
  readonly #outboundDeliveries: Counter<"result">;
  readonly #retries: Counter<"queue">;
  readonly #inboundLatency: Histogram;
  readonly #outboundLatency: Histogram;
  readonly #depth: Gauge<"queue">;
  readonly #oldestAge: Gauge<"queue">;
  readonly #failedItems: Gauge<"queue">;
  readonly #storeUp: Gauge | null;
  readonly #source: QueueSizeSource | null;
  readonly #clock: () => number;
  /** The queue read of the scrape in progress, shared by the gauges' collect functions. */
  #reading: Promise<void> | null = null;
  /** Whether the last queue read failed (a failure is logged when it starts, not at every scrape). */
  #readFailing = false;

  /** @param opts see {@link BridgeMetricsOptions} */
  constructor(opts: BridgeMetricsOptions = {}) {
    const registry = new Registry();
    this.registry = registry;
    this.#source = opts.queueSizes ?? null;
    this.#clock = opts.clock ?? Date.now;
    const registers = [registry];
    this.#smtpReplies = new Counter({
      name: "meb_smtp_replies_total",
      help: "SMTP replies the inbound listener wrote, by reply code (greeting, EHLO, 250 to DATA, every rejection, smtp-server's own included).",
      labelNames: ["code"],
      registers,
    });
    this.#inboundPosts = new Counter({
      name: "meb_inbound_posts_total",
      help: "Attempts to post an accepted mail into Matrix, by result: posted, retry (temporary failure, tried again later), failed (given up, sender told).",
      labelNames: ["result"],
      registers,
    });
    this.#outboundDeliveries = new Counter({
      name: "meb_outbound_deliveries_total",
      help: "Delivery attempts per recipient of outbound mail, by result: sent (remote 250), deferred (temporary failure, retried), failed (for good).",
      labelNames: ["result"],
      registers,
    });
    this.#retries = new Counter({
      name: "meb_retries_total",
      help: "Attempts that were retries (the item had been tried before), by queue: inbound posts, outbound deliveries per recipient.",
      labelNames: ["queue"],
      registers,
    });
    this.#inboundLatency = new Histogram({
      name: "meb_inbound_post_latency_seconds",
      help: "Time from the SMTP 250 to the event posted in Matrix, in seconds (retries included).",
      buckets: INBOUND_BUCKETS,
      registers,
    });
    this.#outboundLatency = new Histogram({
      name: "meb_outbound_delivery_latency_seconds",
      help: "Time from the Matrix event (mail queued) to the remote server's 250, per recipient, in seconds (retries included).",
      buckets: OUTBOUND_BUCKETS,
      registers,
    });
    const collect = (): Promise<void> => this.#readQueues();
    this.#depth = new Gauge({
      name: "meb_queue_depth",
      help: "Items waiting in a queue: inbound mails not posted yet (pending), outbound mails not delivered yet (queued or deferred).",
      labelNames: ["queue"],
      registers,
      collect,
    });
    this.#oldestAge = new Gauge({
      name: "meb_queue_oldest_age_seconds",
      help: "Age of the oldest waiting item of a queue, in seconds (0 when none waits).",
      labelNames: ["queue"],
      registers,
      collect,
    });
    this.#failedItems = new Gauge({
      name: "meb_queue_failed_items",
      help: "Items given up and kept in the store: inbound mails that could not be posted (failed), outbound mails with a failed recipient (bounced).",
      labelNames: ["queue"],
      registers,
      collect,
    });
    this.#storeUp =
      this.#source === null
        ? null
        : new Gauge({ name: "meb_store_up", help: "1 when the store answered the queue-size query of this scrape, else 0.", registers, collect });
    // Series that exist from the start, so rates work from the first increment.
    for (const result of ["posted", "retry", "failed"]) this.#inboundPosts.inc({ result }, 0);
    for (const result of ["sent", "deferred", "failed"]) this.#outboundDeliveries.inc({ result }, 0);
    for (const queue of QUEUES) this.#retries.inc({ queue }, 0);
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: registry });
  }

  /**
   * Count one SMTP reply written to a client.
   * @param code the reply code, 200..599; anything else is ignored (it cannot come from a reply line)
   */
  smtpReply(code: number): void {
    if (!Number.isInteger(code) || code < 200 || code > 599) return;
    this.#smtpReplies.inc({ code: String(code) });
  }

  /** Count one inbound post attempt; a `posted` one also records its latency. */
  inboundPost(o: InboundPostObservation): void {
    this.#inboundPosts.inc({ result: o.result });
    if (o.attempt > 1) this.#retries.inc({ queue: "inbound" });
    if (o.result === "posted") this.#inboundLatency.observe(Math.max(0, o.ageMs) / 1000);
  }

  /** Count one recipient's delivery outcome; a `sent` one also records its latency. */
  outboundDelivery(o: OutboundDeliveryObservation): void {
    this.#outboundDeliveries.inc({ result: o.result });
    if (o.attempt > 1) this.#retries.inc({ queue: "outbound" });
    if (o.result === "sent") this.#outboundLatency.observe(Math.max(0, o.ageMs) / 1000);
  }

  /** The Content-Type of {@link render}'s output (Prometheus text format 0.0.4). */
  get contentType(): string {
    return this.registry.contentType;
  }

  /**
   * Every metric in the Prometheus text format, reading the queue gauges from the store.
   * A failing store read does not fail the scrape: `meb_store_up` is 0 and the queue gauges
   * have no samples (rather than stale or made-up values); the first failure in a row is logged.
   * @throws only what prom-client throws while rendering (not expected)
   */
  async render(): Promise<string> {
    return this.registry.metrics();
  }

  /** Set the queue gauges from one read of the source; concurrent callers share the read. */
  #readQueues(): Promise<void> {
    if (this.#reading) return this.#reading;
    const reading = this.#readQueuesOnce().finally(() => {
      this.#reading = null;
    });
    this.#reading = reading;
    return reading;
  }

  async #readQueuesOnce(): Promise<void> {
    const source = this.#source;
    if (!source) return;
    let sizes: Record<QueueName, QueueSizes>;
    try {
      sizes = await source();
    } catch (err) {
      if (!this.#readFailing) log.warn("queue sizes cannot be read for the metrics; meb_store_up is 0 until they can", errorFields(err));
      this.#readFailing = true;
      this.#depth.reset();
      this.#oldestAge.reset();
      this.#failedItems.reset();
      this.#storeUp?.set(0);
      return;
    }
    if (this.#readFailing) log.info("queue sizes can be read for the metrics again", {});
    this.#readFailing = false;
    const now = this.#clock();
    for (const queue of QUEUES) {
      const q = sizes[queue];
      this.#depth.set({ queue }, q.waiting);
      this.#oldestAge.set({ queue }, q.oldestWaitingAt === null ? 0 : Math.max(0, now - q.oldestWaitingAt) / 1000);
      this.#failedItems.set({ queue }, q.failed);
    }
    this.#storeUp?.set(1);
  }
}

/** What a health check found. */
export interface HealthReport {
  /** Whether everything checked is fine: 200 when true, 503 when false. */
  healthy: boolean;
  /** What was checked and what is wrong, rendered into the JSON body after `status`. */
  details: Record<string, unknown>;
}

/** Options of {@link startMetricsListener}. */
export interface MetricsListenerOptions {
  /** Address to bind (config `metrics.bind_address`). */
  bindAddress: string;
  /** Port to bind (config `metrics.port`); 0 picks a free one. */
  port: number;
  metrics: BridgeMetrics;
  /** Runs the health checks for `GET /health`; a throw answers 503 with its message. */
  health: () => Promise<HealthReport>;
}

/** A running metrics listener. */
export interface MetricsListener {
  /** The bound port (the real one when 0 was asked for). */
  readonly port: number;
  /** Stop listening and close the connections (Prometheus keeps them alive); resolves when closed. */
  close(): Promise<void>;
}

/**
 * Serve `GET /metrics` (Prometheus text format) and `GET /health` (JSON: 200
 * `{"status":"ok", ...}` or 503 `{"status":"unhealthy", ...}`). HEAD works too; other paths
 * answer 404, other methods 405. No authentication: bind it to loopback or a private network.
 * @returns the listener, once bound
 * @throws the socket's error when it cannot bind (EADDRINUSE, EACCES)
 */
export async function startMetricsListener(opts: MetricsListenerOptions): Promise<MetricsListener> {
  const server = createServer((req, res) => {
    handle(opts, req, res).catch((err: unknown) => {
      log.error("metrics request failed", { path: req.url, ...errorFields(err) });
      if (!res.headersSent) reply(res, req, 500, "text/plain; charset=utf-8", "internal error\n");
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.bindAddress, () => {
      server.off("error", reject);
      resolve();
    });
  });
  server.on("error", (err: Error) => log.error("metrics listener error", errorFields(err)));
  const port = (server.address() as AddressInfo).port;
  log.info("metrics listener started", { address: opts.bindAddress, port });
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

async function handle(opts: MetricsListenerOptions, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = new URL(req.url ?? "/", "http://localhost").pathname;
  if (path !== "/metrics" && path !== "/health") return reply(res, req, 404, "text/plain; charset=utf-8", "not found: try /metrics or /health\n");
  if (req.method !== "GET" && req.method !== "HEAD") {
    res.setHeader("Allow", "GET, HEAD");
    return reply(res, req, 405, "text/plain; charset=utf-8", "method not allowed\n");
  }
  if (path === "/metrics") return reply(res, req, 200, opts.metrics.contentType, await opts.metrics.render());
  let report: HealthReport;
  try {
    report = await opts.health();
  } catch (err) {
    log.warn("health check failed", errorFields(err));
    report = { healthy: false, details: { error: errorFields(err).error } };
  }
  const body = JSON.stringify({ status: report.healthy ? "ok" : "unhealthy", ...report.details }) + "\n";
  reply(res, req, report.healthy ? 200 : 503, "application/json", body);
}

function reply(res: ServerResponse, req: IncomingMessage, status: number, contentType: string, body: string): void {
  res.writeHead(status, { "Content-Type": contentType, "Content-Length": Buffer.byteLength(body), "Cache-Control": "no-store" });
  res.end(req.method === "HEAD" ? undefined : body);
}
