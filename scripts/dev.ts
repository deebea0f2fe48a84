/**
 * Quick start: runs a throwaway Synapse (loopback, from the PyPI virtualenv), the bridge
 * on the embedded SQLite store in .dev/, and a local "outside world" MTA that prints the
 * mail the bridge sends. Prints how to log in and what to try. Ctrl-C stops everything.
 */
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { simpleParser } from "mailparser";
import { stringify } from "yaml";
import { loadConfig } from "../src/config/load.ts";
import { writeRegistration } from "../src/cli/registration.ts";
import { dkimKeygen } from "../src/cli/dkimKeygen.ts";
import { startBridge } from "../src/bridge/Bridge.ts";
import { startSynapse } from "../test/harness/synapse.ts";
import { startSmtpSink } from "../test/harness/smtpSink.ts";

const dir = new URL("../.dev/", import.meta.url).pathname;
mkdirSync(dir, { recursive: true });
// The homeserver is new on every run, so the bridge's mappings must be too.
for (const f of ["bridge.sqlite", "bridge.sqlite-wal", "bridge.sqlite-shm"]) rmSync(`${dir}${f}`, { force: true });
const configFile = `${dir}config.yaml`;
const smtpPort = Number(process.env.MEB_DEV_SMTP_PORT ?? 2525);
const asPort = Number(process.env.MEB_DEV_AS_PORT ?? 8090);

const sink = await startSmtpSink();
writeFileSync(
  configFile,
  stringify({
    homeserver: { url: "http://127.0.0.1:8008", domain: "localhost" },
    appservice: { bind_address: "127.0.0.1", port: asPort, url: `http://127.0.0.1:${asPort}` },
    mail: { domain: "mail.localhost" },
    smtp: { bind_address: "127.0.0.1", port: smtpPort, hostname: "mx.mail.localhost" },
    // Every remote domain of the demo goes to the local printing MTA below, never to the internet.
    outbound: { static_routes: Object.fromEntries(["example.org", "example.com", "example.net"].map((d) => [d, `127.0.0.1:${sink.port}`])) },
    database: { sqlite_file: "bridge.sqlite" },
  }),
);
let config = loadConfig(configFile);
writeRegistration(config);
if (!existsSync(config.dkim.private_key_file)) dkimKeygen(config, false);
const synapse = await startSynapse({ registrationFiles: [config.appservice.registration_file] });
config = { ...config, homeserver: { ...config.homeserver, url: synapse.url } };
const password = "alice-password";
await synapse.registerUser("alice", { password, displayName: "Alice" });
const bridge = await startBridge(config);

const poll = setInterval(async () => {
  while (sink.mails.length > 0) {
    const m = sink.mails.shift()!;
    const parsed = await simpleParser(m.raw);
    process.stdout.write(`\n--- mail sent by the bridge: ${m.mailFrom} -> ${m.rcptTo.join(", ")}\nSubject: ${parsed.subject}\n${parsed.text}\n---\n`);
  }
}, 500);

process.stdout.write(`
matrix-email-bridge is running (embedded SQLite store in .dev/).

  Homeserver:  ${synapse.url}   (a throwaway Synapse; log in with Element or any client)
  User:        alice / ${password}
  SMTP:        127.0.0.1:${bridge.smtpPort} (mail domain mail.localhost)

Try:
  1. Invite @email_bob=40example.org:localhost to an unencrypted room and say something.
     The mail appears here (example.org is routed to a local MTA that prints it).
  2. Mail Alice as a stranger; a DM from the sender's ghost invites her:
       node src/main.ts send-test-mail -c .dev/config.yaml --from bob@example.org --to alice@mail.localhost
     (or: swaks --server 127.0.0.1:${bridge.smtpPort} --from bob@example.org --to alice@mail.localhost)
  3. In a room with @emailbot:localhost, say "!email mailbox on team" and mail team@mail.localhost.

Ctrl-C stops everything.
`);

await new Promise<void>((resolve) => {
  process.once("SIGINT", resolve);
  process.once("SIGTERM", resolve);
});
clearInterval(poll);
await bridge.stop();
await synapse.stop();
await sink.stop();
