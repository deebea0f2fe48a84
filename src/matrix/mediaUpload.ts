/**
 * Media upload to the homeserver's content repository as an appservice user
 * (`POST /_matrix/media/v3/upload`, Client-Server API "Content repository"; `user_id` identity
 * assertion, Application Service API "Identity assertion").
 *
 * Written on `node:http` rather than through matrix-bot-sdk, whose `request` copies every typed
 * array body (`Buffer.from(body)`) before it writes it, and through which no body can be streamed:
 * a 25 MiB attachment cost 25 to 50 MiB more than itself. Here a Buffer goes to the socket as it
 * is, and a body known as a stream is sent as it is read, with its length (Synapse refuses an
 * upload without a `Content-Length`) and the socket's backpressure.
 */
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import type { MediaStream } from "../bridge/ports.ts";

/** Longest silence of the connection during an upload (nothing sent or received), in ms (matrix-bot-sdk's timeout). */
export const UPLOAD_TIMEOUT_MS = 60_000;

/** The content of an upload: in one Buffer, or a stream of its bytes and their number (paused until the upload reads it). */
export type UploadBody = Buffer | MediaStream;

/** What {@link uploadMedia} needs. */
export interface UploadRequest {
  /** Base URL of the homeserver's Client-Server API, e.g. `http://127.0.0.1:8008`. */
  homeserverUrl: string;
  /** The registration's `as_token`. */
  asToken: string;
  /** The appservice user the upload is made as (`user_id`). */
  userId: string;
  body: UploadBody;
  /** `Content-Type` of the media. */
  contentType: string;
  /** The file name the homeserver keeps (`filename`). */
  filename: string;
  /** Default {@link UPLOAD_TIMEOUT_MS}. */
  timeoutMs?: number;
}

/**
 * A refusal of the homeserver, shaped like matrix-bot-sdk's errors (`statusCode`, `errcode`,
 * `body`, `retryAfterMs`), so MatrixGateway's `classifyError` judges both alike.
 */
export class MediaUploadError extends Error {
  override name = "MediaUploadError";
  readonly statusCode: number;
  readonly errcode?: string;
  readonly body: Record<string, unknown>;
  readonly retryAfterMs?: number;
  constructor(statusCode: number, body: Record<string, unknown>) {
    const text = typeof body.error === "string" ? body.error : "";
    super(`media upload failed: ${statusCode}${typeof body.errcode === "string" ? ` ${body.errcode}` : ""}${text ? ` ${text}` : ""}`);
    this.statusCode = statusCode;
    this.body = body;
    if (typeof body.errcode === "string") this.errcode = body.errcode;
    if (typeof body.retry_after_ms === "number") this.retryAfterMs = body.retry_after_ms;
  }
}

/**
 * Upload media as `req.userId`.
 * @returns the `mxc://` URI the homeserver gave it
 * @throws MediaUploadError when the homeserver answers non-2xx; Error with the network's `code`
 *   (ECONNREFUSED, ECONNRESET, …) when it cannot be reached, or `ETIMEDOUT` when the connection
 *   was silent for the timeout;
 *   Error when the answer has no `content_uri`, or a chunked body's size is not `bytes`
 */
export function uploadMedia(req: UploadRequest): Promise<string> {
  const url = new URL(`${req.homeserverUrl.replace(/\/+$/, "")}/_matrix/media/v3/upload`);
  url.searchParams.set("filename", req.filename);
  url.searchParams.set("user_id", req.userId);
  const bytes = Buffer.isBuffer(req.body) ? req.body.length : req.body.bytes;
  const send = url.protocol === "https:" ? httpsRequest : httpRequest;
  const timeoutMs = req.timeoutMs ?? UPLOAD_TIMEOUT_MS;
  return new Promise<string>((resolve, reject) => {
    let settled = false;
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      outgoing.destroy();
      reject(err);
    };
    const outgoing = send(url, {
      method: "POST",
      headers: { authorization: `Bearer ${req.asToken}`, "content-type": req.contentType, "content-length": String(bytes) },
      timeout: timeoutMs,
    });
    outgoing.once("timeout", () => fail(Object.assign(new Error(`media upload: the connection was silent for ${timeoutMs} ms`), { code: "ETIMEDOUT" })));
    outgoing.once("error", fail);
    outgoing.once("response", (res: IncomingMessage) => {
      const parts: Buffer[] = [];
      res.on("data", (c: Buffer) => parts.push(c));
      res.once("error", fail);
      res.once("end", () => {
        if (settled) return;
        let body: Record<string, unknown> = {};
        try {
          const parsed: unknown = JSON.parse(Buffer.concat(parts).toString("utf8"));
          if (parsed && typeof parsed === "object") body = parsed as Record<string, unknown>;
        } catch {
          // Not JSON (a proxy's error page): the status says what happened.
        }
        const status = res.statusCode ?? 0;
        if (status < 200 || status >= 300) return fail(new MediaUploadError(status, body));
        if (typeof body.content_uri !== "string" || !body.content_uri.startsWith("mxc://")) return fail(new Error(`media upload: the homeserver answered ${status} without a content_uri`));
        settled = true;
        resolve(body.content_uri);
      });
    });
    if (Buffer.isBuffer(req.body)) {
      outgoing.end(req.body);
      return;
    }
    // Streamed with backpressure: paused while the socket is full.
    const { stream } = req.body;
    let sent = 0;
    stream.on("data", (chunk: Buffer) => {
      if (settled) return;
      sent += chunk.length;
      if (sent > bytes) return fail(new Error(`media upload: the body is larger than its ${bytes} bytes`));
      if (!outgoing.write(chunk)) {
        stream.pause();
        outgoing.once("drain", () => stream.resume());
      }
    });
    stream.once("error", (err: Error) => fail(err));
    stream.once("end", () => {
      if (settled) return;
      if (sent !== bytes) return fail(new Error(`media upload: the body has ${sent} of its ${bytes} bytes`));
      outgoing.end();
    });
    stream.resume();
  });
}
