/**
 * A stand-in for the bridge's appservice listener while `doctor` asks the homeserver for an
 * appservice ping and the bridge is not running: it answers `POST /_matrix/app/v1/ping`
 * (Application Service API › Pinging) with `200 {}` when the homeserver presents the
 * registration's `hs_token` (checked by src/matrix/appserviceAuth.ts, as the bridge checks
 * it), and remembers the `transaction_id`s it was pinged with.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { checkAppserviceAuth } from "../../matrix/appserviceAuth.ts";
import { closeServer, tryListen, type BindOutcome } from "./listen.ts";
import { jsonObject } from "../../util/json.ts";

/** Largest ping body read, in bytes (the body is `{"transaction_id": ...}`). */
const MAX_BODY_BYTES = 64 * 1024;

/** A listening responder. */
export interface PingResponder {
  /** `transaction_id`s of the authenticated pings received so far. */
  readonly received: string[];
  /** How many pings were refused for a wrong or missing `hs_token`. */
  readonly refused: number;
  /** Stop listening. */
  close(): Promise<void>;
}

/**
 * Listen on `host`:`port` and answer pings.
 * @param hsToken the registration's `hs_token`
 * @returns the responder, or the bind error (EADDRINUSE when the bridge, or something else, holds the port)
 */
export async function startPingResponder(hsToken: string, port: number, host: string): Promise<{ responder: PingResponder } | { responder: null; outcome: BindOutcome }> {
  const received: string[] = [];
  let refused = 0;
  const send = (res: ServerResponse, status: number, body: object) => {
    const text = JSON.stringify(body);
    res.writeHead(status, { "Content-Type": "application/json", "Content-Length": String(Buffer.byteLength(text)), Connection: "close" });
    res.end(text);
  };
  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://appservice.invalid");
    if (req.method !== "POST" || url.pathname !== "/_matrix/app/v1/ping") {
      send(res, 404, { errcode: "M_UNRECOGNIZED", error: "Unrecognized request" });
      return;
    }
    const auth = checkAppserviceAuth(hsToken, { authorization: req.headersDistinct.authorization }, url.searchParams);
    if (!auth.ok) {
      refused++;
      send(res, auth.status, { errcode: auth.errcode, error: auth.error });
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
    });
    req.on("end", () => {
      const body = jsonObject(Buffer.concat(chunks).toString("utf8"));
      if (!body) {
        send(res, 400, { errcode: "M_NOT_JSON", error: "Request body is not a JSON object" });
        return;
      }
      received.push(typeof body.transaction_id === "string" ? body.transaction_id : "");
      send(res, 200, {});
    });
  };
  const server = createServer(handle);
  const outcome = await tryListen(server, port, host);
  if (!outcome.bound) return { responder: null, outcome };
  return {
    responder: {
      received,
      get refused() {
        return refused;
      },
      close: () => {
        server.closeAllConnections();
        return closeServer(server);
      },
    },
  };
}
