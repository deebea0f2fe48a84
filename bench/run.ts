/**
 * `npm run bench`: the benchmark entry. Runs the selected parts in one process and prints one
 * table: each figure, the reference measured in the same run, the ratio, and the target.
 *
 * Parts (`BENCH_ONLY=ingest,inbound,outbound,memory`, default all):
 * - ingest   (bench/ingest.ts): SMTP ingest with durable commit vs a bare smtp-server;
 * - memory   (bench/memory.ts): the bridge process's idle RSS, and its peak growth for one
 *            mail with a large attachment posted into Synapse;
 * - inbound  (bench/matrixInbound.ts): mail → Matrix events/s vs a direct appservice sender;
 * - outbound (bench/outbound.ts): Matrix → mail throughput and latency into a loopback MTA.
 * inbound, outbound and memory share one Synapse and one bridge process (bench/matrixEnv.ts);
 * memory goes first so that the idle figure is that of a fresh bridge.
 *
 * Figures only: nothing is asserted; the exit code is non-zero only when the bench crashes.
 * Progress goes to stderr, the table to stdout. See bench/README.md for the knobs.
 */
import { availableParallelism, totalmem } from "node:os";
import { runIngest, type EngineName } from "./ingest.ts";
import { startMatrixBench, type MatrixBench } from "./matrixEnv.ts";
import { runMatrixInbound } from "./matrixInbound.ts";
import { measureAttachment, measureIdle } from "./memory.ts";
import { runOutbound } from "./outbound.ts";
import { formatTable, type TableRow } from "./table.ts";
import { intEnv, listEnv, progress, reason } from "./util.ts";

const PARTS = ["ingest", "inbound", "outbound", "memory"] as const;
type Part = (typeof PARTS)[number];

/** Parse BENCH_ONLY. */
function selectedParts(): Set<Part> {
  const wanted = listEnv("BENCH_ONLY", [...PARTS]);
  const unknown = wanted.filter((p) => !(PARTS as readonly string[]).includes(p));
  if (unknown.length) throw new Error(`BENCH_ONLY: unknown part(s) ${unknown.join(", ")}; known: ${PARTS.join(", ")}`);
  return new Set(wanted as Part[]);
}

async function main(): Promise<void> {
  const parts = selectedParts();
  const started = Date.now();
  progress(
    `matrix-email-bridge bench: parts ${[...parts].join(", ")}; node ${process.version}, ${availableParallelism()} cores, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM`,
  );
  const rows: TableRow[] = [];

  if (parts.has("ingest")) {
    const engines = listEnv("BENCH_ENGINES", ["sqlite", "postgres"]).filter((e): e is EngineName => e === "sqlite" || e === "postgres");
    rows.push(
      ...(await runIngest({
        messages: intEnv("BENCH_INGEST_MESSAGES", 1000),
        concurrency: intEnv("BENCH_INGEST_CONCURRENCY", 50),
        rounds: intEnv("BENCH_INGEST_ROUNDS", 3),
        timeCapMs: intEnv("BENCH_TIME_CAP_S", 60) * 1000,
        messageBytes: intEnv("BENCH_MESSAGE_BYTES", 2048),
        engines,
      })),
    );
  }

  if (parts.has("inbound") || parts.has("outbound") || parts.has("memory")) {
    let mb: MatrixBench | null = null;
    try {
      mb = await startMatrixBench();
    } catch (err) {
      progress(`[matrix] could not start Synapse + bridge: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      for (const part of ["memory", "inbound", "outbound"] as const) {
        if (parts.has(part)) rows.push({ part, figure: "(all figures of this part)", value: "not run", reference: "-", ratio: "-", target: "-", note: `${part}: Synapse + bridge did not start: ${reason(err)}` });
      }
    }
    if (mb) {
      try {
        const timeoutMs = intEnv("BENCH_MATRIX_TIMEOUT_S", 180) * 1000;
        if (parts.has("memory")) {
          const settings = { idleSettleMs: intEnv("BENCH_IDLE_SETTLE_S", 5) * 1000, attachmentMiB: intEnv("BENCH_ATTACHMENT_MIB", 25), timeoutMs };
          rows.push(await measureIdle(mb, settings));
          rows.push(await measureAttachment(mb, settings));
        }
        if (parts.has("inbound")) {
          rows.push(
            ...(await runMatrixInbound(mb, {
              messages: intEnv("BENCH_MATRIX_MESSAGES", 200),
              connections: intEnv("BENCH_MATRIX_CONNECTIONS", 8),
              senders: intEnv("BENCH_MATRIX_SENDERS", 8),
              rooms: intEnv("BENCH_MATRIX_ROOMS", 8),
              messageBytes: intEnv("BENCH_MESSAGE_BYTES", 2048),
              timeoutMs,
            })),
          );
        }
        if (parts.has("outbound")) {
          rows.push(
            ...(await runOutbound(mb, {
              messages: intEnv("BENCH_OUTBOUND_MESSAGES", 200),
              parallel: intEnv("BENCH_OUTBOUND_PARALLEL", 8),
              portals: intEnv("BENCH_OUTBOUND_PORTALS", 8),
              timeoutMs,
            })),
          );
        }
      } finally {
        await mb.stop();
      }
    }
  }

  progress(`bench done in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  process.stdout.write(formatTable(rows));
}

try {
  await main();
  process.exit(0);
} catch (err) {
  process.stderr.write(`bench crashed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
}
