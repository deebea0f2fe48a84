/**
 * src/matrix/mediaUpload.ts against a real HTTP server on loopback, which records what arrives
 * and answers as it is told (the end-to-end suites upload to a real Synapse).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Readable } from "node:stream";
import type { MediaStream } from "../../src/bridge/ports.ts";
import { MediaUploadError, uploadMedia } from "../../src/matrix/mediaUpload.ts";
import { MatrixGateway } from "../../src/matrix/MatrixGateway.ts";

interface Seen {
  method: string;
  url: URL;
  headers: IncomingMessage["headers"];
  body: Buffer;
}

/** A server that answers every request with `answer` and records it. */
async function server(answer: (seen: Seen) => { status: number; body: string }): Promise<{ url: string; seen: Seen[]; srv: Server }> {
  const seen: Seen[] = [];
  const srv = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on("data", (c: Buffer) => parts.push(c));
    req.on("end", () => {
      const s = { method: req.method ?? "", url: new URL(req.url ?? "/", "http://x"), headers: req.headers, body: Buffer.concat(parts) };
      seen.push(s);
      const { status, body } = answer(s);
      res.writeHead(status, { "content-type": "application/json" }).end(body);
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, seen, srv };
}

const ok = (): { status: number; body: string } => ({ status: 200, body: JSON.stringify({ content_uri: "mxc://hs.test/abc" }) });

test("a Buffer is uploaded byte for byte as the ghost, with its length, type, name and the as_token", async (t) => {
  const { url, seen, srv } = await server(ok);
  t.after(() => srv.close());
  const body = Buffer.from(Array.from({ length: 300_000 }, (_, i) => i % 251));
  const uri = await uploadMedia({ homeserverUrl: `${url}/`, asToken: "as-secret", userId: "@email_bob=40example.org:hs.test", body, contentType: "image/png", filename: "päm 1.png" });
  assert.equal(uri, "mxc://hs.test/abc");
  const [s] = seen;
  assert.ok(s);
  assert.equal(s.method, "POST");
  assert.equal(s.url.pathname, "/_matrix/media/v3/upload");
  assert.equal(s.url.searchParams.get("user_id"), "@email_bob=40example.org:hs.test");
  assert.equal(s.url.searchParams.get("filename"), "päm 1.png");
  assert.equal(s.headers.authorization, "Bearer as-secret");
  assert.equal(s.headers["content-type"], "image/png");
  assert.equal(s.headers["content-length"], "300000");
  assert.equal(s.headers["transfer-encoding"], undefined);
  assert.ok(s.body.equals(body));
});

test("a body given as a stream is sent as it is read, with its Content-Length; a size that does not match fails the upload", async (t) => {
  const { url, seen, srv } = await server(ok);
  t.after(() => srv.close());
  const whole = Buffer.from(Array.from({ length: 2_000_000 }, (_, i) => (i * 7) % 256));
  /** `whole` as a paused stream of 64 KiB chunks, as forEachAttachment hands one over. */
  const media = (bytes: number, failAt: number | null = null): MediaStream => {
    const stream = Readable.from(
      (async function* () {
        for (let at = 0, n = 0; at < whole.length; at += 65_536, n++) {
          if (n === failAt) throw new Error(`inbound mail 7: chunk ${n} is missing`);
          yield whole.subarray(at, at + 65_536);
        }
      })(),
    );
    stream.pause();
    return { bytes, stream };
  };
  const base = { homeserverUrl: url, asToken: "t", userId: "@email_a=40b.test:hs.test", contentType: "application/pdf", filename: "a.pdf" };
  assert.equal(await uploadMedia({ ...base, body: media(whole.length) }), "mxc://hs.test/abc");
  assert.equal(seen[0]?.headers["content-length"], String(whole.length));
  assert.equal(seen[0]?.headers["transfer-encoding"], undefined);
  assert.ok(seen[0]?.body.equals(whole));
  await assert.rejects(uploadMedia({ ...base, body: media(whole.length + 1) }), /has 2000000 of its 2000001 bytes/);
  await assert.rejects(uploadMedia({ ...base, body: media(whole.length - 1) }), /larger than its 1999999 bytes/);
  await assert.rejects(uploadMedia({ ...base, body: media(whole.length, 3) }), /chunk 3 is missing/);
  assert.equal(seen.length, 1, "no short or long upload was completed");
});

test("refusals are shaped like matrix-bot-sdk's errors and judged alike: 413 permanent, 429 and 502 temporary, a refused connection temporary", async (t) => {
  let next = { status: 413, body: JSON.stringify({ errcode: "M_TOO_LARGE", error: "Upload request body is too large" }) };
  const { url, srv } = await server(() => next);
  t.after(() => srv.close());
  const classify = (err: unknown): ReturnType<MatrixGateway["classifyError"]> => MatrixGateway.prototype.classifyError.call(null, err);
  const up = (homeserverUrl = url): Promise<string> => uploadMedia({ homeserverUrl, asToken: "t", userId: "@u:hs.test", body: Buffer.from("x"), contentType: "text/plain", filename: "x.txt" });

  const tooLarge = await up().catch((e: unknown) => e);
  assert.ok(tooLarge instanceof MediaUploadError);
  assert.deepEqual({ ...classify(tooLarge), message: undefined }, { temporary: false, retryAfterMs: null, status: 413, errcode: "M_TOO_LARGE", message: undefined });
  assert.match(classify(tooLarge).message, /413 M_TOO_LARGE Upload request body is too large/);

  next = { status: 429, body: JSON.stringify({ errcode: "M_LIMIT_EXCEEDED", error: "Too many requests", retry_after_ms: 1500 }) };
  const limited = classify(await up().catch((e: unknown) => e));
  assert.equal(limited.temporary, true);
  assert.equal(limited.retryAfterMs, 1500);

  next = { status: 502, body: "<html>Bad Gateway</html>" };
  const proxy = classify(await up().catch((e: unknown) => e));
  assert.equal(proxy.temporary, true);
  assert.equal(proxy.status, 502);

  next = { status: 200, body: "{}" };
  await assert.rejects(up(), /without a content_uri/);

  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
  const port = (closed.address() as AddressInfo).port;
  await new Promise<void>((resolve) => closed.close(() => resolve()));
  const refused = await up(`http://127.0.0.1:${port}`).catch((e: unknown) => e);
  assert.equal((refused as { code?: string }).code, "ECONNREFUSED");
  assert.equal(classify(refused).temporary, true);
});

test("an upload the homeserver never answers fails once the connection was silent for the timeout with ETIMEDOUT (temporary)", async (t) => {
  const srv = createServer(() => undefined);
  await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
  t.after(() => {
    srv.closeAllConnections();
    srv.close();
  });
  const url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  const err = await uploadMedia({ homeserverUrl: url, asToken: "t", userId: "@u:hs.test", body: Buffer.from("x"), contentType: "text/plain", filename: "x", timeoutMs: 200 }).catch((e: unknown) => e);
  assert.equal((err as { code?: string }).code, "ETIMEDOUT");
  assert.match(String(err), /silent for 200 ms/);
});
