/**
 * The end-to-end environment: a real Synapse (PyPI virtualenv, loopback) with the
 * bridge's generated registration, the bridge started in-process on PostgreSQL or
 * the embedded SQLite store, and a loopback SMTP sink playing the remote MTAs.
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
import { configureLogging } from "../../src/util/logger.ts";
import { startSynapse, type SynapseHandle } from "../harness/synapse.ts";
import { startPostgres, type TestPostgres } from "../harness/postgres.ts";
import { startSmtpSink, type SmtpSink } from "../harness/smtpSink.ts";
import { startRspamd } from "../harness/rspamd.ts";
import { freePort } from "../harness/ports.ts";

/** The mail domain used in the tests. */
export const MAIL_DOMAIN = "bridge.test";
/** Remote domains routed to the sink by static routes. */
export const REMOTE_DOMAINS = ["example.org", "example.net", "example.com"];

/** A running environment. */
export interface E2eEnv {
  dir: string;
  configFile: string;
  synapse: SynapseHandle;
  bridge: RunningBridge;
  sink: SmtpSink;
  /** Send a mail to the bridge's SMTP listener; resolves to the server's reply, rejects with the SMTP error. */
  sendMail(mail: { from: string; to: string | string[]; subject?: string; text?: string; html?: string; inReplyTo?: string; references?: string[]; messageId?: string }): Promise<string>;
  stop(): Promise<void>;
}


/**
 * Start Synapse, the sink and the bridge.
 * @param engine which store the bridge uses
 * @param allowedUsers `permissions.allowed_users`
 */
export async function startEnv(engine: "postgres" | "sqlite", allowedUsers: string[] = [], opts: { rspamd?: boolean } = {}): Promise<E2eEnv> {
  configureLogging({ level: (process.env.MEB_LOG_LEVEL as "debug" | undefined) ?? "warn" });
  const dir = mkdtempSync(join(tmpdir(), "meb-e2e-"));
  const sink = await startSmtpSink();
  let pg: TestPostgres | null = null;
  if (engine === "postgres") pg = await startPostgres();
  const rspamd = opts.rspamd ? await startRspamd() : null;
  const asPort = await freePort();
  const configFile = join(dir, "config.yaml");
  writeFileSync(
    configFile,
    stringify({
      homeserver: { url: "http://127.0.0.1:1", domain: "localhost" },
      appservice: { bind_address: "127.0.0.1", port: asPort, url: `http://127.0.0.1:${asPort}`, registration_file: "registration.yaml" },
      mail: { domain: MAIL_DOMAIN },
      smtp: { bind_address: "127.0.0.1", port: 0, hostname: "mx.bridge.test" },
      outbound: { static_routes: Object.fromEntries(REMOTE_DOMAINS.map((d) => [d, `127.0.0.1:${sink.port}`])), timeout_ms: 5000 },
      dkim: { selector: "e2e", private_key_file: "dkim.key" },
      database: { url: pg?.url ?? null, sqlite_file: "bridge.sqlite" },
      permissions: { allowed_users: allowedUsers },
      spam: { rspamd_url: rspamd?.url ?? null },
      logging: { level: "warn" },
    }),
  );
  let config = loadConfig(configFile);
  writeRegistration(config);
  dkimKeygen(config, false);
  const synapse = await startSynapse({ registrationFiles: [config.appservice.registration_file] });
  // Now that Synapse's URL is known, point the config at it.
  config = { ...config, homeserver: { ...config.homeserver, url: synapse.url } };
  const resolver = async (domain: string): Promise<{ exchange: string; priority: number }[]> => {
    throw Object.assign(new Error(`no live DNS in tests (${domain})`), { code: "ENOTFOUND" });
  };
  let bridge: RunningBridge;
  try {
    bridge = await startBridge(config, { resolver });
  } catch (err) {
    await synapse.stop();
    await sink.stop();
    throw err;
  }
  return {
    dir,
    configFile,
    synapse,
    bridge,
    sink,
    async sendMail(mail) {
      const transport = nodemailer.createTransport({ host: "127.0.0.1", port: bridge.smtpPort, secure: false, ignoreTLS: true });
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
    async stop() {
      await bridge.stop();
      await synapse.stop();
      await sink.stop();
      await pg?.stop();
      await rspamd?.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Run the real CLI (`node src/main.ts <args>`) and return its stdout.
 * @throws Error with stderr when it exits non-zero
 */
export function runCli(args: string[]): string {
  return execFileSync(process.execPath, [new URL("../../src/main.ts", import.meta.url).pathname, ...args], { encoding: "utf8" });
}
