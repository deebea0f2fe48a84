/**
 * The `matrix-email-bridge` command line.
 *
 *   matrix-email-bridge <command> [-c config.yaml] [options]
 *
 * Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad config.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { ConfigError, loadConfig } from "./config/load.ts";
import type { BridgeConfig } from "./config/schema.ts";
import { writeRegistration } from "./cli/registration.ts";
import { dkimKeygen } from "./cli/dkimKeygen.ts";
import { sendTestMail } from "./cli/sendTestMail.ts";
import { dkimTxtRecord } from "./mail/outbound/dkim.ts";
import { dnsRecords, formatZone } from "./mail/outbound/dnsRecords.ts";
import { getLogger, errorFields } from "./util/logger.ts";

const USAGE = `Usage: matrix-email-bridge <command> [-c config.yaml] [options]

Commands:
  start                   run the bridge
  generate-registration   write the appservice registration file (keeps tokens; --rotate makes new ones)
  dkim-keygen             make the DKIM private key (--force replaces it)
  dns-records             print the MX, SPF, DKIM and DMARC records to publish for the mail domain
  validate-config         check the config file and exit
  doctor                  check the deployment (config, homeserver and appservice ping, SMTP port, DNS records,
                            DKIM key, reverse DNS, TLS certificate, crypto) and print a fix for each problem
  send-test-mail          send a test mail to the bridge's SMTP listener:
                            --to ADDRESS [--from ADDRESS] [--envelope-from ADDRESS] [--subject TEXT] [--text TEXT]
                            [--host HOST] [--port PORT] (default: the config's smtp listener)
  queue                   look at and act on the mail queues (works while the bridge runs):
                            list [inbound|outbound] [--state S] [--limit N]
                            show inbound|outbound ID [--raw]  (--raw: the stored message bytes)
                            retry inbound|outbound ID         (due now)
                            drop inbound|outbound ID --yes    (deletes it and its message)
  admin                   call the running bridge's admin API (admin_api section; docs/admin-api.md):
                            domains list | add DOMAIN | remove DOMAIN
                            mailboxes list | set ROOM_ID LOCALPART | remove ROOM_ID
                            aliases list [--domain D] [--target T] | add ADDRESS TARGET | remove ADDRESS [TARGET]
                            messages message-id|address|room VALUE [--limit N]
                            queue list inbound|outbound [--state S] [--limit N] | show|retry|drop inbound|outbound ID
                            inject --from ADDRESS --to ADDRESS[,ADDRESS...] --subject TEXT --text TEXT [--html HTML]

Options:
  -c, --config FILE       config file (default: config.yaml)
  -h, --help              this text`;

/** Bad usage: the message is printed without a stack trace, exit code 2. */
class UsageError extends Error {}

/** A failed command whose message says all (e.g. a refused test mail): printed, exit code 1. */
class CommandFailed extends Error {}

function config(file: string): BridgeConfig {
  return loadConfig(file);
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: "string", short: "c", default: "config.yaml" },
      help: { type: "boolean", short: "h" },
      force: { type: "boolean" },
      rotate: { type: "boolean" },
      to: { type: "string" },
      from: { type: "string" },
      "envelope-from": { type: "string" },
      subject: { type: "string" },
      text: { type: "string" },
      host: { type: "string" },
      port: { type: "string" },
      state: { type: "string" },
      limit: { type: "string" },
      raw: { type: "boolean" },
      yes: { type: "boolean" },
      domain: { type: "string" },
      target: { type: "string" },
      html: { type: "string" },
    },
  });
  const command = positionals[0];
  if (values.help || !command) {
    process.stdout.write(USAGE + "\n");
    return command || values.help ? 0 : 2;
  }
  const file = values.config!;
  switch (command) {
    case "start": {
      const { startBridge } = await import("./bridge/Bridge.ts");
      const bridge = await startBridge(config(file));
      await new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once("SIGINT", stop);
        process.once("SIGTERM", stop);
      });
      await bridge.stop();
      return 0;
    }
    case "generate-registration": {
      const out = writeRegistration(config(file), values.rotate ?? false);
      process.stdout.write(`Wrote ${out}. Add it to app_service_config_files in Synapse's homeserver.yaml and restart Synapse.\n`);
      return 0;
    }
    case "dkim-keygen": {
      const cfg = config(file);
      const out = dkimKeygen(cfg, values.force ?? false);
      process.stdout.write(`Wrote ${out}. Publish the DKIM record that \`matrix-email-bridge dns-records\` prints.\n`);
      return 0;
    }
    case "dns-records": {
      const cfg = config(file);
      let key: string;
      try {
        key = readFileSync(cfg.dkim.private_key_file, "utf8");
      } catch {
        throw new UsageError(`cannot read the DKIM key ${cfg.dkim.private_key_file}; run \`matrix-email-bridge dkim-keygen\` first`);
      }
      const records = dnsRecords({
        mailDomain: cfg.mail.domain,
        mxHost: cfg.smtp.hostname,
        selector: cfg.dkim.selector,
        dkimPublicTxt: dkimTxtRecord(key),
        relayHost: cfg.outbound.mode === "relay" ? (cfg.outbound.relay?.host ?? null) : null,
      });
      process.stdout.write(formatZone(records) + "\n");
      return 0;
    }
    case "validate-config": {
      config(file);
      process.stdout.write(`${file}: OK\n`);
      return 0;
    }
    case "doctor": {
      const { doctorCommand } = await import("./cli/doctor.ts");
      return doctorCommand(file, (text) => process.stdout.write(text));
    }
    case "send-test-mail": {
      if (!values.to) throw new UsageError("send-test-mail needs --to ADDRESS");
      const cfg = values.host && values.port ? null : config(file);
      const host = values.host ?? (cfg!.smtp.bind_address === "0.0.0.0" ? "127.0.0.1" : cfg!.smtp.bind_address);
      const port = values.port ? Number(values.port) : cfg!.smtp.port;
      const reply = await sendTestMail({
        host,
        port,
        to: values.to,
        from: values.from ?? "tester@example.org",
        ...(values["envelope-from"] ? { envelopeFrom: values["envelope-from"] } : {}),
        subject: values.subject ?? "Test mail from matrix-email-bridge",
        text: values.text ?? "Hello from the email side! Reply in Matrix and I will get it by email.",
      }).catch((err: unknown) => {
        const e = err as { response?: string; message?: string };
        throw new CommandFailed(`the mail was refused: ${e.response ?? e.message ?? String(err)}`);
      });
      process.stdout.write(`Sent to ${values.to} via ${host}:${port}: ${reply}\n`);
      return 0;
    }
    case "admin": {
      const { adminCommand, AdminCommandError } = await import("./cli/admin.ts");
      const { state, limit, domain, target, from, to, subject, text, html } = values;
      await adminCommand(positionals.slice(1), { state, limit, domain, target, from, to, subject, text, html }, () => config(file)).catch((err: unknown) => {
        if (err instanceof AdminCommandError) throw err.usage ? new UsageError(err.message) : new CommandFailed(err.message);
        throw err;
      });
      return 0;
    }
    case "queue": {
      // Loaded on demand, like `start`: only this command needs the store drivers.
      const { queueCommand, QueueCommandError } = await import("./cli/queue.ts");
      const { state, limit, raw, yes } = values;
      await queueCommand(positionals.slice(1), { state, limit, raw, yes }, () => config(file)).catch((err: unknown) => {
        if (err instanceof QueueCommandError) throw err.usage ? new UsageError(err.message) : new CommandFailed(err.message);
        throw err;
      });
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${command}"\n\n${USAGE}`);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof ConfigError || err instanceof UsageError || err instanceof CommandFailed) {
      process.stderr.write(`matrix-email-bridge: ${err.message}\n`);
      process.exitCode = err instanceof CommandFailed ? 1 : 2;
      return;
    }
    getLogger("cli").error("failed", errorFields(err));
    process.exitCode = 1;
  },
);
