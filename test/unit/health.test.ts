/**
 * `makeHealthCheck` (bridge/health.ts): the submission listener counts when it is on, and is
 * left out when it is off.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:net";
import type { AddressInfo } from "node:net";
import { makeHealthCheck } from "../../src/bridge/health.ts";
import type { QueueCountsSnapshot } from "../../src/store/Store.ts";
import { configureLogging } from "../../src/util/logger.ts";

configureLogging({ level: "error" });

let appservice: Server;
let port: number;
before(async () => {
  appservice = createServer((socket) => socket.destroy());
  await new Promise<void>((resolve) => appservice.listen(0, "127.0.0.1", resolve));
  port = (appservice.address() as AddressInfo).port;
});
after(() => appservice.close());

const empty = { waiting: 0, oldestWaitingAt: null, failed: 0 };
const store = { queueCounts: async (): Promise<QueueCountsSnapshot> => ({ inbound: empty, outbound: empty }) };

test("with submission on, a submission listener that is not bound makes the bridge unhealthy; off, it is not checked", async () => {
  const parts = { store, smtp: { listening: true }, appservice: { bindAddress: "127.0.0.1", port }, timeoutMs: 2000 };
  const off = await makeHealthCheck({ ...parts, submission: null })();
  assert.equal(off.healthy, true, JSON.stringify(off.details));
  assert.equal((off.details.checks as Record<string, string>).submission, undefined);
  const up = await makeHealthCheck({ ...parts, submission: { listening: true } })();
  assert.equal(up.healthy, true);
  assert.equal((up.details.checks as Record<string, string>).submission, "ok");
  const down = await makeHealthCheck({ ...parts, submission: { listening: false } })();
  assert.equal(down.healthy, false);
  assert.equal((down.details.checks as Record<string, string>).submission, "not listening");
});
