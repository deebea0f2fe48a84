/**
 * `admin`: the admin HTTP API from the command line. It calls the RUNNING bridge's API
 * (`admin_api` config section: address, port and token), so every change goes through the same
 * code as an HTTP client's, and prints the API's JSON answer.
 *
 *   admin domains list | add DOMAIN | remove DOMAIN
 *   admin mailboxes list | set ROOM_ID LOCALPART | remove ROOM_ID
 *   admin aliases list [--domain D] [--target T] | add ADDRESS TARGET | remove ADDRESS [TARGET]
 *   admin messages message-id|address|room VALUE [--limit N]
 *   admin queue list inbound|outbound [--state S] [--limit N] | show|retry|drop inbound|outbound ID
 *   admin inject --from ADDRESS --to ADDRESS[,ADDRESS…] --subject TEXT --text TEXT [--html HTML]
 *
 * docs/admin-api.md has the routes behind each.
 */
import type { BridgeConfig } from "../config/schema.ts";
import { AdminTokenError, loadAdminToken } from "../admin/auth.ts";

/** The options of the command line the `admin` command takes (as `parseArgs` gives them). */
export interface AdminOptions {
  state?: string | undefined;
  limit?: string | undefined;
  domain?: string | undefined;
  target?: string | undefined;
  from?: string | undefined;
  to?: string | undefined;
  subject?: string | undefined;
  text?: string | undefined;
  html?: string | undefined;
}

/**
 * An `admin` command that cannot be done: `usage` (exit code 2: the command line is wrong) or
 * a failure (exit code 1: the API refused, with its message, or cannot be reached).
 */
export class AdminCommandError extends Error {
  readonly usage: boolean;
  constructor(message: string, usage: boolean) {
    super(message);
    this.name = "AdminCommandError";
    this.usage = usage;
  }
}

/** The command lines, one per line, for `--help` and usage errors. */
export const ADMIN_USAGE = [
  "admin domains list | add DOMAIN | remove DOMAIN",
  "admin mailboxes list | set ROOM_ID LOCALPART | remove ROOM_ID",
  "admin aliases list [--domain D] [--target T] | add ADDRESS TARGET | remove ADDRESS [TARGET]",
  "admin messages message-id|address|room VALUE [--limit N]",
  "admin queue list inbound|outbound [--state S] [--limit N] | show|retry|drop inbound|outbound ID",
  "admin inject --from ADDRESS --to ADDRESS[,ADDRESS...] --subject TEXT --text TEXT [--html HTML]",
];

/** One API call. */
interface Call {
  method: "GET" | "POST" | "PUT" | "DELETE";
  path: string;
  query?: Record<string, string | undefined>;
  body?: unknown;
}

function usage(message: string): AdminCommandError {
  return new AdminCommandError(`admin: ${message}; usage:\n  ${ADMIN_USAGE.join("\n  ")}`, true);
}

function seg(value: string): string {
  return encodeURIComponent(value);
}

/**
 * The API call of a command line (the words after `admin`), checked without the network.
 * @throws AdminCommandError (usage) naming what is wrong
 */
export function parseAdminCommand(args: string[], opts: AdminOptions): Call {
  const [resource, action, ...rest] = args;
  const want = (n: number, names: string): void => {
    if (rest.length < n) throw usage(`admin ${resource} ${action} needs ${names}`);
    if (rest.length > n) throw usage(`admin ${resource} ${action}: unexpected "${rest[n]}"`);
  };
  const only = (allowed: (keyof AdminOptions)[]): void => {
    for (const [key, value] of Object.entries(opts)) {
      if (value !== undefined && !allowed.includes(key as keyof AdminOptions)) throw usage(`--${key} does not go with admin ${resource} ${action ?? ""}`.trimEnd());
    }
  };
  if (resource === undefined) throw usage("which resource? domains, mailboxes, aliases, messages, queue or inject");
  if (resource === "inject") {
    if (action !== undefined) throw usage(`admin inject takes options only, not "${action}"`);
    only(["from", "to", "subject", "text", "html"]);
    if (!opts.from || !opts.to || opts.subject === undefined || opts.text === undefined) throw usage("admin inject needs --from, --to, --subject and --text");
    const to = opts.to.split(",").map((a) => a.trim()).filter(Boolean);
    return { method: "POST", path: "/admin/v1/inject", body: { from: opts.from, to, subject: opts.subject, text: opts.text, ...(opts.html !== undefined ? { html: opts.html } : {}) } };
  }
  switch (`${resource} ${action ?? ""}`) {
    case "domains list":
      only([]);
      want(0, "nothing more");
      return { method: "GET", path: "/admin/v1/domains" };
    case "domains add":
      only([]);
      want(1, "DOMAIN");
      return { method: "POST", path: "/admin/v1/domains", body: { domain: rest[0] } };
    case "domains remove":
      only([]);
      want(1, "DOMAIN");
      return { method: "DELETE", path: `/admin/v1/domains/${seg(rest[0]!)}` };
    case "mailboxes list":
      only([]);
      want(0, "nothing more");
      return { method: "GET", path: "/admin/v1/mailboxes" };
    case "mailboxes set":
      only([]);
      want(2, "ROOM_ID LOCALPART");
      return { method: "PUT", path: `/admin/v1/mailboxes/${seg(rest[0]!)}`, body: { localpart: rest[1] } };
    case "mailboxes remove":
      only([]);
      want(1, "ROOM_ID");
      return { method: "DELETE", path: `/admin/v1/mailboxes/${seg(rest[0]!)}` };
    case "aliases list":
      only(["domain", "target"]);
      want(0, "nothing more");
      return { method: "GET", path: "/admin/v1/aliases", query: { domain: opts.domain, target: opts.target } };
    case "aliases add":
      only([]);
      want(2, "ADDRESS TARGET");
      return { method: "POST", path: "/admin/v1/aliases", body: { address: rest[0], target: rest[1] } };
    case "aliases remove":
      only([]);
      if (rest.length === 0 || rest.length > 2) throw usage(rest.length === 0 ? "admin aliases remove needs ADDRESS [TARGET]" : `admin aliases remove: unexpected "${rest[2]}"`);
      return { method: "DELETE", path: `/admin/v1/aliases/${seg(rest[0]!)}`, query: { target: rest[1] } };
    case "messages message-id":
    case "messages address":
    case "messages room": {
      only(["limit"]);
      want(1, "VALUE");
      const key = action === "message-id" ? "message_id" : action === "room" ? "room_id" : "address";
      return { method: "GET", path: "/admin/v1/messages", query: { [key]: rest[0], limit: opts.limit } };
    }
    case "queue list":
      only(["state", "limit"]);
      want(1, "inbound or outbound");
      return { method: "GET", path: `/admin/v1/queue/${direction(rest[0]!)}`, query: { state: opts.state, limit: opts.limit } };
    case "queue show":
    case "queue retry":
    case "queue drop": {
      only([]);
      want(2, "inbound|outbound ID");
      const base = `/admin/v1/queue/${direction(rest[0]!)}/${seg(rest[1]!)}`;
      if (action === "show") return { method: "GET", path: base };
      return action === "retry" ? { method: "POST", path: `${base}/retry` } : { method: "DELETE", path: base };
    }
    default:
      throw usage(action === undefined ? `admin ${resource} needs an action` : `unknown command "admin ${resource} ${action}"`);
  }
}

function direction(word: string): string {
  if (word === "inbound" || word === "outbound") return word;
  throw usage(`"${word}" is neither inbound nor outbound`);
}

/**
 * The admin API's base URL from the config: `http://<bind_address>:<port>`, a wildcard address
 * reached on loopback.
 */
export function adminApiUrl(config: Pick<BridgeConfig, "admin_api">): string {
  const { bind_address: address, port } = config.admin_api;
  const host = address === "0.0.0.0" || address === "" ? "127.0.0.1" : address === "::" ? "::1" : address;
  return `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/**
 * Run one `admin` command: check the command line, load the config, call the API, print its
 * JSON answer (indented) to `out`.
 * @param loadConfig reads the config (called after the command line was checked)
 * @throws AdminCommandError: usage for a wrong command line; a failure when the API is off in
 *   the config, cannot be reached, or answers with an error (its `error` message);
 *   ConfigError from `loadConfig`
 */
export async function adminCommand(
  args: string[],
  opts: AdminOptions,
  loadConfig: () => BridgeConfig,
  out: (text: string) => void = (text) => process.stdout.write(text),
): Promise<void> {
  const call = parseAdminCommand(args, opts);
  const config = loadConfig();
  if (!config.admin_api.enabled) throw new AdminCommandError("admin: admin_api.enabled is false in the config; the admin command talks to the running bridge's admin API", false);
  let token: string;
  try {
    token = loadAdminToken(config.admin_api);
  } catch (err) {
    if (err instanceof AdminTokenError) throw new AdminCommandError(`admin: ${err.message}`, false);
    throw err;
  }
  const base = adminApiUrl(config);
  const url = new URL(call.path, base);
  for (const [key, value] of Object.entries(call.query ?? {})) if (value !== undefined) url.searchParams.set(key, value);
  let res: Response;
  try {
    res = await fetch(url, {
      method: call.method,
      headers: { authorization: `Bearer ${token}`, ...(call.body !== undefined ? { "content-type": "application/json" } : {}) },
      ...(call.body !== undefined ? { body: JSON.stringify(call.body) } : {}),
      signal: AbortSignal.timeout(30_000),
    });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    throw new AdminCommandError(`admin: cannot reach the admin API at ${base} (${cause?.code ?? cause?.message ?? (err as Error).message}); is the bridge running with admin_api.enabled?`, false);
  }
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new AdminCommandError(`admin: the admin API at ${base} answered ${res.status} with something that is not JSON`, false);
  }
  if (!res.ok) {
    const e = body as { errcode?: unknown; error?: unknown };
    throw new AdminCommandError(`admin: ${String(e.error ?? `HTTP ${res.status}`)} (${res.status} ${String(e.errcode ?? "")})`.replace(/ \)$/, ")"), false);
  }
  out(JSON.stringify(body, null, 2) + "\n");
}
