/**
 * `doctor` (src/cli/doctor.ts) against the loopback DNS server (the config's `dns` section
 * points the bridge's one resolver at it): published records as `dns-records` prints them are
 * `ok`; each record made wrong in turn fails that check, with a fix line, and leaves the others
 * as they were. Also the TLS certificate (expired, wrong name), the SMTP port (free, held by the
 * bridge's listener, held by another server), a DNS timeout, and the CLI's output and exit codes.
 * The homeserver is unreachable here (test/e2e/doctor.test.ts pings a real Synapse).
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { stringify } from "yaml";
import { loadConfig } from "../../src/config/load.ts";
import { writeRegistration } from "../../src/cli/registration.ts";
import { dkimKeygen } from "../../src/cli/dkimKeygen.ts";
import { runDoctor, type DoctorResult } from "../../src/cli/doctor.ts";
import { dkimTxtRecord } from "../../src/mail/outbound/dkim.ts";
import { mergeZones, startDnsServer, zoneFromZoneFile, type TestDns, type Zone } from "../harness/dns.ts";
import { freePort } from "../harness/ports.ts";
import { RecordingHandler, startSmtpListener } from "../harness/smtpListener.ts";
import { runCliAsync } from "../harness/cli.ts";

const execFileP = promisify(execFile);

/** A self-signed EC certificate for `name` (in the subjectAltName), valid 90 days: `<dir>/<name>.cert.pem` and `.key.pem`. */
async function makeCert(dir: string, name: string): Promise<void> {
  await execFileP("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", join(dir, `${name}.key.pem`), "-out", join(dir, `${name}.cert.pem`), "-days", "90",
    "-subj", `/CN=${name}`, "-addext", `subjectAltName=DNS:${name}`,
  ]);
}

const cli = runCliAsync;

/** check → status. */
function statuses(results: DoctorResult[]): Record<string, string> {
  return Object.fromEntries(results.map((r) => [r.check, r.status]));
}

function result(results: DoctorResult[], check: string): DoctorResult {
  const r = results.find((x) => x.check === check);
  assert.ok(r, `no ${check} result in ${JSON.stringify(results)}`);
  return r;
}

describe("doctor", () => {
  let dir: string;
  let dns: TestDns;
  let configFile: string;
  let baseZone: Zone["records"];
  let smtpPort: number;
  let asPort: number;
  /** A port nothing listens on: the homeserver is unreachable. */
  let hsPort: number;
  /** What every check says with the records as dns-records prints them. */
  let baseline: Record<string, string>;

  /** Write a config file (`name`), sections merged over the base one. */
  function writeConfig(name: string, over: Record<string, Record<string, unknown>> = {}): string {
    const base: Record<string, Record<string, unknown>> = {
      homeserver: { url: `http://127.0.0.1:${hsPort}`, domain: "localhost" },
      appservice: { bind_address: "127.0.0.1", port: asPort, url: `http://127.0.0.1:${asPort}`, registration_file: "registration.yaml" },
      mail: { domain: "bridge.test" },
      smtp: { bind_address: "127.0.0.1", port: smtpPort, hostname: "mx.bridge.test", tls_cert_file: "mx.bridge.test.cert.pem", tls_key_file: "mx.bridge.test.key.pem" },
      dkim: { selector: "meb", private_key_file: "dkim.key" },
      dns: { nameservers: [dns.nameserver], timeout_ms: 300, tries: 1, cache_ttl_ms: 0 },
      logging: { level: "error" },
    };
    for (const [k, v] of Object.entries(over)) base[k] = { ...(base[k] ?? {}), ...v };
    const file = join(dir, name);
    writeFileSync(file, stringify(base));
    return file;
  }

  const doctor = (file = configFile, opts: { now?: number } = {}) => runDoctor(file, { pingTimeoutMs: 5000, greetingTimeoutMs: 2000, ...opts });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "meb-doctor-"));
    dns = await startDnsServer({ records: {} });
    smtpPort = await freePort();
    asPort = await freePort();
    hsPort = await freePort();
    await makeCert(dir, "mx.bridge.test");
    await makeCert(dir, "wrong.test");
    configFile = writeConfig("config.yaml");
    const cfg = loadConfig(configFile);
    writeRegistration(cfg);
    dkimKeygen(cfg, false);
    const printed = await cli(["dns-records", "-c", configFile]);
    assert.equal(printed.code, 0, printed.stderr);
    // The records exactly as `dns-records` prints them, plus the MX host's address and its PTR.
    baseZone = mergeZones(zoneFromZoneFile(printed.stdout), {
      "mx.bridge.test": { A: ["127.0.0.1"] },
      "1.0.0.127.in-addr.arpa": { PTR: ["mx.bridge.test"] },
    });
    await dns.setZone({ records: baseZone });
  });
  after(async () => {
    await dns?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("records as dns-records prints them: every DNS check, the DKIM key, reverse DNS, certificate and SMTP port are ok", async () => {
    const results = await doctor();
    baseline = statuses(results);
    for (const check of ["config", "smtp port", "dns mx", "dns spf", "dns dkim", "dkim key", "dns dmarc", "reverse dns", "tls certificate"]) {
      assert.equal(baseline[check], "ok", `${check}: ${JSON.stringify(result(results, check))}`);
    }
    assert.match(result(results, "dns mx").found, /bridge\.test MX 10 mx\.bridge\.test; mx\.bridge\.test is 127\.0\.0\.1/);
    assert.match(result(results, "reverse dns").found, /127\.0\.0\.1 PTR mx\.bridge\.test → 127\.0\.0\.1/);
    assert.match(result(results, "smtp port").found, /is free/);
    // No homeserver here: a fail that names it and does not stop the other checks.
    const hs = result(results, "homeserver");
    assert.equal(hs.status, "fail");
    assert.match(hs.found, /^homeserver unreachable at http:\/\/127\.0\.0\.1:\d+: .*ECONNREFUSED/);
    assert.ok(hs.fix);
    assert.match(baseline["e2e crypto"]!, /^(ok|warn)$/);
    assert.equal(results.length, 11);
  });

  /** Serve the base zone with `change` applied, run doctor, check that only `check` moved to fail. */
  async function onlyFails(check: string, change: (zone: Zone["records"]) => void, found: RegExp, fix: RegExp, alsoChanged: Record<string, string> = {}): Promise<void> {
    const zone = structuredClone(baseZone);
    change(zone);
    await dns.setZone({ records: zone });
    try {
      const results = await doctor();
      const r = result(results, check);
      assert.equal(r.status, "fail", JSON.stringify(r));
      assert.match(r.found, found);
      assert.match(r.fix ?? "", fix);
      assert.deepEqual(statuses(results), { ...baseline, ...alsoChanged, [check]: "fail" });
    } finally {
      await dns.setZone({ records: baseZone });
    }
  }

  it("MX missing: dns mx fails, with the record to publish", async () => {
    await onlyFails("dns mx", (z) => delete z["bridge.test"]!.MX, /bridge\.test has no MX record/, /publish bridge\.test\. MX 10 mx\.bridge\.test\./);
  });

  it("MX pointing elsewhere: dns mx fails", async () => {
    await onlyFails("dns mx", (z) => (z["bridge.test"]!.MX = [{ priority: 10, exchange: "mail.elsewhere.test" }]), /is 10 mail\.elsewhere\.test, not mx\.bridge\.test/, /publish bridge\.test\. MX 10 mx\.bridge\.test\./);
  });

  it("MX host without an address: dns mx fails (and reverse dns cannot tell the outbound address)", async () => {
    await onlyFails("dns mx", (z) => delete z["mx.bridge.test"]!.A, /mx\.bridge\.test has no A\/AAAA record/, /publish an A/, { "reverse dns": "warn" });
  });

  it("SPF without the bridge host and the MX: dns spf fails", async () => {
    await onlyFails("dns spf", (z) => (z["bridge.test"]!.TXT = ["v=spf1 ip4:192.0.2.1 -all"]), /lacks a:mx\.bridge\.test mx/, /publish bridge\.test\. TXT "v=spf1 a:mx\.bridge\.test mx -all"/);
  });

  it("SPF missing: dns spf fails", async () => {
    await onlyFails("dns spf", (z) => delete z["bridge.test"]!.TXT, /has no SPF record/, /publish bridge\.test\. TXT "v=spf1/);
  });

  it("DKIM p= of another key: the dkim key check fails (the record itself is well-formed)", async () => {
    const other = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    await onlyFails("dkim key", (z) => (z["meb._domainkey.bridge.test"]!.TXT = [dkimTxtRecord(other)]), /is not the public key of .*dkim\.key/, /dns-records/);
  });

  it("DMARC missing: dns dmarc fails", async () => {
    await onlyFails("dns dmarc", (z) => delete z["_dmarc.bridge.test"], /_dmarc\.bridge\.test has no DMARC record/, /publish _dmarc\.bridge\.test\. TXT "v=DMARC1; p=quarantine/);
  });

  it("DMARC p=none is a warning; a DNS timeout is a fail with the reason, the other checks still run", async () => {
    const zone = structuredClone(baseZone);
    zone["_dmarc.bridge.test"] = { TXT: ["v=DMARC1; p=none"] };
    await dns.setZone({ records: zone });
    try {
      const r = result(await doctor(), "dns dmarc");
      assert.equal(r.status, "warn");
      assert.match(r.found, /p=none/);
      await dns.setZone({ records: baseZone, timeout: ["_dmarc.bridge.test"] });
      const results = await doctor();
      const t = result(results, "dns dmarc");
      assert.equal(t.status, "fail");
      assert.match(t.found, /cannot look up TXT _dmarc\.bridge\.test: .*ETIMEOUT/);
      assert.ok(t.found.endsWith(`(asked ${dns.nameserver})`), t.found);
      assert.match(t.fix ?? "", /dns\.nameservers/);
      assert.deepEqual(statuses(results), { ...baseline, "dns dmarc": "fail" });
    } finally {
      await dns.setZone({ records: baseZone });
    }
  });

  it("the certificate expired: tls certificate fails; others unchanged", async () => {
    const results = await doctor(configFile, { now: Date.now() + 91 * 24 * 3600 * 1000 }); // the certificate is valid 90 days
    const r = result(results, "tls certificate");
    assert.equal(r.status, "fail");
    assert.match(r.found, /mx\.bridge\.test\.cert\.pem .* expired$/);
    assert.match(r.fix ?? "", /renew the certificate for mx\.bridge\.test/);
    assert.deepEqual(statuses(results), { ...baseline, "tls certificate": "fail" });
  });

  it("the certificate names another host: tls certificate fails", async () => {
    const file = writeConfig("wrong-cert.yaml", { smtp: { tls_cert_file: "wrong.test.cert.pem", tls_key_file: "wrong.test.key.pem" } });
    const results = await doctor(file);
    const r = result(results, "tls certificate");
    assert.equal(r.status, "fail");
    assert.match(r.found, /does not name mx\.bridge\.test \(smtp\.hostname\)/);
    assert.match(r.fix ?? "", /subjectAltName includes mx\.bridge\.test/);
    assert.deepEqual(statuses(results), { ...baseline, "tls certificate": "fail" });
  });

  it("the SMTP port held by the bridge's listener is ok (its greeting); held by another server is a fail", async () => {
    const { listener, port } = await startSmtpListener(new RecordingHandler());
    try {
      const file = writeConfig("listener.yaml", { smtp: { port } });
      const r = result(await doctor(file), "smtp port");
      assert.equal(r.status, "ok", JSON.stringify(r));
      assert.match(r.found, /in use by the running bridge \("220 mx\.bridge\.test ESMTP matrix-email-bridge/);
    } finally {
      await listener.close();
    }
    const other: Server = createServer((socket) => socket.resume().end("220 other.example ESMTP Postfix\r\n"));
    await new Promise<void>((resolve) => other.listen(smtpPort, "127.0.0.1", resolve));
    try {
      const r = result(await doctor(), "smtp port");
      assert.equal(r.status, "fail");
      assert.match(r.found, /in use by another program \("220 other\.example ESMTP Postfix"\)/);
      assert.ok(r.fix);
    } finally {
      await new Promise<void>((resolve) => other.close(() => resolve()));
    }
  });

  it("the CLI prints one line per check with fix lines, exit 1 on a failed check and 2 on a bad config", async () => {
    const run = await cli(["doctor", "-c", configFile]);
    assert.equal(run.code, 1, run.stderr);
    const lines = run.stdout.trimEnd().split("\n");
    assert.match(lines[0]!, /^ok {4}config: .*config\.yaml loads and validates$/);
    assert.ok(lines.includes("ok    dns dmarc: \"v=DMARC1; p=quarantine; adkim=s; aspf=r\""), run.stdout);
    const hs = lines.findIndex((l) => l.startsWith(`fail  homeserver: homeserver unreachable at http://127.0.0.1:${hsPort}`));
    assert.ok(hs >= 0, run.stdout);
    assert.match(lines[hs + 1]!, /^ {6}fix: check homeserver\.url/);
    for (const line of lines) assert.match(line, /^(?:(?:ok {4}|warn {2}|fail {2})[a-z0-9 ]+: .+| {6}fix: .+)$/, line);

    const bad = writeConfig("bad.yaml", { smtp: { port: "twenty-five" } });
    const badRun = await cli(["doctor", "-c", bad]);
    assert.equal(badRun.code, 2);
    assert.match(badRun.stdout, /^fail {2}config: .*bad\.yaml: smtp\.port: must be integer\n {6}fix: set smtp\.port in .*bad\.yaml/);
  });
});
