/**
 * The one-click unsubscribe route of the appservice listener (RFC 8058), over real HTTP through
 * MatrixGateway, with the bridge's part played by the test: no `hs_token` needed; GET/HEAD
 * change nothing; POST needs `List-Unsubscribe=One-Click` (urlencoded or multipart/form-data);
 * unknown tokens 404; other methods 405; a failure 503; without the route, the path needs the
 * `hs_token` like any other.
 */
import { after, afterEach, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { configureLogging } from "../../src/util/logger.ts";
import type { MatrixGateway } from "../../src/matrix/MatrixGateway.ts";
import type { OneClickUnsubscribeRoute } from "../../src/matrix/appserviceHttp.ts";
import { openStore } from "../../src/store/open.ts";
import type { BridgeStore } from "../../src/store/Store.ts";
import { createTestGateway, writeRegistration } from "../harness/appservice.ts";

const HS_TOKEN = randomBytes(32).toString("hex");
const GOOD = "good.token";

const logLines: string[] = [];
configureLogging({ level: "info", format: "json", write: (line) => void logLines.push(line) });

let dir: string;
let registrationFile: string;
let store: BridgeStore;
const gateways: MatrixGateway[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "meb-oneclick-"));
  registrationFile = await writeRegistration(dir, HS_TOKEN);
  store = await openStore({ url: null, sqliteFile: join(dir, "journal.sqlite") });
});
afterEach(async () => {
  for (const g of gateways.splice(0)) await g.stop();
});
after(async () => {
  await store?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Start a gateway whose listener serves `route` (or no route); returns its base URL. */
async function start(route?: OneClickUnsubscribeRoute): Promise<string> {
  const { gateway, port } = await createTestGateway({
    registrationFile,
    journal: store,
    sink: { onMatrixEvent: async () => undefined, onUserQuery: async () => null, thirdPartyUserId: () => null, thirdPartyAddress: () => null, isPortalRoom: async () => false },
    ...(route ? { unsubscribe: route } : {}),
  });
  gateways.push(gateway);
  await gateway.listen();
  return `http://127.0.0.1:${port}`;
}

/** A route that records its calls; `fail` makes unsubscribe throw. */
function recorder(fail = false): { route: OneClickUnsubscribeRoute; done: string[] } {
  const done: string[] = [];
  return {
    done,
    route: {
      verify: (token) => token === GOOD,
      unsubscribe: async (token) => {
        if (fail) throw new Error("store down");
        if (token !== GOOD) return false;
        done.push(token);
        return true;
      },
    },
  };
}

const form = { "Content-Type": "application/x-www-form-urlencoded" };

describe("one-click unsubscribe route", () => {
  test("GET and HEAD show the page and change nothing; POST One-Click unsubscribes; no cookies, no redirects, no hs_token", async () => {
    const { route, done } = recorder();
    const base = await start(route);
    const get = await fetch(`${base}/unsubscribe/${GOOD}`, { redirect: "manual" });
    assert.equal(get.status, 200);
    assert.match(await get.text(), /<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">/);
    assert.equal(get.headers.get("cache-control"), "no-store");
    const head = await fetch(`${base}/unsubscribe/${GOOD}`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.deepEqual(done, []);
    const post = await fetch(`${base}/unsubscribe/${GOOD}`, { method: "POST", redirect: "manual", headers: form, body: "List-Unsubscribe=One-Click" });
    assert.equal(post.status, 200);
    assert.equal(post.headers.get("set-cookie"), null);
    assert.match(post.headers.get("content-type") ?? "", /^text\/plain/);
    assert.match(await post.text(), /unsubscribed/);
    assert.deepEqual(done, [GOOD]);
  });

  test("multipart/form-data bodies count too; a POST without the pair is 400; too large 413; other methods 405", async () => {
    const { route, done } = recorder();
    const base = await start(route);
    const body = new FormData();
    body.append("List-Unsubscribe", "One-Click");
    const multipart = await fetch(`${base}/unsubscribe/${GOOD}`, { method: "POST", body });
    assert.equal(multipart.status, 200);
    await multipart.text();
    for (const wrong of ["", "List-Unsubscribe=Yes", "unsubscribe=One-Click"]) {
      const r = await fetch(`${base}/unsubscribe/${GOOD}`, { method: "POST", headers: form, body: wrong });
      assert.equal(r.status, 400, wrong);
      await r.text();
    }
    const big = await fetch(`${base}/unsubscribe/${GOOD}`, { method: "POST", headers: form, body: `List-Unsubscribe=One-Click&x=${"a".repeat(20_000)}` });
    assert.equal(big.status, 413);
    await big.text();
    const del = await fetch(`${base}/unsubscribe/${GOOD}`, { method: "DELETE" });
    assert.equal(del.status, 405);
    assert.equal(del.headers.get("allow"), "GET, HEAD, POST");
    await del.text();
    assert.deepEqual(done, [GOOD]);
  });

  test("unknown or malformed tokens: 404 on GET and POST, one warning each; a failing unsubscribe: 503", async () => {
    const { route, done } = recorder();
    const base = await start(route);
    logLines.length = 0;
    for (const path of ["/unsubscribe/forged.token", "/unsubscribe/bad%20token", "/unsubscribe/a/b"]) {
      const get = await fetch(`${base}${path}`);
      assert.equal(get.status, 404, path);
      assert.match(await get.text(), /not valid/);
      const post = await fetch(`${base}${path}`, { method: "POST", headers: form, body: "List-Unsubscribe=One-Click" });
      assert.equal(post.status, 404, path);
      await post.text();
    }
    assert.deepEqual(done, []);
    assert.equal(logLines.filter((l) => l.includes("token the bridge did not make")).length, 6);

    const failing = await start(recorder(true).route);
    const r = await fetch(`${failing}/unsubscribe/${GOOD}`, { method: "POST", headers: form, body: "List-Unsubscribe=One-Click" });
    assert.equal(r.status, 503);
    assert.equal(r.headers.get("retry-after"), "60");
    await r.text();
  });

  test("without the route (no public URL), /unsubscribe/ needs the hs_token like every other path", async () => {
    const base = await start();
    const r = await fetch(`${base}/unsubscribe/${GOOD}`, { method: "POST", headers: form, body: "List-Unsubscribe=One-Click" });
    assert.equal(r.status, 401);
    await r.text();
  });
});
