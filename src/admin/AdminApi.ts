/**
 * The admin HTTP API listener (`admin_api` config section, docs/admin-api.md): plain HTTP on
 * node:http, its own address and port, every request authenticated by the bearer token
 * (auth.ts) before anything else, then dispatched to the route table (routes.ts).
 *
 * Answers are JSON; a refusal is `{errcode, error}` with its status (401 without or with a
 * wrong token, 400/404/409/422 for what the request asks), never a stack trace. A fault is
 * logged once and answered 500 `M_UNKNOWN`. Each change made through the API is logged once
 * (who: "admin api", what, ids, client address).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { errorFields, getLogger } from "../util/logger.ts";
import { checkBearer } from "./auth.ts";
import { AdminHttpError, readJson } from "./http.ts";
import { ADMIN_ACTOR, ROUTES, refusalOf, type AdminDeps, type Route, type RouteResponse } from "./routes.ts";

const log = getLogger("admin");

/** Options of {@link startAdminApi}. */
export interface AdminApiOptions {
  bindAddress: string;
  /** Port to listen on; 0 picks a free one. */
  port: number;
  /** The bearer token every request must carry. */
  token: string;
  deps: AdminDeps;
}

/** A running admin API listener. */
export interface AdminApiListener {
  /** The port it is bound to (the real one when 0 was asked for). */
  port: number;
  /** Stop taking requests and close open connections. */
  close(): Promise<void>;
}

/** A route's path pattern as a regex with named groups, and the names in order. */
interface CompiledRoute {
  route: Route;
  pattern: RegExp;
  names: string[];
}

const COMPILED: CompiledRoute[] = ROUTES.map((route) => {
  const names: string[] = [];
  const source = route.path.replace(/\{([a-z_]+)\}/g, (_, name: string) => {
    names.push(name);
    return "([^/]+)";
  });
  return { route, pattern: new RegExp(`^${source}$`), names };
});

/**
 * Start the admin API listener.
 * @returns the listener
 * @throws Error naming `admin_api.bind_address`/`admin_api.port` when the socket cannot be bound
 *   (its `cause` is the socket's error)
 */
export async function startAdminApi(opts: AdminApiOptions): Promise<AdminApiListener> {
  const server = createServer((req, res) => {
    void handle(req, res, opts);
  });
  // Keep-alive sockets would hold close() up; requests are short.
  server.keepAliveTimeout = 1000;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(opts.port, opts.bindAddress, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new Error(`the admin API cannot listen on ${opts.bindAddress}:${opts.port} (admin_api.bind_address, admin_api.port): ${why}`, { cause: err });
  }
  const port = (server.address() as AddressInfo).port;
  log.info("admin API listening", { address: `${opts.bindAddress}:${port}` });
  return { port, close: () => closeServer(server) };
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/** Answer one request; never rejects. */
async function handle(req: IncomingMessage, res: ServerResponse, opts: AdminApiOptions): Promise<void> {
  const method = req.method ?? "GET";
  const url = new URL(req.url ?? "/", "http://admin.invalid");
  const clientAddress = req.socket.remoteAddress ?? "unknown";
  try {
    const auth = checkBearer(req.headers.authorization, opts.token);
    if (auth === "missing") throw new AdminHttpError(401, "M_MISSING_TOKEN", "this API needs the admin token: Authorization: Bearer <admin_api token>");
    if (auth === "wrong") {
      log.warn("admin API request with a wrong token", { method, path: url.pathname, client: clientAddress });
      throw new AdminHttpError(401, "M_UNKNOWN_TOKEN", "the admin token is wrong");
    }
    const { route, params } = match(method, url.pathname);
    const response = await route.handle(opts.deps, {
      params,
      query: url.searchParams,
      body: () => readJson(req),
      clientAddress,
    });
    if ("json" in response && response.action) {
      log.info("admin action", { by: ADMIN_ACTOR, what: response.action.what, ...response.action.ids, client: clientAddress });
    }
    send(res, response);
  } catch (err) {
    const refusal = refusalOf(err);
    if (refusal) {
      send(res, { status: refusal.status, json: { errcode: refusal.errcode, error: refusal.message } });
      return;
    }
    log.error("admin API request failed", { method, path: url.pathname, client: clientAddress, ...errorFields(err) });
    send(res, { status: 500, json: { errcode: "M_UNKNOWN", error: "the request failed inside the bridge; the bridge's log has the details" } });
  }
}

/**
 * The route for a method and path, with its parameters percent-decoded.
 * @throws AdminHttpError 404 M_UNRECOGNIZED for an unknown path, 405 for a known path with another method
 */
function match(method: string, path: string): { route: Route; params: Record<string, string> } {
  let pathKnown = false;
  for (const c of COMPILED) {
    const m = c.pattern.exec(path);
    if (!m) continue;
    pathKnown = true;
    if (c.route.method !== method) continue;
    const params: Record<string, string> = {};
    for (const [i, name] of c.names.entries()) {
      try {
        params[name] = decodeURIComponent(m[i + 1]!);
      } catch {
        throw new AdminHttpError(400, "M_INVALID_PARAM", `the path segment for ${name} is not valid percent-encoding`);
      }
    }
    return { route: c.route, params };
  }
  if (pathKnown) throw new AdminHttpError(405, "M_UNRECOGNIZED", `${method} is not allowed on ${path}`);
  throw new AdminHttpError(404, "M_UNRECOGNIZED", `there is no admin API route ${path} (see docs/admin-api.md)`);
}

function send(res: ServerResponse, response: RouteResponse): void {
  if (res.headersSent) return;
  if ("bytes" in response) {
    res.writeHead(response.status, { "content-type": response.contentType, "content-length": response.bytes.length, "cache-control": "no-store" });
    res.end(response.bytes);
    return;
  }
  const body = Buffer.from(JSON.stringify(response.json));
  res.writeHead(response.status, { "content-type": "application/json", "content-length": body.length, "cache-control": "no-store" });
  res.end(body);
}
