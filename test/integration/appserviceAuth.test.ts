/**
 * The appservice listener's token check and error responses, over real HTTP on loopback,
 * through the real stack: MatrixGateway → matrix-appservice-bridge's Bridge →
 * matrix-appservice's AppService (express, body-parser). No homeserver is needed:
 * MatrixGateway.listen() starts only the listener.
 *
 * Also the pure check, checkAppserviceAuth, case by case.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import http from "node:http";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { WeakEvent } from "matrix-appservice-bridge";
import { configureLogging } from "../../src/util/logger.ts";
import { checkAppserviceAuth } from "../../src/matrix/appserviceAuth.ts";
import type { MatrixGateway } from "../../src/matrix/MatrixGateway.ts";
import { createTestGateway, writeRegistration } from "../harness/appservice.ts";
import { MemoryJournal } from "../harness/memoryJournal.ts";

const HS_TOKEN = randomBytes(32).toString("hex");
const WRONG = randomBytes(32).toString("hex");

const logLines: string[] = [];
configureLogging({ level: "debug", format: "json", write: (line) => logLines.push(line) });

describe("checkAppserviceAuth (pure)", () => {
  const q = (s = "") => new URLSearchParams(s);
  const check = (authorization: string | string[] | undefined, query = "") => checkAppserviceAuth(HS_TOKEN, { authorization }, q(query));

  test("Bearer with the right token is accepted; the scheme is case-insensitive (RFC 9110 §11.1)", () => {
    assert.deepEqual(check(`Bearer ${HS_TOKEN}`), { ok: true, source: "header" });
    assert.deepEqual(check(`bearer ${HS_TOKEN}`), { ok: true, source: "header" });
    assert.deepEqual(check(`BEARER ${HS_TOKEN}`), { ok: true, source: "header" });
    assert.deepEqual(check([`Bearer ${HS_TOKEN}`]), { ok: true, source: "header" });
    // RFC 6750 §2.1: "Bearer" 1*SP b64token
    assert.deepEqual(check(`Bearer   ${HS_TOKEN}`), { ok: true, source: "header" });
  });

  test("the legacy access_token query parameter alone is accepted", () => {
    assert.deepEqual(check(undefined, `access_token=${HS_TOKEN}`), { ok: true, source: "query" });
    assert.deepEqual(check(undefined, `a=1&access_token=${HS_TOKEN}&b=2`), { ok: true, source: "query" });
  });

  test("header and query both right: accepted", () => {
    assert.deepEqual(check(`Bearer ${HS_TOKEN}`, `access_token=${HS_TOKEN}`), { ok: true, source: "both" });
  });

  test("nothing supplied: 401 M_UNAUTHORIZED", () => {
    const r = check(undefined);
    assert.equal(r.ok, false);
    assert.ok(!r.ok);
    assert.equal(r.status, 401);
    assert.equal(r.errcode, "M_UNAUTHORIZED");
    const empty = check([]);
    assert.ok(!empty.ok && empty.status === 401);
    assert.equal(checkAppserviceAuth(HS_TOKEN, {}, q("other=1")).ok, false);
  });

  const forbidden = (r: ReturnType<typeof check>, why?: RegExp) => {
    assert.ok(!r.ok, "expected a refusal");
    assert.equal(r.status, 403);
    assert.equal(r.errcode, "M_FORBIDDEN");
    if (why) assert.match(r.error, why);
    assert.ok(!r.error.includes(HS_TOKEN) && !r.error.includes(WRONG), "the error never echoes a token");
  };

  test("header and query disagree: 403, whichever is right", () => {
    forbidden(check(`Bearer ${HS_TOKEN}`, `access_token=${WRONG}`), /disagree/);
    forbidden(check(`Bearer ${WRONG}`, `access_token=${HS_TOKEN}`), /disagree/);
    forbidden(check(`Bearer ${HS_TOKEN}`, "access_token="), /disagree/);
    forbidden(check(`Bearer ${WRONG}`, `access_token=${WRONG}`), /Bad token/);
  });

  test("a wrong token is 403, including prefixes, extensions and empty tokens", () => {
    forbidden(check(`Bearer ${WRONG}`), /Bad token/);
    forbidden(check(`Bearer ${HS_TOKEN.slice(0, -1)}`));
    forbidden(check(`Bearer ${HS_TOKEN}0`));
    forbidden(check(`Bearer ${HS_TOKEN.toUpperCase()}`));
    forbidden(check(undefined, `access_token=${WRONG}`));
    forbidden(check(undefined, "access_token="));
    forbidden(check(undefined, "access_token"));
  });

  test("any scheme but Bearer is refused, whatever its length", () => {
    forbidden(check(`Basic1 ${HS_TOKEN}`), /scheme/);
    forbidden(check(`Basic ${HS_TOKEN}`), /scheme/);
    forbidden(check(`Bearer1 ${HS_TOKEN}`), /scheme/);
    forbidden(check(`Token ${HS_TOKEN}`), /scheme/);
  });

  test("malformed credentials are refused", () => {
    forbidden(check(`Bearerx${HS_TOKEN}`), /Malformed/);
    forbidden(check(`XXXXXXX${HS_TOKEN}`), /Malformed/);
    forbidden(check(HS_TOKEN), /Malformed/);
    forbidden(check("Bearer"), /Malformed/);
    forbidden(check(""), /Malformed/);
    forbidden(check(`Bearer ${HS_TOKEN} ${HS_TOKEN}`), /Malformed/);
    forbidden(check(`Bearer ${HS_TOKEN} extra`), /Malformed/);
    forbidden(check(`Bearer\t${HS_TOKEN}`), /Malformed/);
    forbidden(check(` Bearer ${HS_TOKEN}`), /Malformed/);
  });

  test("duplicate credentials are refused even when all are right", () => {
    forbidden(check([`Bearer ${HS_TOKEN}`, `Bearer ${HS_TOKEN}`]), /More than one Authorization/);
    forbidden(check(undefined, `access_token=${HS_TOKEN}&access_token=${HS_TOKEN}`), /More than one access_token/);
  });

  test("an empty hs_token is a configuration error, not an open door", () => {
    assert.throws(() => checkAppserviceAuth("", { authorization: "Bearer " }, q()), /hs_token is empty/);
    assert.throws(() => checkAppserviceAuth("", {}, q("access_token=")), /hs_token is empty/);
  });
});

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

interface RequestOptions {
  method?: string;
  headers?: http.OutgoingHttpHeaders;
  body?: string | Buffer;
  /** Send the body with chunked transfer encoding (no Content-Length). */
  chunked?: boolean;
}

/** One real HTTP request on a fresh connection; redirects are not followed. */
function request(port: number, path: string, opts: RequestOptions = {}): Promise<Reply> {
  const { method = "PUT", body = "{}", chunked = false } = opts;
  const headers: http.OutgoingHttpHeaders = { "content-type": "application/json", ...opts.headers };
  if (!chunked && method !== "GET" && method !== "HEAD") headers["content-length"] = Buffer.byteLength(body);
  return new Promise((resolve, reject) => {
    let settled = false;
    const req = http.request({ host: "127.0.0.1", port, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        settled = true;
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") });
      });
      res.on("error", reject);
    });
    // The server may close while a refused upload is still being written; the reply counts.
    req.on("error", (err) => {
      if (!settled) reject(err);
    });
    if (method === "GET" || method === "HEAD") {
      req.end();
    } else if (chunked) {
      const buf = Buffer.from(body);
      for (let i = 0; i < buf.length; i += 64 * 1024) req.write(buf.subarray(i, i + 64 * 1024));
      req.end();
    } else {
      req.end(body);
    }
  });
}

/** Assert a small JSON Matrix error: status, errcode, and nothing of a stack trace or a file path. */
function assertMatrixError(r: Reply, status: number, errcode: string): void {
  assert.equal(r.status, status, `status (body: ${r.body.slice(0, 200)})`);
  assert.match(String(r.headers["content-type"]), /^application\/json/);
  assert.doesNotMatch(r.body, /\bat [^\s]+ \(|\n\s+at |\bat \//, "no stack frames");
  assert.ok(!r.body.includes("/node_modules/"), "no node_modules paths");
  assert.ok(!/\/(?:work|root|home|tmp|usr)\//.test(r.body), "no file paths");
  assert.ok(!/<html|<pre/i.test(r.body), "no HTML error page");
  assert.ok(r.body.length < 300, "small body");
  const json = JSON.parse(r.body) as { errcode?: unknown; error?: unknown };
  assert.equal(json.errcode, errcode);
  assert.equal(typeof json.error, "string");
  assert.equal(r.headers["x-powered-by"], undefined);
}

describe("appservice listener (real HTTP, MatrixGateway + matrix-appservice-bridge)", () => {
  let dir: string;
  let port: number;
  let gateway: MatrixGateway;
  const received: string[] = [];
  let txn = 0;

  /** A transaction body carrying one m.room.message whose body is `tag`. */
  const transaction = (tag: string): string =>
    JSON.stringify({
      events: [
        {
          type: "m.room.message",
          event_id: `$${tag}-${randomBytes(4).toString("hex")}`,
          room_id: "!room:bridge.test",
          sender: "@alice:bridge.test",
          origin_server_ts: Date.now(),
          content: { msgtype: "m.text", body: tag },
        },
      ],
    });
  const put = (prefix: string, tag: string, opts: RequestOptions = {}, query = "") =>
    request(port, `${prefix}/transactions/${++txn}${query}`, { body: transaction(tag), ...opts });
  const V1 = "/_matrix/app/v1";
  const LEGACY = "";
  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "meb-asauth-"));
    ({ gateway, port } = await createTestGateway({
      registrationFile: await writeRegistration(dir, HS_TOKEN),
      journal: new MemoryJournal(),
      sink: {
        onMatrixEvent: async (event: WeakEvent) => {
          received.push(String((event.content as { body?: unknown }).body));
        },
        onUserQuery: async (userId: string) => {
          if (userId.startsWith("@email_broken")) throw new Error("ENOENT: no such file or directory, open '/var/lib/bridge/ghosts.db'");
          return null;
        },
        thirdPartyUserId: () => null,
        thirdPartyAddress: () => null,
        isPortalRoom: async () => false,
      },
    }));
    await gateway.listen();
  });

  after(async () => {
    await gateway?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test("right Bearer: 200 {} on /_matrix/app/v1 and on the legacy path (served, not redirected)", async () => {
    const r = await put(V1, "v1-bearer", { headers: bearer(HS_TOKEN) });
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body), {});
    const legacy = await put(LEGACY, "legacy-bearer", { headers: bearer(HS_TOKEN) });
    assert.equal(legacy.status, 200, legacy.body);
    assert.equal(legacy.headers.location, undefined);
    assert.deepEqual(JSON.parse(legacy.body), {});
  });

  test("the scheme is case-insensitive: 'bearer <token>' is accepted", async () => {
    assert.equal((await put(V1, "lower-bearer", { headers: { authorization: `bearer ${HS_TOKEN}` } })).status, 200);
    assert.equal((await put(LEGACY, "upper-bearer", { headers: { authorization: `BEARER ${HS_TOKEN}` } })).status, 200);
  });

  test("legacy access_token query alone, right: 200 on both paths", async () => {
    assert.equal((await put(V1, "v1-query", {}, `?access_token=${HS_TOKEN}`)).status, 200);
    assert.equal((await put(LEGACY, "legacy-query", {}, `?access_token=${HS_TOKEN}`)).status, 200);
  });

  test("header and query both right: 200", async () => {
    assert.equal((await put(V1, "both-right", { headers: bearer(HS_TOKEN) }, `?access_token=${HS_TOKEN}`)).status, 200);
  });

  test("right Bearer + wrong access_token query: 403 M_FORBIDDEN (and the reverse)", async () => {
    for (const prefix of [V1, LEGACY]) {
      assertMatrixError(await put(prefix, "refused", { headers: bearer(HS_TOKEN) }, `?access_token=${WRONG}`), 403, "M_FORBIDDEN");
      assertMatrixError(await put(prefix, "refused", { headers: bearer(WRONG) }, `?access_token=${HS_TOKEN}`), 403, "M_FORBIDDEN");
    }
  });

  test("Bearer with a wrong token: 403 M_FORBIDDEN; wrong query alone: 403", async () => {
    for (const prefix of [V1, LEGACY]) {
      assertMatrixError(await put(prefix, "refused", { headers: bearer(WRONG) }), 403, "M_FORBIDDEN");
      assertMatrixError(await put(prefix, "refused", { headers: bearer(HS_TOKEN.slice(0, -1)) }), 403, "M_FORBIDDEN");
      assertMatrixError(await put(prefix, "refused", {}, `?access_token=${WRONG}`), 403, "M_FORBIDDEN");
    }
  });

  test("other schemes of the same length, and malformed headers: refused with 403", async () => {
    const variants = [
      `Basic1 ${HS_TOKEN}`, // 7 characters before the token, like "Bearer "
      `Bearerx${HS_TOKEN}`,
      `XXXXXXX${HS_TOKEN}`,
      `Basic ${HS_TOKEN}`,
      `Bearer ${HS_TOKEN} extra`,
      HS_TOKEN,
    ];
    for (const prefix of [V1, LEGACY]) {
      for (const authorization of variants) {
        assertMatrixError(await put(prefix, "refused", { headers: { authorization } }), 403, "M_FORBIDDEN");
      }
    }
  });

  test("two Authorization headers: 403, even when both are right", async () => {
    // Node sends an array as one header line per value.
    const twice = [`Bearer ${HS_TOKEN}`, `Bearer ${HS_TOKEN}`] as unknown as string;
    const r = await put(V1, "refused", { headers: { authorization: twice } });
    assertMatrixError(r, 403, "M_FORBIDDEN");
  });

  test("no credentials: 401 M_UNAUTHORIZED with WWW-Authenticate: Bearer", async () => {
    for (const prefix of [V1, LEGACY]) {
      const r = await put(prefix, "refused");
      assertMatrixError(r, 401, "M_UNAUTHORIZED");
      assert.match(String(r.headers["www-authenticate"]), /^Bearer\b/);
    }
  });

  test("every endpoint is behind the check, not only transactions", async () => {
    const user = `${V1}/users/${encodeURIComponent("@email_bob:bridge.test")}`;
    assertMatrixError(await request(port, user, { method: "GET" }), 401, "M_UNAUTHORIZED");
    assertMatrixError(await request(port, user, { method: "GET", headers: { authorization: `Basic1 ${HS_TOKEN}` } }), 403, "M_FORBIDDEN");
    assertMatrixError(await request(port, "/anything", { method: "GET" }), 401, "M_UNAUTHORIZED");
    const ok = await request(port, user, { method: "GET", headers: bearer(HS_TOKEN) });
    assert.equal(ok.status, 200, ok.body);
  });

  test("the homeserver's ping (POST /_matrix/app/v1/ping) answers 200 {} with the hs_token, and is refused without it", async () => {
    const ping = `${V1}/ping`;
    const ok = await request(port, ping, { method: "POST", headers: { ...bearer(HS_TOKEN), "content-type": "application/json" }, body: JSON.stringify({ transaction_id: "t1" }) });
    assert.equal(ok.status, 200, ok.body);
    assert.deepEqual(JSON.parse(ok.body), {});
    assertMatrixError(await request(port, ping, { method: "POST", body: "{}" }), 401, "M_UNAUTHORIZED");
    assertMatrixError(await request(port, ping, { method: "POST", headers: bearer(WRONG), body: "{}" }), 403, "M_FORBIDDEN");
  });

  test("the health check stays open", async () => {
    const r = await request(port, "/health", { method: "GET" });
    assert.equal(r.status, 200);
  });

  test("oversized body: 413 M_TOO_LARGE as JSON, no stack; without a token, 401 before the body is read", async () => {
    const big = JSON.stringify({ events: [], pad: "a".repeat(5_000_001) });
    assertMatrixError(await put(V1, "big", { headers: bearer(HS_TOKEN), body: big }), 413, "M_TOO_LARGE");
    assertMatrixError(await put(V1, "big", { headers: bearer(HS_TOKEN), body: big, chunked: true }), 413, "M_TOO_LARGE");
    assertMatrixError(await put(LEGACY, "big", { headers: bearer(HS_TOKEN), body: big }), 413, "M_TOO_LARGE");
    assertMatrixError(await put(V1, "big", { body: big }), 401, "M_UNAUTHORIZED");
  });

  test("malformed JSON: 400 M_NOT_JSON as JSON, no stack; without a token, 401 (not parsed)", async () => {
    for (const prefix of [V1, LEGACY]) {
      assertMatrixError(await put(prefix, "bad", { headers: bearer(HS_TOKEN), body: '{"events": [' }), 400, "M_NOT_JSON");
    }
    assertMatrixError(await put(V1, "bad", { body: '{"events": [' }), 401, "M_UNAUTHORIZED");
  });

  test("unknown route: 404 M_UNRECOGNIZED; known route, wrong method: 405 M_UNRECOGNIZED (spec › Unknown routes)", async () => {
    assertMatrixError(await request(port, `${V1}/nothing-here`, { method: "GET", headers: bearer(HS_TOKEN) }), 404, "M_UNRECOGNIZED");
    const r = await request(port, `${V1}/transactions/1`, { method: "GET", headers: bearer(HS_TOKEN) });
    assertMatrixError(r, 405, "M_UNRECOGNIZED");
    assert.equal(r.headers.allow, "PUT");
  });

  test("a body that is JSON but not a transaction is a 400 M_BAD_JSON without details", async () => {
    // `events` must be an array (Application Service API › Pushing events).
    const r = await request(port, `${V1}/transactions/${++txn}`, { headers: bearer(HS_TOKEN), body: JSON.stringify({ events: 5 }) });
    assertMatrixError(r, 400, "M_BAD_JSON");
    assert.ok(!r.body.includes("TypeError") && !r.body.includes("iterable"));
  });

  test("a failing user query answers 500 M_UNKNOWN without the error's message or path", async () => {
    const path = `${V1}/users/${encodeURIComponent("@email_broken:bridge.test")}`;
    const r = await request(port, path, { method: "GET", headers: bearer(HS_TOKEN) });
    assert.equal(r.status, 500);
    // matrix-appservice writes this body itself ({errcode, message}); only its text is ours.
    const json = JSON.parse(r.body) as { errcode?: unknown; message?: unknown };
    assert.equal(json.errcode, "M_UNKNOWN");
    assert.match(String(json.message), /Internal server error/);
    assert.ok(!r.body.includes("ENOENT") && !r.body.includes("/var/lib"), r.body);
    // The operator still gets the real error, once, in the bridge's log.
    const logged = logLines.filter((l) => l.includes('"appservice query failed"') && l.includes("@email_broken:bridge.test"));
    assert.equal(logged.length, 1);
    assert.match(logged[0]!, /ENOENT/);
  });

  test("only accepted transactions reach the bridge; no token is ever logged", async () => {
    const expected = ["v1-bearer", "legacy-bearer", "lower-bearer", "upper-bearer", "v1-query", "legacy-query", "both-right"];
    const deadline = Date.now() + 5000;
    while (received.length < expected.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual([...received].sort(), [...expected].sort());
    assert.ok(logLines.some((l) => l.includes('"appservice request refused"')), "refusals are logged");
    for (const line of logLines) {
      assert.ok(!line.includes(HS_TOKEN), `token in a log line: ${line.slice(0, 200)}`);
    }
  });
});
