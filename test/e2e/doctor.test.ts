/**
 * `doctor`'s homeserver check against a real Synapse (test/e2e/env.ts): the appservice ping
 * (Client-Server API › Application service ping) answered by doctor itself while the bridge is
 * not running, and by the running bridge; an as_token Synapse does not know; an hs_token the
 * appservice refuses; an appservice port that drops the homeserver's connection. With the
 * bridge running and every record published, the whole report passes (exit code 0). The bridge
 * pings through the homeserver at start too, and warns when that fails.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { parse, stringify } from "yaml";
import { startBridge, type RunningBridge } from "../../src/bridge/Bridge.ts";
import { prepareEnv, type PreparedEnv } from "./env.ts";
import { runCliAsync } from "../harness/cli.ts";
import { configureLogging } from "../../src/util/logger.ts";


const cli = runCliAsync;

/** The `homeserver` line of a report and its fix line (if any). */
function homeserverLines(stdout: string): { line: string; fix: string | null } {
  const lines = stdout.split("\n");
  const i = lines.findIndex((l) => /^(ok|warn|fail) +homeserver: /.test(l));
  assert.ok(i >= 0, `no homeserver line in:\n${stdout}`);
  const next = lines[i + 1] ?? "";
  return { line: lines[i]!, fix: next.startsWith("      fix: ") ? next : null };
}

describe("doctor against Synapse", () => {
  let env: PreparedEnv;
  let bridge: RunningBridge | null = null;

  /** A copy of the config whose registration file is the real one with `change` applied. */
  function configWithRegistration(name: string, change: Record<string, string>): string {
    const reg = parse(readFileSync(env.config.appservice.registration_file, "utf8")) as Record<string, unknown>;
    const regFile = join(env.dir, `${name}.registration.yaml`);
    writeFileSync(regFile, stringify({ ...reg, ...change }));
    const cfg = parse(readFileSync(env.configFile, "utf8")) as { appservice: Record<string, unknown> };
    cfg.appservice.registration_file = regFile;
    const file = join(env.dir, `${name}.yaml`);
    writeFileSync(file, stringify(cfg));
    return file;
  }

  before(async () => {
    env = await prepareEnv("sqlite");
    // The MX host's address and its reverse DNS, so the whole report can pass.
    await env.setDnsRecords({ "mx.bridge.test": { A: ["127.0.0.1"] }, "1.0.0.127.in-addr.arpa": { PTR: ["mx.bridge.test"] } });
  });
  after(async () => {
    await bridge?.stop();
    await env?.stop();
  });

  it("the bridge not running: doctor answers the homeserver's ping on the appservice port itself", async () => {
    const run = await cli(["doctor", "-c", env.configFile]);
    const { line } = homeserverLines(run.stdout);
    assert.match(line, /^ok {4}homeserver: http:\/\/127\.0\.0\.1:\d+ has the registration "email-bridge" loaded and reached http:\/\/127\.0\.0\.1:\d+ in \d+ ms \(answered by doctor \(the bridge is not running\)\)$/);
  });

  it("an hs_token the appservice refuses: Synapse has an older registration loaded", async () => {
    const file = configWithRegistration("old-hs", { hs_token: "not-the-token-synapse-has" });
    const run = await cli(["doctor", "-c", file]);
    assert.equal(run.code, 1);
    const { line, fix } = homeserverLines(run.stdout);
    assert.match(line, /^fail {2}homeserver: .* reached http:\/\/127\.0\.0\.1:\d+, but doctor \(the bridge is not running\) refused its hs_token \(HTTP 403\): Synapse has an older registration loaded$/);
    assert.match(fix ?? "", /restart Synapse/);
  });

  it("the appservice port drops the homeserver's connections: homeserver cannot reach the appservice URL", async () => {
    const dropper = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => dropper.listen(env.config.appservice.port, env.config.appservice.bind_address, resolve));
    try {
      const run = await cli(["doctor", "-c", env.configFile]);
      assert.equal(run.code, 1);
      const { line, fix } = homeserverLines(run.stdout);
      assert.match(line, /^fail {2}homeserver: homeserver cannot reach the appservice URL http:\/\/127\.0\.0\.1:\d+: .* \(answering: the program holding 127\.0\.0\.1:\d+ \(the bridge, if it runs\)\)$/);
      assert.match(fix ?? "", /appservice\.url must be reachable from the Synapse host/);
    } finally {
      await new Promise<void>((resolve) => dropper.close(() => resolve()));
    }
  });

  it("the bridge running: the ping reaches it, and the whole report passes (exit 0)", async () => {
    bridge = await startBridge(env.config);
    const run = await cli(["doctor", "-c", env.configFile]);
    const { line } = homeserverLines(run.stdout);
    assert.match(line, /^ok {4}homeserver: .*reached the running bridge at http:\/\/127\.0\.0\.1:\d+/);
    assert.equal(run.code, 0, run.stdout + run.stderr);
    for (const check of ["config", "dns mx", "dns spf", "dns dkim", "dkim key", "dns dmarc", "reverse dns"]) {
      assert.match(run.stdout, new RegExp(`^ok {4}${check}: `, "m"), `${check} in:\n${run.stdout}`);
    }
  });

  it("an appservice ID other than the one Synapse loaded with this as_token: Synapse has another registration", async () => {
    const file = configWithRegistration("other-id", { id: "another-bridge" });
    const run = await cli(["doctor", "-c", file]);
    assert.equal(run.code, 1);
    const { line, fix } = homeserverLines(run.stdout);
    assert.match(line, /^fail {2}homeserver: .* knows the as_token, but not as appservice "another-bridge" \(Mismatching application service ID in path\)$/);
    assert.match(fix ?? "", /Synapse has another registration with this token loaded/);
  });

  it("an as_token Synapse does not know: token unknown, the registration is not loaded", async () => {
    const file = configWithRegistration("wrong-as", { as_token: "not-a-token-synapse-knows" });
    const run = await cli(["doctor", "-c", file]);
    assert.equal(run.code, 1);
    const { line, fix } = homeserverLines(run.stdout);
    assert.match(line, /^fail {2}homeserver: token unknown: http:\/\/127\.0\.0\.1:\d+ does not know the as_token of .*wrong-as\.registration\.yaml \(M_UNKNOWN_TOKEN\)$/);
    assert.match(fix ?? "", /^ {6}fix: registration not loaded: add .*wrong-as\.registration\.yaml to app_service_config_files in Synapse's homeserver\.yaml and restart Synapse$/);
  });

  it("the bridge pings at start: a registration ID Synapse does not know with this as_token is logged as a warning", async () => {
    await bridge?.stop();
    bridge = null;
    const file = configWithRegistration("started-other-id", { id: "another-bridge" });
    const regFile = (parse(readFileSync(file, "utf8")) as { appservice: { registration_file: string } }).appservice.registration_file;
    const lines: string[] = [];
    configureLogging({ write: (line) => lines.push(line) });
    try {
      bridge = await startBridge({ ...env.config, appservice: { ...env.config.appservice, registration_file: regFile } });
      const deadline = Date.now() + 15_000;
      const failed = () => lines.find((l) => l.includes("appservice ping through the homeserver failed"));
      while (!failed() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      assert.ok(failed(), `no ping warning in:\n${lines.join("\n")}`);
      assert.match(failed()!, /M_FORBIDDEN/);
      assert.match(failed()!, /another-bridge/);
      assert.ok(!lines.some((l) => l.includes("homeserver pinged the appservice")));
    } finally {
      configureLogging({ write: (line) => process.stderr.write(line + "\n") });
    }
  });
});
