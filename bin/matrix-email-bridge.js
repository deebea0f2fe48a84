#!/usr/bin/env node
// Runs the built CLI (dist/) when present, else the TypeScript sources
// directly (Node >= 22.18 strips types natively).
import { existsSync } from "node:fs";
const built = new URL("../dist/src/main.js", import.meta.url);
await import(existsSync(built) ? built.href : new URL("../src/main.ts", import.meta.url).href);
