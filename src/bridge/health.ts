/**
 * The bridge's health check (`GET /health` on the metrics listener) and the wiring of the
 * metrics listener (util/metrics.ts) to the bridge's parts.
 *
 * Healthy means: the store answers (the queue-size query, within `timeoutMs`), the SMTP
 * listener is bound (and the submission listener, when `submission.enabled`), and the
 * appservice listener accepts TCP connections. The homeserver is
 * not checked: when it is down mail waits in the store and is retried, which the queue
 * gauges show (`meb_queue_depth`, `meb_queue_oldest_age_seconds`), and a restart would not
 * help.
 */
import { connect } from "node:net";
import type { BridgeStore, QueueCountsSnapshot } from "../store/Store.ts";
import type { MetricsConfig } from "../config/schema.ts";
import { startMetricsListener, type BridgeMetrics, type HealthReport, type MetricsListener } from "../util/metrics.ts";
import { getLogger } from "../util/logger.ts";

const log = getLogger("bridge/health");

/** What the health check looks at. */
export interface HealthParts {
  /** The store: asked for its queue sizes. */
  store: Pick<BridgeStore, "queueCounts">;
  /** The SMTP listener (its `listening` flag). */
  smtp: { readonly listening: boolean };
  /** The submission listener (its `listening` flag); absent when `submission.enabled` is off. */
  submission?: { readonly listening: boolean } | null;
  /** Where the appservice listener listens (config `appservice.bind_address` / `port`); probed with a TCP connect. */
  appservice: { bindAddress: string; port: number };
  /** Longest wait for the store and for the TCP probe, in ms (default 5000). */
  timeoutMs?: number;
  /** Current time in epoch ms, for the queue ages (default `Date.now`). */
  clock?: () => number;
}

/**
 * The health check of the bridge. A change between healthy and unhealthy is logged once.
 * @returns a function that runs the checks (never rejects): healthy when all are "ok";
 *   `details.checks` names each part with "ok" or what is wrong, and `details.queues` has the
 *   queue sizes when the store answered
 */
export function makeHealthCheck(parts: HealthParts): () => Promise<HealthReport> {
  const timeoutMs = parts.timeoutMs ?? 5000;
  const clock = parts.clock ?? Date.now;
  let wasHealthy = true;
  return async () => {
    const [store, appservice] = await Promise.all([
      withTimeout(parts.store.queueCounts(), timeoutMs, "the store did not answer").then(
        (counts) => ({ ok: true as const, counts }),
        (err: unknown) => ({ ok: false as const, error: err instanceof Error ? err.message : String(err) }),
      ),
      probeTcp(probeHost(parts.appservice.bindAddress), parts.appservice.port, timeoutMs),
    ]);
    const checks = {
      store: store.ok ? "ok" : `error: ${store.error}`,
      smtp: parts.smtp.listening ? "ok" : "not listening",
      ...(parts.submission ? { submission: parts.submission.listening ? "ok" : "not listening" } : {}),
      appservice: appservice === null ? "ok" : `not listening: ${appservice}`,
    };
    const healthy = Object.values(checks).every((c) => c === "ok");
    if (healthy !== wasHealthy) {
      if (healthy) log.info("health check passes again", checks);
      else log.warn("health check fails", checks);
      wasHealthy = healthy;
    }
    return { healthy, details: { checks, ...(store.ok ? { queues: queuesOf(store.counts, clock()) } : {}) } };
  };
}

/** Options of {@link startOperationsListener}. */
export interface OperationsListenerOptions extends HealthParts {
  /** The `metrics` config section (its `enabled` is the caller's business). */
  config: Pick<MetricsConfig, "bind_address" | "port">;
  metrics: BridgeMetrics;
}

/**
 * Start the metrics listener: `/metrics` from `metrics`, `/health` from {@link makeHealthCheck}.
 * @throws Error naming `metrics.bind_address`/`metrics.port` when the socket cannot be bound
 *   (its `cause` is the socket's error)
 */
export async function startOperationsListener(opts: OperationsListenerOptions): Promise<MetricsListener> {
  const { bind_address: bindAddress, port } = opts.config;
  try {
    return await startMetricsListener({ bindAddress, port, metrics: opts.metrics, health: makeHealthCheck(opts) });
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new Error(`the metrics listener cannot listen on ${bindAddress}:${port} (metrics.bind_address, metrics.port): ${why}`, { cause: err });
  }
}

/** The queue sizes as `/health` shows them (snake_case, ages in seconds). */
function queuesOf(counts: QueueCountsSnapshot, now: number): Record<string, unknown> {
  const one = (q: QueueCountsSnapshot["inbound"]) => ({
    waiting: q.waiting,
    oldest_age_seconds: q.oldestWaitingAt === null ? 0 : Math.max(0, Math.round((now - q.oldestWaitingAt) / 1000)),
    failed: q.failed,
  });
  return { inbound: one(counts.inbound), outbound: one(counts.outbound) };
}

/** Where to reach a listener bound to `address`: the loopback for a wildcard address. */
function probeHost(address: string): string {
  if (address === "0.0.0.0" || address === "") return "127.0.0.1";
  if (address === "::" || address === "[::]") return "::1";
  return address.replace(/^\[(.*)\]$/, "$1");
}

/** Connect to host:port and close at once. Resolves null when it connected, else why not (never rejects). */
function probeTcp(host: string, port: number, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (result: string | null): void => {
      socket.destroy();
      resolve(result);
    };
    socket.setTimeout(timeoutMs, () => done(`no answer from ${host}:${port} within ${timeoutMs} ms`));
    socket.once("connect", () => done(null));
    socket.once("error", (err: NodeJS.ErrnoException) => done(`${host}:${port} ${err.code ?? err.message}`));
  });
}

/** `promise`, or a rejection with `message` after `ms`. */
async function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${message} within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
