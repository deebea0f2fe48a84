import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse } from "yaml";
import { ConfigError, loadConfig, validateConfig } from "../../src/config/load.ts";

const minimal = () => ({
  homeserver: { url: "http://127.0.0.1:8008", domain: "hs.example" },
  appservice: { url: "http://127.0.0.1:8090" },
  mail: { domain: "bridge.example" },
  smtp: { hostname: "mx.bridge.example" },
});

describe("config", () => {
  it("fills every default and resolves paths against the config file's folder", () => {
    const cfg = validateConfig(minimal(), "/etc/meb/config.yaml", "/etc/meb");
    assert.equal(cfg.smtp.port, 25);
    assert.equal(cfg.appservice.ghost_prefix, "email_");
    assert.equal(cfg.database.url, null);
    assert.equal(cfg.database.sqlite_file, "/etc/meb/data/bridge.sqlite");
    assert.equal(cfg.dkim.private_key_file, "/etc/meb/dkim.key");
    assert.deepEqual(cfg.permissions.allowed_users, []);
    assert.equal(cfg.outbound.mode, "direct");
  });

  it("names the key and the file in errors", () => {
    const bad = minimal() as Record<string, unknown>;
    (bad.smtp as Record<string, unknown>).port = "twenty-five";
    assert.throws(() => validateConfig(bad, "c.yaml", "/"), (err: ConfigError) => err instanceof ConfigError && err.key === "smtp.port" && /^c\.yaml: smtp\.port: /.test(err.message));
    const missing = minimal() as Record<string, unknown>;
    delete (missing.mail as Record<string, unknown>).domain;
    assert.throws(() => validateConfig(missing, "c.yaml", "/"), /c\.yaml: mail\.domain: is required/);
    const extra = { ...minimal(), smpt: {} };
    assert.throws(() => validateConfig(extra, "c.yaml", "/"), /c\.yaml: smpt: is not a known option/);
    const relay = { ...minimal(), outbound: { mode: "relay" } };
    assert.throws(() => validateConfig(relay, "c.yaml", "/"), /outbound\.relay: is required/);
    const pattern = { ...minimal(), permissions: { allowed_users: ["alice"] } };
    assert.throws(() => validateConfig(pattern, "c.yaml", "/"), /permissions\.allowed_users\.0/);
  });

  it("reports unreadable and non-YAML files", () => {
    const dir = mkdtempSync(join(tmpdir(), "meb-cfg-"));
    assert.throws(() => loadConfig(join(dir, "nope.yaml")), /nope\.yaml: \(top level\): cannot be read/);
    writeFileSync(join(dir, "bad.yaml"), "a: [1, 2\n");
    assert.throws(() => loadConfig(join(dir, "bad.yaml")), /bad\.yaml: \(top level\): is not valid YAML/);
  });

  it("config.sample.yaml is valid and lists every option", () => {
    const file = new URL("../../config.sample.yaml", import.meta.url).pathname;
    const cfg = loadConfig(file);
    const raw = parse(readFileSync(file, "utf8")) as Record<string, Record<string, unknown>>;
    for (const [section, values] of Object.entries(cfg)) {
      for (const key of Object.keys(values as object)) {
        assert.ok(raw[section] && key in raw[section], `config.sample.yaml lacks ${section}.${key}`);
      }
    }
  });
});

it("config.sample.yaml is what the schema renders (run `npm run generate-sample-config`)", async () => {
  const { renderSampleConfig } = await import("../../src/config/sample.ts");
  const file = new URL("../../config.sample.yaml", import.meta.url).pathname;
  assert.equal(readFileSync(file, "utf8"), renderSampleConfig());
});

it("docker-compose.yml and docker/bridge-config.yaml are in step", () => {
  const root = new URL("../../", import.meta.url).pathname;
  const cfg = loadConfig(join(root, "docker/bridge-config.yaml"));
  const compose = parse(readFileSync(join(root, "docker-compose.yml"), "utf8")) as {
    services: Record<string, { ports?: string[]; volumes?: string[]; environment?: Record<string, string> }>;
  };
  const services = compose.services;
  const host = (url: string) => new URL(url).hostname;
  assert.ok(services[host(cfg.homeserver.url)], "homeserver.url must name a compose service");
  assert.ok(services[host(cfg.appservice.url)], "appservice.url must name a compose service");
  assert.ok(services[host(cfg.database.url!)], "database.url must name a compose service");
  assert.ok(services[host(cfg.spam.rspamd_url!)], "spam.rspamd_url must name a compose service");
  const pg = new URL(cfg.database.url!);
  const env = services.postgres?.environment ?? {};
  assert.equal(pg.username, env.POSTGRES_USER);
  assert.equal(pg.password, env.POSTGRES_PASSWORD);
  assert.equal(pg.pathname.slice(1), env.POSTGRES_DB);
  assert.ok(services.bridge?.ports?.some((p) => p.endsWith(`:${cfg.smtp.port}`)), "the bridge must publish smtp.port");
  assert.equal(cfg.appservice.bind_address, "0.0.0.0");
  // Synapse reads the registration the bridge writes into its data folder.
  assert.ok(services.synapse?.volumes?.some((v) => v.startsWith("./data/bridge:")));
  assert.ok(services.bridge?.volumes?.some((v) => v.startsWith("./data/bridge:/data")));
});
