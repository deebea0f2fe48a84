/**
 * Quick start: runs a throwaway Synapse (loopback, from the PyPI virtualenv), the bridge
 * on the embedded SQLite store in .dev/, a local "outside world" MTA that prints the mail the
 * bridge sends, and a local DNS server (the bridge's only resolver here) that publishes the
 * bridge's own records and SPF for the demo domains, whose mail comes from 127.0.0.1, so
 * sender authentication works as on the internet. Prints how to log in and what to try.
 * Ctrl-C stops everything.
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
import { mergeZones, startDnsServer, zoneFromZoneFile } from "../test/harness/dns.ts";
import { dnsRecords, formatZone } from "../src/mail/outbound/dnsRecords.ts";
import { dkimTxtRecord } from "../src/mail/outbound/dkim.ts";
import { readFileSync } from "node:fs";

const dir = new URL("../.dev/", import.meta.url).pathname;
mkdirSync(dir, { recursive: true });
// The homeserver is new on every run, so the bridge's mappings must be too.
for (const f of ["bridge.sqlite", "bridge.sqlite-wal", "bridge.sqlite-shm"]) rmSync(`${dir}${f}`, { force: true });
const configFile = `${dir}config.yaml`;
const smtpPort = Number(process.env.MEB_DEV_SMTP_PORT ?? 2525);
const asPort = Number(process.env.MEB_DEV_AS_PORT ?? 8090);

const DEMO_DOMAINS = ["example.org", "example.com", "example.net"];
const sink = await startSmtpSink();
const dns = await startDnsServer({ records: {} });
writeFileSync(
  configFile,
  stringify({
    homeserver: { url: "http://127.0.0.1:8008", domain: "localhost" },
    appservice: { bind_address: "127.0.0.1", port: asPort, url: `http://127.0.0.1:${asPort}` },
    mail: { domain: "mail.localhost" },
    smtp: { bind_address: "127.0.0.1", port: smtpPort, hostname: "mx.mail.localhost" },
    // Every remote domain of the demo goes to the local printing MTA below, never to the internet.
    outbound: { static_routes: Object.fromEntries(DEMO_DOMAINS.map((d) => [d, `127.0.0.1:${sink.port}`])) },
    database: { sqlite_file: "bridge.sqlite" },
    dns: { nameservers: [dns.nameserver] },
    permissions: { admins: ["@alice:localhost"] },
  }),
);
let config = loadConfig(configFile);
writeRegistration(config);
if (!existsSync(config.dkim.private_key_file)) dkimKeygen(config, false);
// What `dns-records` would tell an admin to publish, plus SPF for the demo senders.
const own = formatZone(
  dnsRecords({ mailDomain: config.mail.domain, mxHost: config.smtp.hostname, selector: config.dkim.selector, dkimPublicTxt: dkimTxtRecord(readFileSync(config.dkim.private_key_file, "utf8")), relayHost: null }),
);
await dns.setZone({ records: mergeZones(zoneFromZoneFile(own), Object.fromEntries(DEMO_DOMAINS.map((d) => [d, { TXT: ["v=spf1 ip4:127.0.0.1 -all"] }]))) });
// With the experimental features end-to-end encryption needs (docs/encryption.md): Element
// encrypts new private rooms by default.
const synapse = await startSynapse({ registrationFiles: [config.appservice.registration_file], e2ee: true });
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
  DNS:         ${dns.nameserver} (publishes the bridge's records and SPF for ${DEMO_DOMAINS.join(", ")})

Try:
  1. Invite @email_bob=40example.org:localhost to a room (encrypted or not) and say something.
     The mail appears here (example.org is routed to a local MTA that prints it).
  2. Mail Alice as a stranger; a DM from the sender's ghost invites her:
       npm run cli -- send-test-mail -c .dev/config.yaml --from bob@example.org --to alice@mail.localhost
     (or: swaks --server 127.0.0.1:${bridge.smtpPort} --from bob@example.org --to alice@mail.localhost)
  3. In a room with @emailbot:localhost, say "!email mailbox on team" and mail team@mail.localhost.
  4. A forged sender is shown as unverified (its envelope domain is not example.org):
       npm run cli -- send-test-mail -c .dev/config.yaml --from ceo@example.org --envelope-from x@mail.invalid --to alice@mail.localhost

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
await dns.stop();
