/**
 * Small helpers shared by the benchmark parts: knobs from the environment, percentiles,
 * number formatting, progress lines (stderr) and the RSS of a process from /proc.
 */
import { readFileSync } from "node:fs";

/**
 * A positive integer knob from the environment.
 * @param name variable name, e.g. `BENCH_INGEST_MESSAGES`
 * @param fallback value when unset or empty
 * @returns the value
 * @throws Error when the variable is set to something that is not a positive integer
 */
export function intEnv(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === "") return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, got ${JSON.stringify(v)}`);
  return n;
}

/**
 * A comma-separated list knob, lower-cased and trimmed.
 * @param name variable name
 * @param fallback list when unset or empty
 */
export function listEnv(name: string, fallback: string[]): string[] {
  const v = process.env[name];
  if (v === undefined || v.trim() === "") return fallback;
  return v
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s !== "");
}

/**
 * Nearest-rank percentile.
 * @param values any order (not modified)
 * @param p percentile, 0-100
 * @returns the value, or NaN for an empty list
 */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/**
 * Median (the mean of the two middle values for an even count).
 * @returns NaN for an empty list
 */
export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** A number with about three significant digits ("-" for NaN). */
export function num(v: number): string {
  if (!Number.isFinite(v)) return "-";
  const a = Math.abs(v);
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

/** Bytes as MiB with one decimal. */
export function mib(bytes: number): string {
  return Number.isFinite(bytes) ? (bytes / 1024 / 1024).toFixed(1) : "-";
}

/** One progress line on stderr (stdout is for the final table). */
export function progress(line: string): void {
  process.stderr.write(line + "\n");
}

/** The message of an unknown thrown value, first line only. */
export function reason(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split("\n")[0]!;
}

/** Memory of a process as /proc/<pid>/status reports it, in bytes. */
export interface ProcMemory {
  /** Resident set size now. */
  rss: number;
  /** Peak resident set size of the process's life so far. */
  hwm: number;
}

/**
 * VmRSS and VmHWM of a process from /proc/<pid>/status (Linux).
 * @returns null when the process is gone or the fields are missing
 */
export function procMemory(pid: number): ProcMemory | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, "utf8");
  } catch {
    return null;
  }
  const field = (name: string): number | null => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(text);
    return m ? Number(m[1]) * 1024 : null;
  };
  const rss = field("VmRSS");
  const hwm = field("VmHWM");
  return rss === null ? null : { rss, hwm: hwm ?? rss };
}

/** A running sampler of a process's RSS; see {@link sampleRss}. */
export interface RssSampler {
  /** Highest VmRSS seen since start (or the last {@link RssSampler.reset}). */
  readonly peak: number;
  /** Number of samples taken since start (or reset). */
  readonly samples: number;
  /** Forget the peak; the next sample starts it again. */
  reset(): void;
  /** Stop sampling. */
  stop(): void;
}

/**
 * Sample VmRSS of `pid` every `intervalMs` and keep the highest value.
 * @param pid the process
 * @param intervalMs sampling period (the timer is unreferenced)
 */
export function sampleRss(pid: number, intervalMs = 50): RssSampler {
  let peak = 0;
  let samples = 0;
  const take = (): void => {
    const m = procMemory(pid);
    if (!m) return;
    samples++;
    peak = Math.max(peak, m.rss);
  };
  take();
  const timer = setInterval(take, intervalMs);
  timer.unref();
  return {
    get peak() {
      return peak;
    },
    get samples() {
      return samples;
    },
    reset() {
      peak = 0;
      samples = 0;
      take();
    },
    stop() {
      clearInterval(timer);
      take();
    },
  };
}

/** Resolve after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
