/**
 * The appservice HTTP listener's front door: authentication and error responses in front
 * of matrix-appservice's express app.
 *
 * Why: matrix-appservice 3.0.0 (lib/app-service.js) checks the `hs_token` loosely and
 * late, and leaves errors to express's default handler:
 * - `isInvalidToken` (app-service.js:154-165) takes `authorization.substring(7)` whatever
 *   the first seven characters are (`Basic1 <t>`, `Bearerx<t>` pass), ignores the
 *   `access_token` query whenever a header is present (a wrong one passes), and compares
 *   with `!==` (not constant-time);
 * - `bodyParser.json` is mounted before every route (app-service.js:45-47), so bodies
 *   of unauthenticated requests are read and parsed (up to 5 MB) before any token check;
 * - body-parser's 400/413 errors and unknown routes reach express's `finalhandler`, which
 *   answers an HTML page with the stack trace and file paths (NODE_ENV is not
 *   "production") and prints the stack to stderr, outside our logger;
 * - the legacy routes (`/transactions/:txnId` ...) answer 308 with no token check
 *   (app-service.js:48-56), where the spec says they take the same request and response;
 * - a failing user query answers 500 with the error's message (app-service.js:189-193),
 *   e.g. an ENOENT message with a file path.
 *
 * How it hooks in, through the libraries' public surface, without patching them:
 * `Bridge.listen(port, host, backlog, appServiceInstance)` takes our AppService, a
 * subclass whose deprecated-but-public `app` (what `AppService.listen` hands to
 * `http.createServer`, app-service.js:89) is a front handler, while the public
 * `expressApp` getter still returns the library's express app, so routes added by
 * matrix-appservice-bridge (`addAppServicePath`) land where they always did. The front
 * handler authenticates every request ({@link checkAppserviceAuth}), rewrites the legacy
 * paths, then calls the express app with its own final callback, so errors and unmatched
 * routes get a small JSON Matrix error instead of `finalhandler`'s page. The query handlers
 * the bridge assigns (`appservice.onUserQuery = ...`, bridge.js `listen`) are wrapped so a
 * failure reaches the library as an `AppserviceHttpError` with a constant message.
 *
 * Transactions (`PUT /_matrix/app/v1/transactions/{txnId}`, and the legacy path) never reach
 * the library when a {@link TransactionReceiver} is given: the library answers 200 before any
 * handler has run (app-service.js `onTransaction`), so a crash after its 200 lost the events.
 * The front handler reads the JSON body itself (same limit, same error answers), has the
 * receiver commit the transaction to the journal (./appserviceTransactions.ts), and only then
 * answers 200 `{}`; the receiver starts handling once the response is finished.
 *
 * One-click unsubscribe (RFC 8058), when a {@link OneClickUnsubscribeRoute} is given: the only
 * routes besides `/health` that take no `hs_token`, since mail readers call them through the
 * admin's reverse proxy (`<appservice.public_url>/unsubscribe/` → `/unsubscribe/`). See
 * {@link handleUnsubscribe}.
 *
 * Links to files too large to attach (`<appservice.public_url>/media/<token>/<name>`), when a
 * {@link MediaLinkRoute} is given: likewise without `hs_token`; the file is streamed from the
 * homeserver's authenticated media download. See {@link handleMedia}.
 */
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import { readFile } from "node:fs/promises";
import type { IncomingMessage, RequestListener, Server, ServerResponse } from "node:http";
import type { AppService, AppServiceOutput, AppServiceRegistration, AppserviceHttpError } from "matrix-appservice-bridge";
import { parse as parseYaml } from "yaml";
import { errorFields, getLogger } from "../util/logger.ts";
import { checkAppserviceAuth } from "./appserviceAuth.ts";

const log = getLogger("matrix/http");

/** matrix-appservice's default request body limit (`MAX_SIZE_BYTES`), in bytes. */
export const DEFAULT_MAX_BODY_BYTES = 5_000_000;

/** The express app type of matrix-appservice (its `expressApp`). */
type ExpressApp = AppService["expressApp"];

/** `AppService.onUserQuery` / `onAliasQuery`: the queried ID, a legacy callback; a promise or null. */
type QueryHandler = (arg: string, callback: () => void) => PromiseLike<void> | null;

/** An express app called as a plain function with a final callback (`app(req, res, next)`). */
type ExpressHandler = (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void;

/** The classes of matrix-appservice-bridge that {@link createHardenedAppService} needs (the module fits). */
export interface AppServiceLibrary {
  AppService: typeof AppService;
  AppserviceHttpError: typeof AppserviceHttpError;
}

/** Options for {@link createHardenedAppService}. */
export interface HardenedAppServiceOptions {
  /** The registration's `hs_token`: the only credentials accepted. Must not be empty. */
  homeserverToken: string;
  /** Largest request body accepted, in bytes (413 above it); default {@link DEFAULT_MAX_BODY_BYTES}. */
  maxBodyBytes?: number;
  /**
   * Who records transactions before their 200 (./appserviceTransactions.ts). Without one,
   * transactions go to the library as they always did (answered 200 before any handling).
   */
  transactions?: TransactionReceiver;
  /** Serve `/unsubscribe/<token>` (RFC 8058 one-click unsubscribe); absent: those paths are 401 like any other. */
  unsubscribe?: OneClickUnsubscribeRoute;
  /** Serve `/media/<token>/<name>` (links to files too large to attach); absent: those paths are 401 like any other. */
  media?: MediaLinkRoute;
}

/** A media download from the homeserver, its body not read yet. */
export interface MediaContent {
  /** The homeserver's `Content-Type`, or null when it sent none. */
  contentType: string | null;
  /** The body's length in bytes when the homeserver said it (`Content-Length`, no content coding), else null. */
  contentLength: number | null;
  /** The body, to be read or cancelled. */
  body: WebReadableStream<Uint8Array>;
}

/**
 * What the media link route asks of the bridge (the bridge core checks tokens, the gateway
 * downloads; this layer knows neither keys nor rooms).
 */
export interface MediaLinkRoute {
  /**
   * Check a link.
   * @param token the token from the path
   * @param name the file name from the path, percent-decoded
   * @returns the `mxc://` URI it names, or null for a forged, tampered, renamed or expired link
   */
  resolve(token: string, name: string): string | null;
  /**
   * Start downloading `mxc` from the homeserver as the bridge bot.
   * @throws the homeserver's error (answered 502)
   */
  open(mxc: string): Promise<MediaContent>;
}

/**
 * What the one-click unsubscribe route asks of the bridge (the bridge core supplies it, so this
 * layer knows nothing of rooms or addresses).
 */
export interface OneClickUnsubscribeRoute {
  /** Whether `token` is one the bridge made (for the GET page; changes nothing). */
  verify(token: string): boolean;
  /**
   * Carry out the unsubscribe `token` names.
   * @returns false for a token the bridge did not make (answered 404)
   * @throws when it cannot be done now (answered 503; the reader may click again)
   */
  unsubscribe(token: string): Promise<boolean>;
}

/** What {@link TransactionReceiver.record} did. */
export interface RecordedTransaction {
  /** The transaction ID was recorded before (a replay): nothing new was committed. */
  duplicate: boolean;
  /**
   * Call once the 200 is finished (or the connection is gone): the transaction's events may
   * be handled from now on. Never throws.
   */
  afterResponse(): void;
}

/**
 * Records appservice transactions durably (Application Service API › Pushing events); the
 * front handler answers 200 only after {@link record} resolved.
 */
export interface TransactionReceiver {
  /**
   * Commit transaction `txnId` with its parsed JSON body. A transaction ID seen before must
   * resolve without side effects (the homeserver retries until it gets 200).
   * @throws TransactionBodyError for a malformed body: answered 400 `M_BAD_JSON`
   * @throws anything else when the commit failed: answered 500 `M_UNKNOWN` (the homeserver retries)
   */
  record(txnId: string, body: unknown): Promise<RecordedTransaction>;
}

/** A transaction body that is valid JSON but not a transaction (answered 400 `M_BAD_JSON`). */
export class TransactionBodyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TransactionBodyError";
  }
}

/**
 * Legacy routes (Application Service API › Legacy routes): "the exact same request body and
 * response format, they just belong at a different path". Served as their /_matrix/app/v1 form.
 */
const LEGACY_ROUTE = /^\/(?:transactions|users|rooms)\/[^/]+$/;

/** Routes the library serves, with their methods: a known path with another method is 405. */
const KNOWN_ROUTES: { path: RegExp; methods: readonly string[] }[] = [
  { path: /^\/_matrix\/app\/v1\/transactions\/[^/]+\/?$/, methods: ["PUT"] },
  { path: /^\/_matrix\/app\/v1\/(?:users|rooms)\/[^/]+\/?$/, methods: ["GET", "HEAD"] },
  { path: /^\/health\/?$/, methods: ["GET", "HEAD"] },
];

/** The transaction route; group 1 is the (encoded) transaction ID. */
/** The appservice ping the homeserver sends (Application Service API › Pinging, spec v1.7). */
const PING_ROUTE = "/_matrix/app/v1/ping";
const TRANSACTION_ROUTE = /^\/_matrix\/app\/v1\/transactions\/([^/]+)\/?$/;

/** Longest transaction ID accepted, in characters (Synapse sends a decimal counter). */
const MAX_TXN_ID_LENGTH = 255;

/** Longest path written to a log line, in characters (the path is the client's). */
const MAX_LOGGED_PATH = 200;

/** A Matrix error answer: HTTP status, errcode, constant message. */
interface MatrixHttpError {
  status: number;
  errcode: string;
  error: string;
}

/**
 * Read the registration file the way matrix-appservice-bridge does (YAML mapping →
 * `AppServiceRegistration.fromObject`), so the gateway and the bridge share one parse.
 * @param Registration the `AppServiceRegistration` class of matrix-appservice-bridge
 * @param file path of the registration YAML (Application Service API › Registration)
 * @throws Error when the file cannot be read, is not a YAML mapping, or has no `hs_token`/`as_token`
 */
export async function loadRegistration(Registration: typeof AppServiceRegistration, file: string): Promise<AppServiceRegistration> {
  const doc = parseYaml(await readFile(file, "utf8")) as unknown;
  if (!doc || typeof doc !== "object" || Array.isArray(doc)) throw new Error(`registration file ${file} is not a YAML mapping`);
  const { hs_token: hsToken, as_token: asToken } = doc as { hs_token?: unknown; as_token?: unknown };
  if (typeof hsToken !== "string" || !hsToken) throw new Error(`registration file ${file} has no hs_token`);
  if (typeof asToken !== "string" || !asToken) throw new Error(`registration file ${file} has no as_token`);
  return Registration.fromObject(doc as AppServiceOutput);
}

/**
 * Build matrix-appservice's AppService with the front handler described in this module's
 * header; hand it to `Bridge.listen(port, host, backlog, appservice)`.
 *
 * Every request except `GET|HEAD /health` (and `/unsubscribe/…` when `opts.unsubscribe` is
 * given, see {@link handleUnsubscribe}; `/media/…` when `opts.media` is, see {@link handleMedia})
 * must carry the `hs_token` (rules in
 * ./appserviceAuth.ts); refusals are 401/403 with `{errcode, error}`. Accepted requests reach
 * the library with canonical credentials (`Authorization: Bearer <hs_token>`, no
 * `access_token` in the URL), so its own, looser check agrees. Library errors become JSON:
 * bad JSON 400 `M_NOT_JSON`, body over `maxBodyBytes` 413 `M_TOO_LARGE`, unknown route 404 /
 * wrong method 405 `M_UNRECOGNIZED` (Application Service API › Unknown routes), anything else
 * 500 `M_UNKNOWN`; never a stack trace or a path. Error responses close the connection.
 * A user or alias query handler that throws anything but an `AppserviceHttpError` answers
 * 500 `M_UNKNOWN` "Internal server error"; the error is logged here, once.
 *
 * @param lib matrix-appservice-bridge's module (passed in: the library is loaded lazily,
 *   after the crypto probe)
 * @throws Error when `homeserverToken` is empty; `listen()` throws (and closes the server)
 *   if the library no longer serves the front handler
 */
export function createHardenedAppService(lib: AppServiceLibrary, opts: HardenedAppServiceOptions): AppService {
  if (!opts.homeserverToken) throw new Error("the appservice hs_token is empty");
  const { AppserviceHttpError: HttpError } = lib;
  /** A query handler's failure as the library will send it: only deliberate HTTP errors keep their text. */
  const sanitize = (err: unknown): unknown =>
    err instanceof HttpError ? err : new HttpError({ errcode: "M_UNKNOWN", error: "Internal server error" }, 500);

  class HardenedAppService extends lib.AppService {
    #hsToken: string;
    readonly #routes: ExpressApp;
    readonly #front: RequestListener;

    constructor() {
      super({ homeserverToken: opts.homeserverToken, httpMaxSizeBytes: opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES });
      this.#hsToken = opts.homeserverToken;
      this.#routes = super.expressApp;
      this.#routes.disable("x-powered-by");
      const transactions = opts.transactions ? { receiver: opts.transactions, maxBodyBytes: opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES } : null;
      const unsubscribe = opts.unsubscribe ?? null;
      const media = opts.media ?? null;
      this.#front = (req, res) => handleRequest(req, res, this.#hsToken, this.#routes, transactions, unsubscribe, media);
      // `app` is what AppService.listen() serves (app-service.js:86-89); declared readonly in its typings.
      (this as unknown as { app: RequestListener }).app = this.#front;
      // Query handlers are assigned by the bridge ("Override this method"); keep them, guarded.
      // Logged here: the bridge logs alias query failures not at all, user query failures
      // without the error (its "Failed onUserQuery" line drops the Error argument).
      for (const name of ["onUserQuery", "onAliasQuery"] as const) {
        let handler: QueryHandler = this[name];
        const fail = (arg: string, err: unknown): Promise<never> => {
          if (!(err instanceof HttpError)) log.error("appservice query failed", { query: name, id: arg, ...errorFields(err) });
          return Promise.reject(sanitize(err));
        };
        const guarded: QueryHandler = (arg, callback) => {
          let result: PromiseLike<void> | null;
          try {
            result = handler.call(this, arg, callback);
          } catch (err) {
            return fail(arg, err);
          }
          return result && Promise.resolve(result).catch((err: unknown) => fail(arg, err));
        };
        Object.defineProperty(this, name, {
          configurable: true,
          enumerable: true,
          get: () => guarded,
          set: (fn: QueryHandler) => {
            handler = fn;
          },
        });
      }
    }

    /** The library's express app, where routes are added (matrix-appservice-bridge's `addAppServicePath`). */
    override get expressApp(): ExpressApp {
      return this.#routes;
    }

    /** Change the accepted token (library API); the front handler follows. */
    override setHomeserverToken(hsToken: string): void {
      if (!hsToken) throw new Error("the appservice hs_token is empty");
      super.setHomeserverToken(hsToken);
      this.#hsToken = hsToken;
    }

    /**
     * Start listening (library API), then make sure the server really calls the front
     * handler: a library upgrade that served its express app directly would silently bring
     * back the loose token check, so that fails closed instead.
     */
    override listen(port: number, hostname: string, backlog: number, callback?: () => void): Promise<void> | undefined {
      const started = super.listen(port, hostname, backlog, callback);
      const verify = async (): Promise<void> => {
        const server = (this as unknown as { server?: Server }).server;
        if (server && server.listeners("request").includes(this.#front)) return;
        if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
        throw new Error("matrix-appservice no longer serves AppService.app: the appservice token check cannot be installed");
      };
      if (started === undefined) {
        // Callback form: the server exists synchronously.
        void verify().catch((err: unknown) => {
          log.error("appservice listener closed: front handler not installed", errorFields(err));
        });
        return undefined;
      }
      return started.then(verify);
    }
  }

  return new HardenedAppService();
}

/** Where transactions go instead of the library, and their body limit in bytes. */
interface TransactionRoute {
  receiver: TransactionReceiver;
  maxBodyBytes: number;
}

/**
 * Authenticate, canonicalise, and hand the request to the library's express app; transactions
 * go to {@link handleTransaction} when a receiver is set.
 */
function handleRequest(
  req: IncomingMessage,
  res: ServerResponse,
  hsToken: string,
  routes: ExpressApp,
  transactions: TransactionRoute | null,
  unsubscribe: OneClickUnsubscribeRoute | null,
  media: MediaLinkRoute | null,
): void {
  let url: URL;
  try {
    url = new URL(req.url ?? "/", "http://appservice.invalid");
  } catch {
    reply(req, res, "/", { status: 400, errcode: "M_UNRECOGNIZED", error: "Malformed request target" });
    return;
  }
  const method = req.method ?? "GET";
  const isHealth = url.pathname === "/health" && (method === "GET" || method === "HEAD");
  if (unsubscribe && url.pathname.startsWith(UNSUBSCRIBE_PREFIX)) {
    void handleUnsubscribe(req, res, url.pathname.slice(UNSUBSCRIBE_PREFIX.length), unsubscribe).catch((err: unknown) => {
      log.error("one-click unsubscribe request failed", errorFields(err));
      sendText(res, 503, "The unsubscribe could not be done just now. Please try again later.\n", { "Retry-After": "60" });
    });
    return;
  }
  if (media && url.pathname.startsWith(MEDIA_PREFIX)) {
    void handleMedia(req, res, url.pathname.slice(MEDIA_PREFIX.length), media);
    return;
  }
  if (!isHealth) {
    const auth = checkAppserviceAuth(hsToken, { authorization: req.headersDistinct.authorization }, url.searchParams);
    if (!auth.ok) {
      const headers: Record<string, string> = auth.status === 401 ? { "WWW-Authenticate": 'Bearer realm="appservice"' } : {};
      reply(req, res, url.pathname, auth, headers);
      return;
    }
    // Canonical credentials for the library's own checks; the token leaves the URL (and its logs).
    req.headers.authorization = `Bearer ${hsToken}`;
    url.searchParams.delete("access_token");
  }
  const path = LEGACY_ROUTE.test(url.pathname) ? `/_matrix/app/v1${url.pathname}` : url.pathname;
  req.url = path + url.search;
  if (path === PING_ROUTE && method === "POST") {
    // Application Service API › "Pinging": the homeserver checks that it reaches us (after the
    // hs_token check above). The body (an optional transaction_id) needs no answer but `{}`.
    req.resume();
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end("{}");
    return;
  }
  const txn = transactions && method === "PUT" ? TRANSACTION_ROUTE.exec(path) : null;
  if (transactions && txn) {
    void handleTransaction(req, res, path, txn[1]!, transactions).catch((err: unknown) => {
      log.error("appservice transaction request failed", { path: path.slice(0, MAX_LOGGED_PATH), ...errorFields(err) });
      reply(req, res, path, { status: 500, errcode: "M_UNKNOWN", error: "Internal server error" });
    });
    return;
  }
  (routes as unknown as ExpressHandler)(req, res, (err?: unknown) => {
    reply(req, res, path, err === undefined || err === null ? unmatched(method, path) : fromLibraryError(err, method, path));
  });
}

/**
 * `PUT /_matrix/app/v1/transactions/{txnId}` (Application Service API › Pushing events): read
 * the JSON body (at most `maxBodyBytes`), have the receiver commit it, then answer 200 `{}`.
 * Errors: txn ID undecodable or longer than {@link MAX_TXN_ID_LENGTH} 400 `M_INVALID_PARAM`;
 * body as {@link readJsonBody}; not a transaction 400 `M_BAD_JSON`; commit failed 500
 * `M_UNKNOWN` (logged here, once, with the txn ID). The receiver's `afterResponse` runs once
 * the response is closed, whether or not the homeserver read it.
 */
async function handleTransaction(req: IncomingMessage, res: ServerResponse, path: string, encodedTxnId: string, route: TransactionRoute): Promise<void> {
  let txnId: string;
  try {
    txnId = decodeURIComponent(encodedTxnId);
  } catch {
    reply(req, res, path, { status: 400, errcode: "M_INVALID_PARAM", error: "Malformed transaction ID" });
    return;
  }
  if (!txnId || txnId.length > MAX_TXN_ID_LENGTH) {
    reply(req, res, path, { status: 400, errcode: "M_INVALID_PARAM", error: "Malformed transaction ID" });
    return;
  }
  const body = await readJsonBody(req, route.maxBodyBytes);
  if (!body.ok) {
    reply(req, res, path, body.error);
    return;
  }
  let recorded: RecordedTransaction;
  try {
    recorded = await route.receiver.record(txnId, body.value);
  } catch (err) {
    if (err instanceof TransactionBodyError) {
      reply(req, res, path, { status: 400, errcode: "M_BAD_JSON", error: "Request body is not an appservice transaction" });
      return;
    }
    log.error("appservice transaction not recorded", { txnId: txnId.slice(0, MAX_LOGGED_PATH), ...errorFields(err) });
    reply(req, res, path, { status: 500, errcode: "M_UNKNOWN", error: "Internal server error" });
    return;
  }
  let after = false;
  const afterResponse = () => {
    if (after) return;
    after = true;
    recorded.afterResponse();
  };
  res.once("close", afterResponse);
  if (res.destroyed) {
    afterResponse();
    return;
  }
  res.writeHead(200, { "Content-Type": "application/json", "Content-Length": "2", "Cache-Control": "no-store" });
  res.end("{}");
}

/** Path prefix of the one-click unsubscribe route. */
const UNSUBSCRIBE_PREFIX = "/unsubscribe/";

/** An unsubscribe token as it may appear in the path (base64url and dots; checked by the bridge). */
const UNSUBSCRIBE_TOKEN = /^[A-Za-z0-9_.-]{1,1024}$/;

/** Largest one-click POST body read, in bytes (RFC 8058 §3.2's body is one short key/value pair). */
const MAX_UNSUBSCRIBE_BODY_BYTES = 16_384;

/** The key/value pair of an RFC 8058 one-click POST (§3.2). */
const ONE_CLICK_KEY = "List-Unsubscribe";
const ONE_CLICK_VALUE = "One-Click";

/** Headers of every unsubscribe answer: not cached, not sniffed, no referrer, nothing else loaded. */
const UNSUBSCRIBE_HEADERS = {
  "Cache-Control": "no-store",
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
  "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
};

/** The page a GET shows: a button that POSTs the one-click body to the same URL. */
const UNSUBSCRIBE_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>Unsubscribe</title></head>
<body style="font-family:sans-serif;max-width:32em;margin:3em auto">
<h1>Unsubscribe</h1>
<p>Stop getting mail from this Matrix room at this address?</p>
<form method="post"><input type="hidden" name="${ONE_CLICK_KEY}" value="${ONE_CLICK_VALUE}"><button type="submit">Unsubscribe</button></form>
</body></html>
`;

/** Send a short answer (text, or the page) and close the connection; no cookies, no redirects. */
function sendText(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}, type = "text/plain; charset=utf-8", head = false): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(status, { ...UNSUBSCRIBE_HEADERS, ...headers, "Content-Type": type, "Content-Length": String(Buffer.byteLength(body)), Connection: "close" });
  res.end(head ? undefined : body);
}

/**
 * Whether a one-click POST body says `List-Unsubscribe=One-Click` (RFC 8058 §3.2: sent as
 * `application/x-www-form-urlencoded` or `multipart/form-data`).
 */
function isOneClickBody(contentType: string, body: Buffer): boolean {
  const type = contentType.split(";")[0]!.trim().toLowerCase();
  const text = body.toString("utf8");
  if (type === "multipart/form-data") {
    const boundary = /;\s*boundary\s*=\s*"?([^";]+)"?/i.exec(contentType)?.[1];
    if (!boundary) return false;
    return text.split(`--${boundary}`).some((part) => {
      const split = part.indexOf("\r\n\r\n");
      if (split === -1) return false;
      const head = part.slice(0, split);
      const value = part.slice(split + 4).replace(/\r\n$/, "");
      return /^content-disposition:\s*form-data;(?:.*;)?\s*name="List-Unsubscribe"\s*(?:;|$)/im.test(head) && value === ONE_CLICK_VALUE;
    });
  }
  // application/x-www-form-urlencoded, also when the type is missing (some senders omit it).
  return new URLSearchParams(text).getAll(ONE_CLICK_KEY).includes(ONE_CLICK_VALUE);
}

/** Read a request body of at most `limit` bytes; null when larger or cut off. */
function readSmallBody(req: IncomingMessage, limit: number): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (result: Buffer | null) => {
      if (done) return;
      done = true;
      resolve(result);
    };
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.pause();
        finish(null);
        return;
      }
      chunks.push(chunk);
    });
    req.once("end", () => finish(Buffer.concat(chunks, size)));
    req.on("error", () => finish(null));
    req.once("close", () => finish(null));
  });
}

/**
 * `/unsubscribe/<token>` (RFC 8058), with no `hs_token`, cookies or redirects:
 * - `POST` with `List-Unsubscribe=One-Click` (§3.2): the bridge unsubscribes; 200 and a line
 *   of text. Without that body: 400. Body over {@link MAX_UNSUBSCRIBE_BODY_BYTES}: 413.
 * - `GET`/`HEAD`: changes nothing (link scanners fetch URLs, §3.2); 200 and a small page whose
 *   button POSTs the one-click body.
 * - a token the bridge did not make: 404 and a line of text, logged once here.
 * - other methods: 405. A failure of the bridge: 503 (the caller logs it).
 */
async function handleUnsubscribe(req: IncomingMessage, res: ServerResponse, token: string, route: OneClickUnsubscribeRoute): Promise<void> {
  const method = req.method ?? "GET";
  const unknown = () => {
    log.warn("one-click unsubscribe with a token the bridge did not make", { method, remote: req.socket.remoteAddress });
    sendText(res, 404, "This unsubscribe link is not valid.\n", {}, "text/plain; charset=utf-8", method === "HEAD");
  };
  if (method !== "GET" && method !== "HEAD" && method !== "POST") {
    req.resume();
    sendText(res, 405, "Use POST to unsubscribe.\n", { Allow: "GET, HEAD, POST" });
    return;
  }
  if (!UNSUBSCRIBE_TOKEN.test(token)) {
    req.resume();
    unknown();
    return;
  }
  if (method !== "POST") {
    req.resume();
    if (!route.verify(token)) unknown();
    else sendText(res, 200, UNSUBSCRIBE_PAGE, {}, "text/html; charset=utf-8", method === "HEAD");
    return;
  }
  const body = Number(req.headers["content-length"] ?? "0") > MAX_UNSUBSCRIBE_BODY_BYTES ? null : await readSmallBody(req, MAX_UNSUBSCRIBE_BODY_BYTES);
  if (body === null) {
    sendText(res, 413, "Request body too large.\n");
    return;
  }
  if (!isOneClickBody(req.headers["content-type"] ?? "", body)) {
    sendText(res, 400, `A one-click unsubscribe is a POST of ${ONE_CLICK_KEY}=${ONE_CLICK_VALUE} (RFC 8058).\n`);
    return;
  }
  if (!(await route.unsubscribe(token))) {
    unknown();
    return;
  }
  sendText(res, 200, "You are unsubscribed: this address gets no more mail from this Matrix room.\n");
}

/** Path prefix of the media link route. */
const MEDIA_PREFIX = "/media/";

/** A media token as it may appear in the path (base64url and a dot; checked by the bridge). */
const MEDIA_TOKEN = /^[A-Za-z0-9_.-]{1,1024}$/;

/** Longest percent-encoded file name read from a media path, in characters. */
const MAX_MEDIA_NAME = 2048;

/**
 * Headers of every media answer: no sniffing (a served HTML or SVG file stays a download), and
 * `Content-Security-Policy: sandbox` (CSP Level 3 §6.3.2): should a browser render it anyway,
 * it runs in an opaque origin with no scripts, forms or plugins. Nothing cached by shared caches,
 * no referrer.
 */
const MEDIA_HEADERS = {
  "Cache-Control": "private, no-store",
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
  "Content-Security-Policy": "sandbox; default-src 'none'",
};

/** RFC 8187 §3.2.1 `attr-char`: what stays unencoded in an `ext-value`. */
const ATTR_CHAR = /[A-Za-z0-9!#$&+\-.^_`|~]/;

/**
 * A `Content-Disposition: attachment` header value for a file name (RFC 6266 §4.1, §4.3): a
 * quoted `filename` fallback in printable ASCII (anything else, `"` and `\` as `_`), then
 * `filename*=UTF-8''<name>` percent-encoded per RFC 8187 (which obsoletes RFC 5987) §3.2,
 * which recipients that know it prefer.
 */
export function attachmentDisposition(name: string): string {
  const fallback = name.replace(/[^\x20-\x7e]|["\\]/g, "_");
  const encoded = [...Buffer.from(name, "utf8")].map((b) => (b < 0x80 && ATTR_CHAR.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, "0")}`)).join("");
  return `attachment; filename="${fallback}"; filename*=UTF-8''${encoded}`;
}

/**
 * `GET|HEAD /media/<token>/<name>`: a file too large to attach, with no `hs_token`, cookies or
 * redirects (mail readers follow the link through the admin's reverse proxy).
 * - a malformed path, or a token the bridge did not make for that name (forged, tampered,
 *   renamed, expired): 404 and a line of text, logged once here.
 * - otherwise the file, streamed from the homeserver's authenticated media download (never
 *   held in memory whole): its `Content-Type` (`application/octet-stream` when it sent none) and
 *   `Content-Length`, `Content-Disposition: attachment` with the name from the path
 *   ({@link attachmentDisposition}), and {@link MEDIA_HEADERS}. HEAD sends the headers only.
 * - the homeserver refuses or fails before the body: 502 and a line of text, logged once here.
 *   A failure mid-body cuts the response short (logged once; a client disconnecting is not).
 * - other methods: 405.
 * Never throws.
 */
async function handleMedia(req: IncomingMessage, res: ServerResponse, rest: string, route: MediaLinkRoute): Promise<void> {
  const method = req.method ?? "GET";
  const head = method === "HEAD";
  req.resume();
  if (method !== "GET" && !head) {
    sendMedia(res, 405, "Use GET to download this file.\n", { Allow: "GET, HEAD" });
    return;
  }
  const slash = rest.indexOf("/");
  const token = slash === -1 ? rest : rest.slice(0, slash);
  const encodedName = slash === -1 ? "" : rest.slice(slash + 1);
  let name: string | null = null;
  if (encodedName && encodedName.length <= MAX_MEDIA_NAME) {
    try {
      name = decodeURIComponent(encodedName);
    } catch {
      name = null;
    }
  }
  let mxc: string | null;
  try {
    mxc = name !== null && MEDIA_TOKEN.test(token) ? route.resolve(token, name) : null;
    if (mxc === null) log.warn("media link with a token the bridge did not make, or expired", { method, remote: req.socket.remoteAddress });
  } catch (err) {
    // A bug of the bridge, not the reader's: logged as such, answered like a bad link.
    log.error("media link could not be checked", errorFields(err));
    mxc = null;
  }
  if (mxc === null) {
    sendMedia(res, 404, "This link is not valid, or it has expired.\n", {}, head);
    return;
  }
  let content: MediaContent;
  try {
    content = await route.open(mxc);
  } catch (err) {
    log.warn("media link: the homeserver did not serve the file", { mxc, ...errorFields(err) });
    sendMedia(res, 502, "The file could not be fetched from the Matrix homeserver just now. Please try again later.\n", { "Retry-After": "60" }, head);
    return;
  }
  const headers: Record<string, string> = {
    ...MEDIA_HEADERS,
    "Content-Type": content.contentType ?? "application/octet-stream",
    "Content-Disposition": attachmentDisposition(name!),
  };
  if (content.contentLength !== null) headers["Content-Length"] = String(content.contentLength);
  if (head || res.destroyed) {
    await content.body.cancel().catch(() => undefined); // nothing to read: the reason is moot
    if (!res.destroyed) {
      res.writeHead(200, headers);
      res.end();
    }
    return;
  }
  res.writeHead(200, headers);
  try {
    await pipeline(Readable.fromWeb(content.body), res);
  } catch (err) {
    // The reader going away is not the homeserver's failure (pipeline has cancelled the download).
    if ((err as { code?: unknown }).code === "ERR_STREAM_PREMATURE_CLOSE" && !res.writableFinished) {
      log.debug("media link: the reader left before the end", { mxc });
      return;
    }
    log.warn("media link: the download broke off", { mxc, ...errorFields(err) });
    res.destroy();
  }
}

/** A short text answer of the media route, closing the connection. */
function sendMedia(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}, head = false): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(status, { ...MEDIA_HEADERS, ...headers, "Content-Type": "text/plain; charset=utf-8", "Content-Length": String(Buffer.byteLength(body)), Connection: "close" });
  res.end(head ? undefined : body);
}

/** A request body read as JSON, or the Matrix error to answer. */
type JsonBody = { ok: true; value: unknown } | { ok: false; error: MatrixHttpError };

/**
 * Read a request body as JSON, the way matrix-appservice's body-parser would refuse it:
 * `Content-Encoding` other than identity, or a charset other than UTF-8 415 `M_UNRECOGNIZED`;
 * more than `limit` bytes (announced or read) 413 `M_TOO_LARGE` (reading stops; the error
 * answer closes the connection); a failed read 400 `M_UNKNOWN`; not JSON 400 `M_NOT_JSON`.
 * The `Content-Type` is not required to say JSON: the route's body is JSON by definition.
 * @param limit largest body in bytes
 */
async function readJsonBody(req: IncomingMessage, limit: number): Promise<JsonBody> {
  const encoding = (req.headers["content-encoding"] ?? "identity").trim().toLowerCase();
  if (encoding !== "identity") return { ok: false, error: { status: 415, errcode: "M_UNRECOGNIZED", error: "Unsupported request body encoding" } };
  const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(req.headers["content-type"] ?? "")?.[1]?.toLowerCase();
  if (charset !== undefined && charset !== "utf-8" && charset !== "utf8") {
    return { ok: false, error: { status: 415, errcode: "M_UNRECOGNIZED", error: "Unsupported request body encoding" } };
  }
  const tooLarge: JsonBody = { ok: false, error: { status: 413, errcode: "M_TOO_LARGE", error: "Request body too large" } };
  const announced = Number(req.headers["content-length"] ?? "0");
  if (announced > limit) return tooLarge;
  const read = await new Promise<Buffer | JsonBody>((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const finish = (result: Buffer | JsonBody) => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("close", onFailure);
      // The error listener stays: a reset after the answer (e.g. following a 413) must not
      // become an uncaught 'error'; by then the result is settled and it changes nothing.
      resolve(result);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        // Stop reading; the error answer closes the connection.
        req.pause();
        finish(tooLarge);
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => finish(Buffer.concat(chunks, size));
    const onFailure = () => finish({ ok: false, error: { status: 400, errcode: "M_UNKNOWN", error: "Request body could not be read" } });
    req.on("data", onData);
    req.once("end", onEnd);
    req.on("error", onFailure);
    req.once("close", onFailure);
  });
  if (!Buffer.isBuffer(read)) return read;
  try {
    return { ok: true, value: JSON.parse(read.toString("utf8").replace(/^\uFEFF/, "")) as unknown };
  } catch {
    return { ok: false, error: { status: 400, errcode: "M_NOT_JSON", error: "Request body is not valid JSON" } };
  }
}

/** 405 for a known path with another method, else 404 (Application Service API › Unknown routes). */
function unmatched(method: string, path: string): MatrixHttpError & { allow?: string } {
  const known = KNOWN_ROUTES.find((r) => r.path.test(path));
  if (known && !known.methods.includes(method)) {
    return { status: 405, errcode: "M_UNRECOGNIZED", error: "Unsupported method for this endpoint", allow: known.methods.join(", ") };
  }
  return { status: 404, errcode: "M_UNRECOGNIZED", error: "Unrecognized request" };
}

/**
 * The JSON answer for an error passed on by the library's express app: body-parser's
 * (http-errors with a `type`) keep their 4xx status with a constant message; anything else
 * is a 500, logged here with its message (the client sees none of it).
 */
function fromLibraryError(err: unknown, method: string, path: string): MatrixHttpError {
  const e = (err ?? {}) as { status?: unknown; statusCode?: unknown; type?: unknown };
  const status = typeof e.status === "number" ? e.status : typeof e.statusCode === "number" ? e.statusCode : 500;
  switch (e.type) {
    case "entity.too.large":
      return { status: 413, errcode: "M_TOO_LARGE", error: "Request body too large" };
    case "entity.parse.failed":
      return { status: 400, errcode: "M_NOT_JSON", error: "Request body is not valid JSON" };
    case "charset.unsupported":
    case "encoding.unsupported":
      return { status: 415, errcode: "M_UNRECOGNIZED", error: "Unsupported request body encoding" };
    case "request.aborted":
    case "request.size.invalid":
    case "stream.encoding.set":
    case "stream.not.readable":
      return { status: 400, errcode: "M_UNKNOWN", error: "Request body could not be read" };
  }
  if (status >= 400 && status < 500) return { status, errcode: "M_UNKNOWN", error: "Bad request" };
  log.error("appservice request failed", { method, path: path.slice(0, MAX_LOGGED_PATH), ...errorFields(err) });
  return { status: 500, errcode: "M_UNKNOWN", error: "Internal server error" };
}

/** Send a Matrix JSON error and close the connection (the request body may be unread). */
function reply(req: IncomingMessage, res: ServerResponse, path: string, e: MatrixHttpError & { allow?: string }, headers: Record<string, string> = {}): void {
  if (e.status < 500) {
    log.warn("appservice request refused", {
      method: req.method,
      path: path.slice(0, MAX_LOGGED_PATH),
      status: e.status,
      errcode: e.errcode,
      reason: e.error,
      remote: req.socket.remoteAddress,
    });
  }
  if (res.headersSent) {
    // Too late for a status line: the response is cut short instead.
    res.destroy();
    return;
  }
  const body = JSON.stringify({ errcode: e.errcode, error: e.error });
  res.writeHead(e.status, {
    ...headers,
    ...(e.allow ? { Allow: e.allow } : {}),
    "Content-Type": "application/json",
    "Content-Length": String(Buffer.byteLength(body)),
    "Cache-Control": "no-store",
    Connection: "close",
  });
  res.end(body);
}
