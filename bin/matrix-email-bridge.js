#!/usr/bin/env -S MALLOC_MMAP_THRESHOLD_=65536 MALLOC_ARENA_MAX=1 node --max-semi-space-size=4 --expose-gc
// --max-semi-space-size=4: a young generation of at most 4 MiB per semi-space; --expose-gc: the garbage of a
// large mail is collected as it is made (src/util/reclaim.ts); MALLOC_MMAP_THRESHOLD_: glibc gives blocks of
// 64 KiB and more back to the system when they are freed; MALLOC_ARENA_MAX=1: one malloc arena for all
// threads (docs/operations.md, "Memory").
// Runs the built CLI (dist/) when present, else the TypeScript sources
// directly (Node >= 22.18 strips types natively).
import { existsSync } from "node:fs";
const built = new URL("../dist/src/main.js", import.meta.url);
await import(existsSync(built) ? built.href : new URL("../src/main.ts", import.meta.url).href);
