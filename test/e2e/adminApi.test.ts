/**
 * End to end, the admin API (docs/admin-api.md) of a running bridge (real Synapse, SQLite
 * store, real SMTP on loopback): every route refuses a request without the token and with a
 * wrong one (401, nothing changed); with the token each route answers and acts: the message
 * log finds a mail sent through SMTP by its Message-ID, address and room; retry and drop change
 * the queue rows; an injected mail is posted into Matrix by the sender's unverified ghost, as a
 * Matrix user sees it; domains, room mailboxes and aliases are changed (an alias then takes
 * mail over SMTP). Then the `admin` command against the same bridge.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, validateConfig } from "../../src/config/load.ts";
import { checkBearer } from "../../src/admin/auth.ts";
import { parse as parseYaml } from "yaml";
import { ROUTES as API_ROUTES } from "../../src/admin/routes.ts";
import { startEnv, MAIL_DOMAIN, type E2eEnv } from "./env.ts";
import { freePort } from "../harness/ports.ts";
import { newInbound } from "../harness/rows.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";

const TOKEN_ENV = "MEB_E2E_ADMIN_TOKEN";
const TOKEN = randomBytes(32).toString("hex");
const BOT = "@emailbot:localhost";

/** Every route, with a path and body good enough to reach its handler. */
const ROUTES: { method: string; path: string; body?: unknown }[] = [
  { method: "GET", path: "/admin/v1/domains" },
  { method: "POST", path: "/admin/v1/domains", body: { domain: "sneaky.test" } },
  { method: "DELETE", path: `/admin/v1/domains/${MAIL_DOMAIN}` },
  { method: "GET", path: "/admin/v1/mailboxes" },
  { method: "PUT", path: "/admin/v1/mailboxes/!x:localhost", body: { localpart: "sneaky" } },
  { method: "DELETE", path: "/admin/v1/mailboxes/!x:localhost" },
  { method: "GET", path: "/admin/v1/aliases" },
  { method: "POST", path: "/admin/v1/aliases", body: { address: `sneaky@${MAIL_DOMAIN}`, target: "@erin:localhost" } },
  { method: "DELETE", path: `/admin/v1/aliases/sneaky@${MAIL_DOMAIN}` },
  { method: "GET", path: "/admin/v1/messages?address=grace@example.org" },
  { method: "GET", path: "/admin/v1/queue/inbound" },
  { method: "GET", path: "/admin/v1/queue/outbound" },
  { method: "GET", path: "/admin/v1/queue/inbound/1" },
  { method: "GET", path: "/admin/v1/queue/inbound/1/raw" },
  { method: "POST", path: "/admin/v1/queue/inbound/1/retry" },
  { method: "DELETE", path: "/admin/v1/queue/inbound/1" },
  { method: "POST", path: "/admin/v1/queue/outbound/1/retry" },
  { method: "DELETE", path: "/admin/v1/queue/outbound/1" },
  { method: "POST", path: "/admin/v1/inject", body: { from: "eve@example.org", to: [`erin@${MAIL_DOMAIN}`], subject: "x", text: "x" } },
];

/** Run the real CLI (without blocking: the bridge runs in this process); never rejects: exit status, stdout and stderr. */
function cli(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  return new Promise((resolve) => {
    execFile(process.execPath, [new URL("../../src/main.ts", import.meta.url).pathname, ...args], { encoding: "utf8", env }, (err, stdout, stderr) => {
      resolve({ status: err ? (typeof err.code === "number" ? err.code : null) : 0, stdout, stderr });
    });
  });
}

describe("admin API without a bridge: description, config, token check", () => {
  it("docs/admin-api.yaml describes exactly the routes the API serves, and the test below covers each", () => {
    const spec = parseYaml(readFileSync(new URL("../../docs/admin-api.yaml", import.meta.url), "utf8")) as { openapi: string; paths: Record<string, Record<string, unknown>> };
    assert.equal(spec.openapi, "3.1.0");
    const described = Object.entries(spec.paths).flatMap(([path, ops]) => Object.keys(ops).filter((k) => k !== "parameters").map((m) => `${m.toUpperCase()} ${path}`));
    const served = API_ROUTES.map((r) => `${r.method} ${r.path}`);
    assert.deepEqual([...described].sort(), [...served].sort());
    const pattern = (path: string): RegExp => new RegExp(`^${path.replace(/\{[a-z_]+\}/g, "[^/]+")}$`);
    for (const r of API_ROUTES) {
      assert.ok(ROUTES.some((t) => t.method === r.method && pattern(r.path).test(t.path.split("?")[0]!)), `the 401 test covers ${r.method} ${r.path}`);
    }
  });

  it("the config names the admin_api key and the file or variable when the token is missing or unusable", () => {
    const dir = mkdtempSync(join(tmpdir(), "meb-admin-"));
    const base = {
      homeserver: { url: "http://127.0.0.1:8008", domain: "hs.example" },
      appservice: { url: "http://127.0.0.1:8090" },
      mail: { domain: "bridge.example" },
      smtp: { hostname: "mx.bridge.example" },
    };
    const load = (adminApi: Record<string, unknown>, env: NodeJS.ProcessEnv = {}) => validateConfig({ ...base, admin_api: adminApi }, "c.yaml", dir, env);
    assert.equal(load({}).admin_api.enabled, false, "off by default; no token needed then");
    assert.throws(() => load({ enabled: true }), (e: ConfigError) => e instanceof ConfigError && e.key === "admin_api.token_file" && /or admin_api\.token_env is required/.test(e.message));
    assert.throws(() => load({ enabled: true, token_file: "missing.token" }), /c\.yaml: admin_api\.token_file: file .*missing\.token cannot be read \(ENOENT\)/);
    writeFileSync(join(dir, "short.token"), "abc\n");
    assert.throws(() => load({ enabled: true, token_file: "short.token" }), /admin_api\.token_file: file .*short\.token has 3 characters; at least 32/);
    assert.throws(() => load({ enabled: true, token_env: "MEB_NOPE" }), /admin_api\.token_env: environment variable MEB_NOPE is not set/);
    assert.throws(() => load({ enabled: true, token_env: "T", token_file: "x" }, { T: TOKEN }), /admin_api\.token_env: must not be set together with admin_api\.token_file/);
    writeFileSync(join(dir, "good.token"), `  ${TOKEN}\n`);
    assert.equal(load({ enabled: true, token_file: "good.token" }).admin_api.token_file, join(dir, "good.token"), "resolved against the config's folder");
    assert.equal(load({ enabled: true, token_env: "T" }, { T: TOKEN }).admin_api.token_env, "T");
  });

  it("the bearer check: missing, wrong (also a prefix or a longer token), right", () => {
    assert.equal(checkBearer(undefined, TOKEN), "missing");
    assert.equal(checkBearer(`Basic ${TOKEN}`, TOKEN), "missing");
    assert.equal(checkBearer("Bearer ", TOKEN), "missing");
    assert.equal(checkBearer(`Bearer ${TOKEN.slice(0, 10)}`, TOKEN), "wrong");
    assert.equal(checkBearer(`Bearer ${TOKEN}x`, TOKEN), "wrong");
    assert.equal(checkBearer(`Bearer ${TOKEN}`, TOKEN), "ok");
    assert.equal(checkBearer(`bearer  ${TOKEN}`, TOKEN), "ok", "the scheme is case-insensitive (RFC 7235 §2.1)");
  });
});

describe("admin API end to end", () => {
  let env: E2eEnv;
  let base: string;
  let erin: MatrixTestClient;
  /** Erin's DM portal with grace@example.org, made by the mail sent in `before`. */
  let dmRoom: string;
  const messageId = `log-${randomBytes(6).toString("hex")}@example.org`;

  const api = async (method: string, path: string, body?: unknown, token: string | null = TOKEN): Promise<{ status: number; json: Record<string, unknown>; text: string }> => {
    const res = await fetch(base + path, {
      method,
      headers: { ...(token !== null ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { "content-type": "application/json" } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    let json: Record<string, unknown> = {};
    if (res.headers.get("content-type") === "application/json") json = JSON.parse(text) as Record<string, unknown>;
    return { status: res.status, json, text };
  };
  const until = async (what: string, check: () => Promise<boolean>): Promise<void> => {
    for (let i = 0; i < 300; i++) {
      if (await check()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.fail(`timed out waiting for ${what}`);
  };

  before(async () => {
    process.env[TOKEN_ENV] = TOKEN;
    const port = await freePort();
    env = await startEnv("sqlite", { config: { admin_api: { enabled: true, bind_address: "127.0.0.1", port, token_env: TOKEN_ENV } } });
    assert.equal(env.bridge.adminPort, port);
    base = `http://127.0.0.1:${port}`;
    // A mail through SMTP: the message log and the queue have it.
    erin = await env.synapse.registerUser("erin", { displayName: "Erin" });
    assert.match(await env.sendMail({ from: '"Grace" <grace@example.org>', to: `erin@${MAIL_DOMAIN}`, subject: "Logged", text: "Find me", messageId: `<${messageId}>` }), /^250/);
    const ghost = "@email_grace=40example.org:localhost";
    dmRoom = await erin.waitForInvite(30_000, (i) => i.inviter === ghost);
    await erin.join(dmRoom);
    await erin.waitForEvent(dmRoom, (e) => e.sender === ghost && String(e.content.body).includes("Find me"));
  });
  after(async () => {
    await env?.stop();
    delete process.env[TOKEN_ENV];
  });

  it("every route answers 401 without the token and with a wrong one, and changes nothing", async () => {
    const domains = await env.bridge.addressing.listDomains();
    const inbound = await env.bridge.store.listInbound(null, 100);
    for (const r of ROUTES) {
      const none = await api(r.method, r.path, r.body, null);
      assert.equal(none.status, 401, `${r.method} ${r.path} without a token`);
      assert.equal(none.json.errcode, "M_MISSING_TOKEN", `${r.method} ${r.path}`);
      assert.equal(typeof none.json.error, "string");
      const wrong = await api(r.method, r.path, r.body, TOKEN.replace(/.$/, (c) => (c === "0" ? "1" : "0")));
      assert.equal(wrong.status, 401, `${r.method} ${r.path} with a wrong token`);
      assert.equal(wrong.json.errcode, "M_UNKNOWN_TOKEN", `${r.method} ${r.path}`);
      assert.doesNotMatch(wrong.text, /at \w+ \(|\.ts:\d+/, "no stack trace");
    }
    assert.equal((await api("GET", "/admin/v1/domains", undefined, "short")).status, 401);
    assert.deepEqual(await env.bridge.addressing.listDomains(), domains, "no domain changed");
    assert.deepEqual((await env.bridge.store.listInbound(null, 100)).map((r) => [r.id, r.state]), inbound.map((r) => [r.id, r.state]), "no queue row changed");
    // With the token, an unknown route or method is a clear 404/405, not a crash.
    const unknown = await api("GET", "/admin/v1/nothing");
    assert.equal(unknown.status, 404);
    assert.equal(unknown.json.errcode, "M_UNRECOGNIZED");
    assert.equal((await api("PATCH", "/admin/v1/domains")).status, 405);
  });

  it("the message log finds the SMTP mail by Message-ID, sender, recipient and room", async () => {
    const byId = await api("GET", `/admin/v1/messages?message_id=${encodeURIComponent(`<${messageId}>`)}`);
    assert.equal(byId.status, 200);
    const [m] = byId.json.messages as Record<string, unknown>[];
    assert.ok(m, "found by Message-ID");
    assert.equal(m.message_id, messageId);
    assert.equal(m.room_id, dmRoom);
    assert.equal(m.direction, "inbound");
    assert.equal(m.sender, "grace@example.org");
    assert.equal(m.subject, "Logged");
    const ids = async (query: string): Promise<unknown[]> => {
      const res = await api("GET", `/admin/v1/messages?${query}`);
      assert.equal(res.status, 200, query);
      return (res.json.messages as Record<string, unknown>[]).map((x) => x.message_id);
    };
    assert.ok((await ids("address=grace@example.org")).includes(messageId), "by sender");
    assert.ok((await ids(`address=erin@${MAIL_DOMAIN}`)).includes(messageId), "by recipient");
    assert.ok((await ids(`room_id=${encodeURIComponent(dmRoom)}`)).includes(messageId), "by room");
    assert.deepEqual(await ids("address=nobody@example.org"), []);
    const none = await api("GET", "/admin/v1/messages");
    assert.equal(none.status, 400);
    assert.equal(none.json.errcode, "M_MISSING_PARAM");
    assert.equal((await api("GET", "/admin/v1/messages?address=a@b.c&room_id=!x:y")).status, 400);
    assert.equal((await api("GET", "/admin/v1/messages?address=a@b.c&limit=0")).status, 400);
  });

  it("the queues: list, show, raw; retry and drop change the rows; posted or sent mail is refused", async () => {
    const list = await api("GET", "/admin/v1/queue/inbound?state=posted");
    assert.equal(list.status, 200);
    const posted = (list.json.items as Record<string, unknown>[]).find((i) => i.message_id === messageId);
    assert.ok(posted, "the SMTP mail is in the inbound queue");
    assert.equal(posted.state, "posted");
    assert.equal(posted.room_id, dmRoom);
    const show = await api("GET", `/admin/v1/queue/inbound/${posted.id}`);
    assert.equal(show.status, 200);
    assert.equal(show.json.sender_verified, true);
    const raw = await api("GET", `/admin/v1/queue/inbound/${posted.id}/raw`);
    assert.equal(raw.status, 200);
    assert.match(raw.text, /^Subject: Logged$/m);
    assert.equal((await api("GET", "/admin/v1/queue/inbound?state=sent")).status, 400);
    assert.equal((await api("GET", "/admin/v1/queue/sideways")).status, 404);
    const missing = await api("GET", "/admin/v1/queue/inbound/999999");
    assert.equal(missing.status, 404);
    assert.equal(missing.json.errcode, "M_NOT_FOUND");
    assert.equal((await api("GET", "/admin/v1/queue/inbound/abc")).status, 400);
    const noRetry = await api("POST", `/admin/v1/queue/inbound/${posted.id}/retry`);
    assert.equal(noRetry.status, 409);
    assert.match(String(noRetry.json.error), /is posted .*nothing to retry/);
    assert.equal((await api("DELETE", `/admin/v1/queue/inbound/${posted.id}`)).status, 409);

    // An inbound mail for a room the bridge is not in: its post fails and waits for a retry.
    const { row: stuck } = await env.bridge.store.insertInbound(newInbound({ roomId: "!nowhere:localhost", messageId: "stuck@example.org", contentHash: "stuck" }));
    await until("the post of the stuck mail to fail", async () => ((await env.bridge.store.getInbound(stuck.id))?.attempts ?? 0) > 0);
    const waiting = await env.bridge.store.getInbound(stuck.id);
    assert.ok(waiting?.state === "failed" || waiting?.nextAttemptAt! > Date.now(), "it waits for its retry, or failed");
    const retried = await api("POST", `/admin/v1/queue/inbound/${stuck.id}/retry`);
    assert.equal(retried.status, 200);
    assert.equal(retried.json.state, "pending");
    assert.ok(Date.parse(String(retried.json.next_attempt_at)) <= Date.now(), "due now");
    const dropped = await api("DELETE", `/admin/v1/queue/inbound/${stuck.id}`);
    assert.equal(dropped.status, 200);
    assert.equal(dropped.json.deleted, stuck.id);
    assert.ok(["pending", "failed"].includes(String(dropped.json.state)));
    assert.equal(await env.bridge.store.getInbound(stuck.id), null, "the row is gone");
    assert.equal((await api("DELETE", `/admin/v1/queue/inbound/${stuck.id}`)).status, 404);

    // An outbound mail to a domain that does not exist: it bounces, then retry makes it due again.
    const { row: out } = await env.bridge.store.enqueueOutbound({
      roomId: "",
      eventId: "$admin-test-bounce",
      messageId: "bounce@bridge.test",
      envelopeFrom: `erin@${MAIL_DOMAIN}`,
      recipients: ["nobody@does-not-exist.test"],
      raw: Buffer.from(`From: erin@${MAIL_DOMAIN}\r\nTo: nobody@does-not-exist.test\r\nSubject: x\r\n\r\nx\r\n`),
    });
    env.bridge.outbound.kick();
    await until("the outbound mail to be tried", async () => ((await env.bridge.store.getOutboundById(out.id))?.attempts ?? 0) > 0);
    const before = await env.bridge.store.getOutboundById(out.id);
    assert.notEqual(before?.state, "sent");
    const outList = await api("GET", "/admin/v1/queue/outbound");
    assert.ok((outList.json.items as Record<string, unknown>[]).some((i) => i.id === out.id));
    const retriedOut = await api("POST", `/admin/v1/queue/outbound/${out.id}/retry`);
    assert.equal(retriedOut.status, 200, JSON.stringify(retriedOut.json));
    assert.ok(["queued", "deferred"].includes(String(retriedOut.json.state)));
    assert.ok(Date.parse(String(retriedOut.json.next_attempt_at)) <= Date.now(), "due now");
    await until("the retried mail to be tried again", async () => ((await env.bridge.store.getOutboundById(out.id))?.attempts ?? 0) > before!.attempts);
    const droppedOut = await api("DELETE", `/admin/v1/queue/outbound/${out.id}`);
    assert.equal(droppedOut.status, 200);
    assert.equal(await env.bridge.store.getOutboundById(out.id), null, "the mail is gone");
  });

  it("an injected mail is posted by the sender's unverified ghost and is in the log; bad injections are refused", async () => {
    const res = await api("POST", "/admin/v1/inject", {
      from: '"Dora" <dora@example.net>',
      to: [`erin@${MAIL_DOMAIN}`],
      subject: "Injected",
      text: "Hello from the admin API",
      html: "<p>Hello from the <b>admin API</b></p>",
      headers: { "X-Ticket": "42" },
    });
    assert.equal(res.status, 202, JSON.stringify(res.json));
    const messageIdOf = String(res.json.message_id);
    assert.match(messageIdOf, new RegExp(`@${MAIL_DOMAIN.replace(".", "\\.")}$`));
    const [row] = res.json.inbound as { id: number; room_id: string | null; dm_user_id: string | null }[];
    assert.ok(row);
    assert.equal(row.dm_user_id, "@erin:localhost");
    const ghost = "@email_dora=40example.net/unverified:localhost";
    const roomId = await erin.waitForInvite(30_000, (i) => i.inviter === ghost);
    await erin.join(roomId);
    const event = await erin.waitForEvent(roomId, (e) => e.sender === ghost && String(e.content.body).includes("Hello from the admin API"));
    assert.match(String(event.content.body), /Unverified sender/, "not shown as a verified sender");
    assert.deepEqual(event.content["io.github.matrix-email-bridge.auth"], { spf: "none", dkim: "none", dmarc: "none", arc: "none", verified: false });
    const stored = await api("GET", `/admin/v1/queue/inbound/${row.id}/raw`);
    assert.match(stored.text, /^Received: from admin-api \(\[[^\]]+\]\)\r\n\tby mx\.bridge\.test with HTTP id admin-/);
    assert.match(stored.text, /^X-Ticket: 42$/m);
    const shown = await api("GET", `/admin/v1/queue/inbound/${row.id}`);
    assert.equal(shown.json.state, "posted");
    assert.equal(shown.json.sender_verified, false);
    const log = await api("GET", `/admin/v1/messages?message_id=${encodeURIComponent(messageIdOf)}`);
    assert.equal((log.json.messages as Record<string, unknown>[])[0]?.room_id, roomId);

    const refused = async (body: unknown, status: number, pattern: RegExp): Promise<void> => {
      const r = await api("POST", "/admin/v1/inject", body);
      assert.equal(r.status, status, JSON.stringify(r.json));
      assert.match(String(r.json.error), pattern);
    };
    const good = { from: "dora@example.net", to: [`erin@${MAIL_DOMAIN}`], subject: "s", text: "t" };
    await refused({ ...good, to: [`nobody-here@${MAIL_DOMAIN}`] }, 422, /no such mailbox/);
    await refused({ ...good, to: ["bob@example.org"] }, 400, /not on a mail domain of this bridge/);
    await refused({ ...good, from: `erin@${MAIL_DOMAIN}` }, 422, /refuses this mail/);
    await refused({ ...good, text: undefined }, 400, /"text"/);
    await refused({ ...good, headers: { Received: "forged" } }, 400, /Received cannot be set/);
    await refused({ ...good, to: [] }, 400, /"to"/);
    const notJson = await fetch(`${base}/admin/v1/inject`, { method: "POST", headers: { authorization: `Bearer ${TOKEN}` }, body: "{nope" });
    assert.equal(notJson.status, 400);
    assert.equal(((await notJson.json()) as { errcode: string }).errcode, "M_NOT_JSON");
  });

  it("domains, room mailboxes and aliases: add, list, remove; an alias then takes mail over SMTP", async () => {
    const domains = await api("GET", "/admin/v1/domains");
    assert.deepEqual((domains.json.domains as Record<string, unknown>[]).map((d) => [d.domain, d.primary]), [[MAIL_DOMAIN, true]]);
    const added = await api("POST", "/admin/v1/domains", { domain: "Other.Test" });
    assert.equal(added.status, 201);
    assert.equal(added.json.domain, "other.test");
    assert.equal(added.json.created_by, "admin api");
    assert.equal((await api("POST", "/admin/v1/domains", { domain: "other.test" })).status, 409);
    assert.equal((await api("POST", "/admin/v1/domains", { domain: "not a domain" })).status, 400);
    assert.equal((await api("POST", "/admin/v1/domains", {})).status, 400);
    assert.ok((await env.bridge.addressing.listDomains()).some((d) => d.domain === "other.test"));
    assert.equal((await api("DELETE", "/admin/v1/domains/other.test")).status, 200);
    assert.equal((await api("DELETE", "/admin/v1/domains/other.test")).status, 404);
    assert.equal((await api("DELETE", `/admin/v1/domains/${MAIL_DOMAIN}`)).status, 400);

    const roomId = await erin.createRoom({ preset: "private_chat", name: "Team" });
    assert.equal((await api("PUT", `/admin/v1/mailboxes/${encodeURIComponent(roomId)}`, { localpart: "team" })).status, 400, "the bot is not in the room yet");
    await erin.invite(roomId, BOT);
    await erin.waitForMembership(roomId, BOT, "join");
    const set = await api("PUT", `/admin/v1/mailboxes/${encodeURIComponent(roomId)}`, { localpart: "team" });
    assert.equal(set.status, 200, JSON.stringify(set.json));
    assert.deepEqual(set.json, { address: `team@${MAIL_DOMAIN}`, room_id: roomId, policy: "open" });
    const boxes = await api("GET", "/admin/v1/mailboxes");
    assert.ok((boxes.json.mailboxes as Record<string, unknown>[]).some((m) => m.room_id === roomId && m.address === `team@${MAIL_DOMAIN}`));
    assert.equal((await api("PUT", "/admin/v1/mailboxes/not-a-room", { localpart: "x" })).status, 400);

    const alias = await api("POST", "/admin/v1/aliases", { address: `help@${MAIL_DOMAIN}`, target: roomId });
    assert.equal(alias.status, 201, JSON.stringify(alias.json));
    assert.equal(alias.json.address, `help@${MAIL_DOMAIN}`);
    assert.equal((await api("POST", "/admin/v1/aliases", { address: `help@${MAIL_DOMAIN}`, target: roomId })).status, 409);
    assert.equal((await api("POST", "/admin/v1/aliases", { address: "postmaster", target: roomId })).status, 409, "reserved");
    const aliases = await api("GET", `/admin/v1/aliases?target=${encodeURIComponent(roomId)}`);
    assert.deepEqual((aliases.json.aliases as Record<string, unknown>[]).map((a) => a.address), [`help@${MAIL_DOMAIN}`]);
    // The alias works: mail to it lands in the room.
    assert.match(await env.sendMail({ from: "grace@example.org", to: `help@${MAIL_DOMAIN}`, subject: "Help", text: "Through the alias" }), /^250/);
    await erin.waitForEvent(roomId, (e) => e.sender === "@email_grace=40example.org:localhost" && String(e.content.body).includes("Through the alias"));

    assert.deepEqual((await api("DELETE", `/admin/v1/aliases/help@${MAIL_DOMAIN}`)).json, { removed: 1 });
    assert.equal((await api("DELETE", `/admin/v1/aliases/help@${MAIL_DOMAIN}`)).status, 404);
    assert.equal((await api("DELETE", `/admin/v1/mailboxes/${encodeURIComponent(roomId)}`)).status, 200);
    assert.equal((await api("DELETE", `/admin/v1/mailboxes/${encodeURIComponent(roomId)}`)).status, 404);
    await assert.rejects(env.sendMail({ from: "grace@example.org", to: `team@${MAIL_DOMAIN}`, text: "gone" }), /550/, "the mailbox is gone");
  });

  it("the admin command calls the same API: JSON out, exit code 1 with the API's error, 2 for bad usage", async () => {
    const add = await cli(["admin", "domains", "add", "cli.test", "-c", env.configFile]);
    assert.equal(add.status, 0, add.stderr);
    assert.equal((JSON.parse(add.stdout) as { domain: string }).domain, "cli.test");
    const list = await cli(["admin", "domains", "list", "-c", env.configFile]);
    assert.equal(list.status, 0, list.stderr);
    assert.ok((JSON.parse(list.stdout) as { domains: { domain: string }[] }).domains.some((d) => d.domain === "cli.test"));
    const again = await cli(["admin", "domains", "add", "cli.test", "-c", env.configFile]);
    assert.equal(again.status, 1);
    assert.match(again.stderr, /cli\.test is already a mail domain of this bridge \(409 M_CONFLICT\)/);
    assert.equal((await cli(["admin", "domains", "remove", "cli.test", "-c", env.configFile])).status, 0);

    const log = await cli(["admin", "messages", "message-id", messageId, "-c", env.configFile]);
    assert.equal(log.status, 0, log.stderr);
    assert.equal((JSON.parse(log.stdout) as { messages: { room_id: string }[] }).messages[0]?.room_id, dmRoom);
    const queue = await cli(["admin", "queue", "list", "inbound", "--state", "posted", "-c", env.configFile]);
    assert.equal(queue.status, 0, queue.stderr);
    assert.ok((JSON.parse(queue.stdout) as { items: { message_id: string }[] }).items.some((i) => i.message_id === messageId));
    const missing = await cli(["admin", "queue", "retry", "outbound", "999999", "-c", env.configFile]);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /there is no outbound mail 999999 \(404 M_NOT_FOUND\)/);
    const inject = await cli(["admin", "inject", "--from", "frank@example.com", "--to", `erin@${MAIL_DOMAIN}`, "--subject", "CLI", "--text", "From the command line", "-c", env.configFile]);
    assert.equal(inject.status, 0, inject.stderr);
    assert.equal((JSON.parse(inject.stdout) as { inbound: unknown[] }).inbound.length, 1);

    const bad = await cli(["admin", "queue", "list", "-c", env.configFile]);
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /admin queue list needs inbound or outbound/);
    assert.equal((await cli(["admin", "domains", "list", "--state", "x", "-c", env.configFile])).status, 2);
  });
});
