/**
 * The end-to-end environment: a real Synapse (PyPI virtualenv, loopback) with the
 * bridge's generated registration, the bridge started in-process on PostgreSQL or
 * the embedded SQLite store, a loopback SMTP sink playing the remote MTAs, and a real DNS
 * server on loopback (the bridge's only resolver: `dns.nameservers`) publishing the records
 * `dns-records` prints for the bridge's domain and SPF for the remote test domains, whose
 * mail comes from 127.0.0.1.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFileSync } from "node:child_process";
import nodemailer from "nodemailer";
import { stringify } from "yaml";
import { loadConfig } from "../../src/config/load.ts";
import { writeRegistration } from "../../src/cli/registration.ts";
import { dkimKeygen } from "../../src/cli/dkimKeygen.ts";
import { startBridge, type RunningBridge } from "../../src/bridge/Bridge.ts";
import type { BridgeConfig } from "../../src/config/schema.ts";
import { configureLogging } from "../../src/util/logger.ts";
import { startSynapse, type SynapseHandle } from "../harness/synapse.ts";
import type { MatrixTestClient } from "../harness/matrixClient.ts";
import { startPostgres, type TestPostgres } from "../harness/postgres.ts";
import { startSmtpSink, type SmtpSink } from "../harness/smtpSink.ts";
import { startRspamd } from "../harness/rspamd.ts";
import { freePort } from "../harness/ports.ts";
import { mergeZones, startDnsServer, zoneFromZoneFile, type TestDns, type Zone } from "../harness/dns.ts";

/** The mail domain used in the tests. */
export const MAIL_DOMAIN = "bridge.test";
/** Remote domains routed to the sink by static routes. */
export const REMOTE_DOMAINS = ["example.org", "example.net", "example.com"];

/** Synapse, the sink and a config for the bridge, without the bridge. */
export interface PreparedEnv {
  dir: string;
  /** The bridge's config file, pointing at this Synapse, sink, store and rspamd. */
  configFile: string;
  config: BridgeConfig;
  synapse: SynapseHandle;
  sink: SmtpSink;
  /** The DNS server the bridge asks. */
  dns: TestDns;
  /** The records it serves at the start: the bridge's own (from `dns-records`) and the remote domains' SPF. */
  baseZone: Zone["records"];
  /** Serve the base records plus `extra` (later names win). */
  setDnsRecords(extra: Zone["records"], more?: Omit<Zone, "records">): Promise<void>;
  /** The bridge's SMTP port, once a bridge runs (set by {@link startEnv} or the test). */
  smtpPort: number;
  /** Send a mail to the bridge's SMTP listener; resolves to the server's reply, rejects with the SMTP error. */
  sendMail(mail: TestMail): Promise<string>;
  /** Send raw RFC 5322 bytes with the given envelope; resolves to the server's reply, rejects with the SMTP error. */
  sendRaw(raw: Buffer | string, envelope: { from: string; to: string | string[] }, opts?: { helo?: string }): Promise<string>;
  /** Stop everything this environment started. */
  stop(): Promise<void>;
}

/** A running environment with the bridge started in-process. */
export interface E2eEnv extends PreparedEnv {
  bridge: RunningBridge;
}

/** A mail sent by {@link PreparedEnv.sendMail}. */
export interface TestMail {
  from: string;
  to: string | string[];
  subject?: string;
  text?: string;
  html?: string;
  inReplyTo?: string;
  references?: string[];
  messageId?: string;
}

/** Options of {@link prepareEnv}. */
export interface EnvOptions {
  /** `permissions.allowed_users`. */
  allowedUsers?: string[];
  /** Run a real rspamd and set `spam.rspamd_url`. */
  rspamd?: boolean;
  /** The bridge's `logging.level` (default warn). */
  logLevel?: "debug" | "info" | "warn" | "error";
  /** Config sections merged over the defaults (one level deep: `{ inbound: { retry_base_ms: 200 } }`). */
  config?: Record<string, Record<string, unknown>>;
  /** Start Synapse with the experimental features end-to-end encryption needs (test/harness/synapse.ts `e2ee`). */
  synapseE2ee?: boolean;
  /**
   * Set `appservice.public_url` to the appservice listener's own loopback URL, as if a reverse
   * proxy forwarded it (one-click unsubscribe and large-file links); read it back from
   * `env.config.appservice.public_url`.
   */
  publicUrl?: boolean;
}

/**
 * Start Synapse (with the bridge's generated registration), the sink, the store's
 * database and optionally rspamd, and write the bridge's config file.
 * @param engine which store the bridge uses
 */
export async function prepareEnv(engine: "postgres" | "sqlite", opts: EnvOptions = {}): Promise<PreparedEnv> {
  configureLogging({ level: (process.env.MEB_LOG_LEVEL as "debug" | undefined) ?? "warn" });
  const dir = mkdtempSync(join(tmpdir(), "meb-e2e-"));
  const sink = await startSmtpSink();
  const pg: TestPostgres | null = engine === "postgres" ? await startPostgres() : null;
  const rspamd = opts.rspamd ? await startRspamd() : null;
  const dns = await startDnsServer({ records: {} });
  const asPort = await freePort();
  const configFile = join(dir, "config.yaml");
  const write = (homeserverUrl: string) =>
    writeFileSync(
      configFile,
      stringify(mergeSections({
        homeserver: { url: homeserverUrl, domain: "localhost" },
        appservice: {
          bind_address: "127.0.0.1",
          port: asPort,
          url: `http://127.0.0.1:${asPort}`,
          registration_file: "registration.yaml",
          ...(opts.publicUrl ? { public_url: `http://127.0.0.1:${asPort}` } : {}),
        },
        mail: { domain: MAIL_DOMAIN },
        smtp: { bind_address: "127.0.0.1", port: 0, hostname: "mx.bridge.test" },
        outbound: { static_routes: Object.fromEntries(REMOTE_DOMAINS.map((d) => [d, `127.0.0.1:${sink.port}`])), timeout_ms: 5000, batch_delay_ms: 0 },
        dkim: { selector: "e2e", private_key_file: "dkim.key" },
        database: { url: pg?.url ?? null, sqlite_file: "bridge.sqlite" },
        permissions: { allowed_users: opts.allowedUsers ?? [] },
        spam: { rspamd_url: rspamd?.url ?? null },
        dns: { nameservers: [dns.nameserver], timeout_ms: 500, tries: 1, cache_ttl_ms: 0 },
        logging: { level: opts.logLevel ?? "warn" },
      }, opts.config ?? {})),
    );
  write("http://127.0.0.1:1");
  const draft = loadConfig(configFile);
  writeRegistration(draft);
  dkimKeygen(draft, false);
  // The bridge's own records, exactly as `dns-records` prints them; the remote test MTAs send from 127.0.0.1.
  const baseZone = mergeZones(
    zoneFromZoneFile(runCli(["dns-records", "-c", configFile])),
    Object.fromEntries(REMOTE_DOMAINS.map((d) => [d, { TXT: ["v=spf1 ip4:127.0.0.1 -all"] }])),
  );
  await dns.setZone({ records: baseZone });
  const synapse = await startSynapse({ registrationFiles: [draft.appservice.registration_file], e2ee: opts.synapseE2ee ?? false });
  write(synapse.url);
  const env: PreparedEnv = {
    dir,
    configFile,
    config: loadConfig(configFile),
    synapse,
    sink,
    dns,
    baseZone,
    async setDnsRecords(extra, more = {}) {
      await dns.setZone({ ...more, records: mergeZones(baseZone, extra) });
    },
    smtpPort: 0,
    async sendMail(mail) {
      const transport = nodemailer.createTransport({ host: "127.0.0.1", port: env.smtpPort, secure: false, ignoreTLS: true });
      try {
        const info = await transport.sendMail({
          from: mail.from,
          to: mail.to,
          subject: mail.subject ?? "Hello",
          text: mail.text ?? "Hello from email",
          ...(mail.html ? { html: mail.html } : {}),
          ...(mail.messageId ? { messageId: mail.messageId } : {}),
          ...(mail.inReplyTo ? { inReplyTo: mail.inReplyTo } : {}),
          ...(mail.references ? { references: mail.references } : {}),
        });
        return info.response;
      } finally {
        transport.close();
      }
    },
    async sendRaw(raw, envelope, opts = {}) {
      const transport = nodemailer.createTransport({ host: "127.0.0.1", port: env.smtpPort, secure: false, ignoreTLS: true, ...(opts.helo ? { name: opts.helo } : {}) });
      try {
        const to = Array.isArray(envelope.to) ? envelope.to : [envelope.to];
        const info = await transport.sendMail({ envelope: { from: envelope.from, to }, raw });
        return info.response;
      } finally {
        transport.close();
      }
    },
    async stop() {
      await synapse.stop();
      await sink.stop();
      await pg?.stop();
      await rspamd?.stop();
      await dns.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return env;
}

/** `base` with each section of `over` merged into the same-named section. */
function mergeSections(base: Record<string, unknown>, over: Record<string, Record<string, unknown>>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [key, section] of Object.entries(over)) out[key] = { ...((out[key] as Record<string, unknown> | undefined) ?? {}), ...section };
  return out;
}

/**
 * {@link prepareEnv}, then start the bridge in-process.
 * @param engine which store the bridge uses
 */
export async function startEnv(engine: "postgres" | "sqlite", opts: EnvOptions = {}): Promise<E2eEnv> {
  const env = await prepareEnv(engine, opts);
  let bridge: RunningBridge;
  try {
    bridge = await startBridge(env.config);
  } catch (err) {
    await env.stop();
    throw err;
  }
  env.smtpPort = bridge.smtpPort;
  const stopRest = env.stop;
  return Object.assign(env, {
    bridge,
    async stop() {
      await bridge.stop();
      await stopRest();
    },
  });
}

/**
 * A private room of `client` named `name`, with the bridge bot joined and the room mailbox
 * `<alias>@MAIL_DOMAIN` turned on, as a moderator's `!email mailbox on` does.
 * @returns the room ID
 * @throws when the bot does not join or does not confirm within the client's wait
 */
export async function createMailboxRoom(client: MatrixTestClient, alias: string, name = alias): Promise<string> {
  const bot = "@emailbot:localhost";
  const roomId = await client.createRoom({ preset: "private_chat", name, room_alias_name: alias });
  await client.invite(roomId, bot);
  await client.waitForMembership(roomId, bot, "join");
  await client.sendText(roomId, "!email mailbox on");
  await client.waitForEvent(roomId, (e) => e.sender === bot && String(e.content.body).startsWith("Done"));
  return roomId;
}

/** A user's direct chat with the bridge bot (see {@link openBotDm}). */
export interface BotDm {
  roomId: string;
  /** The bot's first message in the chat whose body matches `pattern`. */
  reply(pattern: RegExp): ReturnType<MatrixTestClient["waitForEvent"]>;
}

/**
 * A direct chat of `client` with the bridge bot (`@emailbot:localhost`), once the bot joined.
 * @throws when the bot does not join within the client's wait
 */
export async function openBotDm(client: MatrixTestClient): Promise<BotDm> {
  const bot = "@emailbot:localhost";
  const roomId = await client.createRoom({ preset: "trusted_private_chat", is_direct: true, invite: [bot] });
  await client.waitForMembership(roomId, bot, "join");
  return { roomId, reply: (pattern) => client.waitForEvent(roomId, (e) => e.sender === bot && pattern.test(String(e.content.body))) };
}

/**
 * Run the real CLI (`node src/main.ts <args>`) and return its stdout.
 * @throws Error with stderr when it exits non-zero
 */
export function runCli(args: string[]): string {
  const { NODE_TEST_CONTEXT: _, ...env } = process.env; // not a test-runner subprocess
  return execFileSync(process.execPath, [new URL("../../src/main.ts", import.meta.url).pathname, ...args], { encoding: "utf8", env });
}
