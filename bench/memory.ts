/**
 * Part 4, `memory`: the bridge process's RSS (it runs on its own, see bench/matrixEnv.ts),
 * read from /proc/<pid>/status.
 *
 * - Idle: VmRSS a few seconds after "bridge started", before any traffic. Reference: a bare
 *   `node` process (an empty timer loop) measured the same way in the same run.
 * - One mail with a large attachment (default 25 MiB of random bytes, base64, ~34 MB on the
 *   wire), verified sender, to a room mailbox, until alice's /sync shows the ghost's m.file
 *   event (the bridge has parsed it, uploaded it to Synapse's media repository and posted it).
 *   Peak growth = the highest VmRSS sampled every 50 ms from the send until 1 s after the
 *   event (or VmHWM if that rose above its earlier value) − VmRSS just before the send.
 *   Ratio = growth / attachment size.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createMailboxRoom, MAIL_DOMAIN } from "../test/e2e/env.ts";
import type { MatrixBench } from "./matrixEnv.ts";
import { RoomWatcher } from "./roomWatch.ts";
import type { TableRow } from "./table.ts";
import { mib, procMemory, progress, reason, sampleRss, sleep } from "./util.ts";

/** Knobs of the memory part. */
export interface MemorySettings {
  /** Wait after "bridge started" before reading the idle RSS, ms. */
  idleSettleMs: number;
  /** Attachment size, MiB. */
  attachmentMiB: number;
  /** Longest wait for the attachment to be posted, ms. */
  timeoutMs: number;
}

const IDLE_TARGET = "<= 150 MiB";
const GROWTH_TARGET = "growth <= 3x the attachment";

/** VmRSS of a bare node process (an idle timer) after `settleMs`. */
async function bareNodeRss(settleMs: number): Promise<number> {
  const child = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" });
  try {
    await sleep(settleMs);
    return procMemory(child.pid!)?.rss ?? NaN;
  } finally {
    child.kill("SIGKILL");
  }
}

/**
 * The idle RSS row. Call it first, on a bridge that has had no traffic yet.
 * @param mb the running bridge
 * @param s the knobs
 */
export async function measureIdle(mb: MatrixBench, s: MemorySettings): Promise<TableRow> {
  const figure = "bridge idle RSS after start";
  try {
    await sleep(s.idleSettleMs);
    const mem = procMemory(mb.bridge.pid);
    if (!mem) throw new Error(`/proc/${mb.bridge.pid}/status has no VmRSS`);
    const bare = await bareNodeRss(Math.min(s.idleSettleMs, 2000));
    progress(`[memory] idle bridge (pid ${mb.bridge.pid}) ${s.idleSettleMs / 1000} s after start: VmRSS ${mib(mem.rss)} MiB, VmHWM ${mib(mem.hwm)} MiB; bare node process: ${mib(bare)} MiB`);
    return { part: "memory", figure, value: `${mib(mem.rss)} MiB`, reference: `bare node process ${mib(bare)} MiB`, ratio: "-", target: IDLE_TARGET };
  } catch (err) {
    return { part: "memory", figure, value: "failed", reference: "-", ratio: "-", target: IDLE_TARGET, note: `memory idle: ${reason(err)}` };
  }
}

/** Base64 folded to 76-character lines (RFC 2045 §6.8). */
function fold76(s: string): string {
  const lines: string[] = [];
  for (let i = 0; i < s.length; i += 76) lines.push(s.slice(i, i + 76));
  return lines.join("\r\n");
}

/** Synapse's upload limit (`m.upload.size`), or null when it does not say. */
async function uploadLimit(mb: MatrixBench): Promise<number | null> {
  for (const path of ["/_matrix/client/v1/media/config", "/_matrix/media/v3/config"]) {
    try {
      const res = await mb.alice.request<{ "m.upload.size"?: number }>("GET", path);
      if (typeof res["m.upload.size"] === "number") return res["m.upload.size"];
    } catch {
      // try the next
    }
  }
  return null;
}

/**
 * The large-attachment row.
 * @param mb the running bridge, Synapse and alice
 * @param s the knobs
 */
export async function measureAttachment(mb: MatrixBench, s: MemorySettings): Promise<TableRow> {
  const bytes = s.attachmentMiB * 1024 * 1024;
  const figure = `bridge peak RSS growth, 1 mail with a ${s.attachmentMiB} MiB attachment -> Synapse`;
  const row = (value: string, reference: string, ratio: string, note?: string): TableRow => ({
    part: "memory",
    figure,
    value,
    reference,
    ratio,
    target: GROWTH_TARGET,
    ...(note ? { note } : {}),
  });
  try {
    const limit = await uploadLimit(mb);
    progress(`[memory] Synapse upload limit (m.upload.size): ${limit === null ? "not given" : `${mib(limit)} MiB`}`);
    if (limit !== null && limit < bytes) return row("not run", "-", "-", `memory: Synapse's max_upload_size (${limit} bytes) is below the attachment`);

    const roomId = await createMailboxRoom(mb.alice, "benchmem", "bench memory");
    const watcher = await RoomWatcher.start(mb.alice, roomId);
    const tag = randomBytes(3).toString("hex");
    const boundary = `=_bench_${tag}`;
    const raw = Buffer.from(
      `From: "Memory Bench" <benchmem@example.org>\r\n` +
        `To: <benchmem@${MAIL_DOMAIN}>\r\n` +
        `Subject: bench mem ${tag}\r\n` +
        `Date: ${new Date().toUTCString().replace("GMT", "+0000")}\r\n` +
        `Message-ID: <bench.mem.${tag}@example.org>\r\n` +
        "MIME-Version: 1.0\r\n" +
        `Content-Type: multipart/mixed; boundary="${boundary}"\r\n` +
        "\r\n" +
        `--${boundary}\r\n` +
        "Content-Type: text/plain; charset=utf-8\r\n" +
        "\r\n" +
        "A large attachment for the memory benchmark.\r\n" +
        `--${boundary}\r\n` +
        `Content-Type: application/octet-stream; name="bench-${tag}.bin"\r\n` +
        `Content-Disposition: attachment; filename="bench-${tag}.bin"\r\n` +
        "Content-Transfer-Encoding: base64\r\n" +
        "\r\n" +
        fold76(randomBytes(bytes).toString("base64")) +
        "\r\n" +
        `--${boundary}--\r\n`,
    );
    try {
      await sleep(1000);
      const before = procMemory(mb.bridge.pid);
      if (!before) throw new Error(`/proc/${mb.bridge.pid}/status has no VmRSS`);
      const sampler = sampleRss(mb.bridge.pid, 50);
      const t0 = Date.now();
      const seenP = watcher.waitFor(
        (e) => e.type === "m.room.message" && e.content.msgtype === "m.file" && String(e.content.body ?? "").includes(tag),
        1,
        s.timeoutMs,
      );
      const reply = await mb.env.sendRaw(raw, { from: "benchmem@example.org", to: `benchmem@${MAIL_DOMAIN}` });
      const acceptedS = (Date.now() - t0) / 1000;
      const peakAtAccept = sampler.peak;
      const seen = await seenP;
      const postedS = seen.complete ? (seen.events[0]!.at - t0) / 1000 : NaN;
      await sleep(1000);
      sampler.stop();
      const after = procMemory(mb.bridge.pid);
      const hwmRose = after !== null && after.hwm > before.hwm;
      const peak = Math.max(sampler.peak, hwmRose ? after.hwm : 0);
      const growth = peak - before.rss;
      progress(
        `  [memory] ${(raw.length / 1e6).toFixed(1)} MB mail: "${reply.trim()}" after ${acceptedS.toFixed(2)} s, m.file event seen after ${postedS.toFixed(2)} s; ` +
          `VmRSS before ${mib(before.rss)} MiB, sampled peak ${mib(sampler.peak)} MiB (${sampler.samples} samples; ${mib(peakAtAccept)} MiB until the SMTP reply), VmHWM ${mib(before.hwm)} -> ${mib(after?.hwm ?? NaN)} MiB, after ${mib(after?.rss ?? NaN)} MiB; growth ${mib(growth)} MiB`,
      );
      return row(
        `+${mib(growth)} MiB`,
        `attachment ${mib(bytes)} MiB`,
        `${(growth / bytes).toFixed(2)}x`,
        seen.complete ? undefined : `memory: the m.file event was not seen within ${s.timeoutMs / 1000} s (peak covers the time until then)`,
      );
    } finally {
      watcher.stop();
    }
  } catch (err) {
    progress(`  [memory] attachment FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    return row("failed", "-", "-", `memory attachment: ${reason(err)}`);
  }
}
