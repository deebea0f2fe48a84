/**
 * The `/media/<token>/<name>` route of the appservice listener (src/matrix/appserviceHttp.ts),
 * on the real listener (matrix-appservice's AppService with the front handler) and a fake
 * bridge side: the file is streamed (a reader leaving stops the download), HEAD sends headers
 * only, a bad link is 404, a homeserver failure 502, and without the route the path needs the
 * `hs_token` like any other.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { request } from "node:http";
import { createHardenedAppService, type MediaContent, type MediaLinkRoute } from "../../src/matrix/appserviceHttp.ts";
import { freePort } from "../harness/ports.ts";
import { configureLogging } from "../../src/util/logger.ts";
import { prepareCrypto } from "../../src/matrix/crypto.ts";

configureLogging({ level: "error" });

const CHUNK = 64 * 1024;
const CHUNKS = 200;

/** A body of `CHUNKS` chunks made on demand; counts the chunks read and whether it was cancelled. */
function lazyBody(failAfter: number | null = null): { body: MediaContent["body"]; pulled: () => number; cancelled: () => boolean; data: Buffer[] } {
  let n = 0;
  let cancelled = false;
  const data: Buffer[] = [];
  const body = new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        if (failAfter !== null && n === failAfter) {
          controller.error(new Error("homeserver connection reset"));
          return;
        }
        if (n === CHUNKS) {
          controller.close();
          return;
        }
        const chunk = randomBytes(CHUNK);
        data.push(chunk);
        n++;
        controller.enqueue(chunk);
      },
      cancel() {
        cancelled = true;
      },
    },
    { highWaterMark: 0 },
  );
  return { body: body as MediaContent["body"], pulled: () => n, cancelled: () => cancelled, data };
}

describe("appservice listener: /media/ links", () => {
  let base: string;
  let plainBase: string;
  const services: { close(): Promise<void> }[] = [];
  let next: () => Promise<MediaContent> = () => Promise.reject(new Error("no body set"));
  const route: MediaLinkRoute = {
    resolve: (token, name) => (token === "good.token" && name === "Bericht ü.pdf" ? "mxc://hs.example/Abc" : null),
    open: (mxc) => {
      assert.equal(mxc, "mxc://hs.example/Abc");
      return next();
    },
  };

  before(async () => {
    // As the gateway does: the crypto stand-in first, so that the library loads without its native binding.
    prepareCrypto();
    const mab = await import("matrix-appservice-bridge");
    const port = await freePort();
    const withRoute = createHardenedAppService(mab, { homeserverToken: "hs-token", media: route });
    await withRoute.listen(port, "127.0.0.1", 10);
    services.push(withRoute);
    base = `http://127.0.0.1:${port}`;
    const plainPort = await freePort();
    const without = createHardenedAppService(mab, { homeserverToken: "hs-token" });
    await without.listen(plainPort, "127.0.0.1", 10);
    services.push(without);
    plainBase = `http://127.0.0.1:${plainPort}`;
  });
  after(async () => {
    for (const s of services) await s.close();
  });

  const link = () => `${base}/media/good.token/${encodeURIComponent("Bericht ü.pdf")}`;

  it("GET streams the homeserver's body through with its type and length, as a sandboxed download", async () => {
    const src = lazyBody();
    next = async () => ({ contentType: "application/pdf", contentLength: CHUNK * CHUNKS, body: src.body });
    const res = await fetch(link());
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "application/pdf");
    assert.equal(res.headers.get("content-length"), String(CHUNK * CHUNKS));
    assert.equal(res.headers.get("content-disposition"), `attachment; filename="Bericht _.pdf"; filename*=UTF-8''Bericht%20%C3%BC.pdf`);
    assert.equal(res.headers.get("x-content-type-options"), "nosniff");
    assert.match(res.headers.get("content-security-policy") ?? "", /^sandbox/);
    assert.ok(Buffer.from(await res.arrayBuffer()).equals(Buffer.concat(src.data)));
  });

  it("a reader that leaves early stops the download: the body is read on demand, not whole", async () => {
    const src = lazyBody();
    next = async () => ({ contentType: null, contentLength: null, body: src.body });
    await new Promise<void>((resolve, reject) => {
      const req = request(link(), (res) => {
        assert.equal(res.statusCode, 200);
        assert.equal(res.headers["content-type"], "application/octet-stream");
        res.once("data", () => {
          req.destroy();
          resolve();
        });
      });
      req.on("error", (err) => {
        if ((err as NodeJS.ErrnoException).code !== "ECONNRESET") reject(err);
      });
      req.end();
    });
    for (let i = 0; i < 100 && !src.cancelled(); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(src.cancelled(), "the homeserver download was cancelled");
    assert.ok(src.pulled() < CHUNKS / 2, `read ${src.pulled()} of ${CHUNKS} chunks`);
  });

  it("HEAD sends the headers only and cancels the download", async () => {
    const src = lazyBody();
    next = async () => ({ contentType: "application/pdf", contentLength: 42, body: src.body });
    const res = await fetch(link(), { method: "HEAD" });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-length"), "42");
    assert.equal((await res.arrayBuffer()).byteLength, 0);
    assert.ok(src.cancelled());
  });

  it("a homeserver failure before the body is 502; one mid-body cuts the response short", async () => {
    next = () => Promise.reject(Object.assign(new Error("media download failed: 404 Not found"), { statusCode: 404 }));
    const res = await fetch(link());
    assert.equal(res.status, 502);
    assert.match(await res.text(), /could not be fetched from the Matrix homeserver/);
    const src = lazyBody(3);
    next = async () => ({ contentType: "application/pdf", contentLength: CHUNK * CHUNKS, body: src.body });
    const cut = await fetch(link());
    assert.equal(cut.status, 200);
    await assert.rejects(cut.arrayBuffer());
  });

  it("bad links are 404, other methods 405; without the route the path needs the hs_token", async () => {
    for (const path of ["/media/bad.token/x.pdf", `/media/good.token/${encodeURIComponent("other.pdf")}`, "/media/good.token", "/media/good.token/%E0%A4%A", "/media/"]) {
      const res = await fetch(`${base}${path}`);
      assert.equal(res.status, 404, path);
      assert.equal(res.headers.get("content-type"), "text/plain; charset=utf-8");
    }
    const post = await fetch(link(), { method: "POST", body: "x" });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
    const plain = await fetch(`${plainBase}/media/good.token/x.pdf`);
    assert.equal(plain.status, 401);
  });
});
