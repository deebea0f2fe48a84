/**
 * src/util/reclaim.ts: the pace of collections (bytes of large-message work between two), the
 * bound on their share of the time, and the process's reclaimer with and without `--expose-gc`
 * (a real node child process, V8's real collector).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { GC_SHARE_INVERSE, Reclaimer } from "../../src/util/reclaim.ts";

/** A reclaimer on a clock the test moves; each collection takes `gcMs`. */
function paced(everyBytes: number, gcMs: number): { r: Reclaimer; runs: number[]; advance: (ms: number) => void } {
  let now = 1000;
  const runs: number[] = [];
  const r = new Reclaimer(
    () => {
      runs.push(now);
      now += gcMs;
    },
    everyBytes,
    () => now,
  );
  return { r, runs, advance: (ms) => void (now += ms) };
}

test("a collection runs once the pace's bytes are reached, not before, and the count starts again after it", () => {
  const { r, runs, advance } = paced(1000, 1);
  assert.equal(r.note(400), false);
  assert.equal(r.note(599), false);
  assert.equal(runs.length, 0);
  assert.equal(r.note(1), true, "the 1000th byte");
  assert.equal(runs.length, 1);
  advance(100);
  assert.equal(r.note(999), false, "counted from zero after the collection");
  assert.equal(r.note(1), true);
  assert.equal(r.collections, 2);
  assert.equal(r.noted, 2000);
});

test("collections take at most 1/(1+GC_SHARE_INVERSE) of the time: one due too soon after the last waits, its bytes carried", () => {
  const gcMs = 10;
  const { r, runs, advance } = paced(1000, gcMs);
  assert.equal(r.note(1000), true);
  advance(GC_SHARE_INVERSE * gcMs - 1);
  assert.equal(r.note(1000), false, "too soon after a 10 ms collection");
  assert.equal(r.note(500), false, "still too soon");
  advance(1);
  assert.equal(r.note(1), true, "the bytes noted meanwhile were kept: the next note collects");
  assert.deepEqual(runs, [1000, 1000 + gcMs + GC_SHARE_INVERSE * gcMs]);
});

test("without a collector it only counts; a pace that is not a positive number is refused", () => {
  const r = new Reclaimer(null, 10);
  for (let i = 0; i < 5; i++) assert.equal(r.note(100), false);
  assert.equal(r.collections, 0);
  assert.equal(r.noted, 500);
  for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) assert.throws(() => new Reclaimer(null, bad), RangeError);
});

test("the process's reclaimer uses V8's collector when node runs with --expose-gc, and does nothing without it", () => {
  const module = fileURLToPath(new URL("../../src/util/reclaim.ts", import.meta.url));
  const script = `import { largeWork, noteLargeWork, RECLAIM_EVERY_BYTES } from ${JSON.stringify(module)};
    for (let i = 0; i < 4; i++) noteLargeWork(RECLAIM_EVERY_BYTES / 2);
    process.stdout.write(JSON.stringify({ collections: largeWork.collections, noted: largeWork.noted, gc: typeof globalThis.gc }));`;
  const run = (flags: string[]): { collections: number; noted: number; gc: string } =>
    JSON.parse(execFileSync(process.execPath, [...flags, "--input-type=module", "-e", script], { encoding: "utf8" })) as { collections: number; noted: number; gc: string };
  const exposed = run(["--expose-gc"]);
  assert.equal(exposed.gc, "function");
  assert.ok(exposed.collections >= 1, `16 MiB of work at an 8 MiB pace collects at least once: ${JSON.stringify(exposed)}`);
  assert.equal(run([]).collections, 0);
  assert.equal(run([]).noted, exposed.noted);
});
