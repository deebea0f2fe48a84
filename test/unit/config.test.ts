import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse } from "yaml";
import { ConfigError, loadConfig, validateConfig } from "../../src/config/load.ts";
import { configSchema } from "../../src/config/schema.ts";

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

  it("reports every schema mistake at once: one ConfigError, one line per key, each naming the file", () => {
    const bad = {
      ...minimal(),
      smtp: { hostname: "mx.bridge.example", port: 70000 },
      outbound: { mode: "carrier-pigeon" },
      dkim: { selectr: "x" },
    };
    assert.throws(
      () => validateConfig(bad, "c.yaml", "/"),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError, String(err));
        assert.deepEqual(
          err.problems.map((p) => p.key).sort(),
          ["dkim.selectr", "outbound.mode", "smtp.port"],
        );
        const lines = err.message.split("\n");
        assert.equal(lines.length, 3, err.message);
        assert.ok(lines.includes("c.yaml: smtp.port: must be <= 65535"), err.message);
        assert.ok(lines.includes('c.yaml: outbound.mode: must be one of "direct", "relay"'), err.message);
        assert.ok(lines.includes("c.yaml: dkim.selectr: is not a known option"), err.message);
        return true;
      },
    );
  });

  it("reports schema mistakes and cross-field problems of the other sections together", () => {
    // smtp fails the schema, so its cross-field checks are skipped rather than run on bad values;
    // outbound passed the schema and its cross-field check still reports.
    const bad = { ...minimal(), smtp: { hostname: "mx.bridge.example", tls_cert_file: 5 }, outbound: { mode: "relay" } };
    assert.throws(
      () => validateConfig(bad, "c.yaml", "/"),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError, String(err));
        assert.deepEqual(err.problems, [
          { key: "smtp.tls_cert_file", problem: "must be string" },
          { key: "outbound.relay", problem: 'is required when outbound.mode is "relay"' },
        ]);
        return true;
      },
    );
  });

  it("names a bad key of a mapping (storage.encryption_keys) by that key", () => {
    const bad = { ...minimal(), storage: { encryption_keys: { "bad key": "k.key" } } };
    assert.throws(() => validateConfig(bad, "c.yaml", "/"), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.problems.length, 1, err.message);
      assert.match(err.message, /^c\.yaml: storage\.encryption_keys\.bad key: is not an allowed name: must match pattern/);
      return true;
    });
  });

  describe("cross-field checks, at load", () => {
    const problemsOf = (patch: Record<string, unknown>): string[] => {
      try {
        validateConfig({ ...minimal(), ...patch }, "c.yaml", "/etc/meb", {});
      } catch (err) {
        assert.ok(err instanceof ConfigError, String(err));
        return err.message.split("\n");
      }
      return [];
    };
    const smtp = (extra: Record<string, unknown>) => ({ smtp: { hostname: "mx.bridge.example", ...extra } });

    it("smtp: the TLS files come as a pair, and require_tls needs them", () => {
      assert.deepEqual(problemsOf(smtp({ tls_cert_file: "cert.pem" })), ["c.yaml: smtp.tls_key_file: must be set together with its pair (smtp.tls_cert_file and smtp.tls_key_file)"]);
      assert.deepEqual(problemsOf(smtp({ tls_key_file: "key.pem" })), ["c.yaml: smtp.tls_cert_file: must be set together with its pair (smtp.tls_cert_file and smtp.tls_key_file)"]);
      assert.deepEqual(problemsOf(smtp({ require_tls: true })), ["c.yaml: smtp.require_tls: needs smtp.tls_cert_file and smtp.tls_key_file (there is no STARTTLS without them)"]);
      const cfg = validateConfig({ ...minimal(), ...smtp({ require_tls: true, tls_cert_file: "cert.pem", tls_key_file: "/tls/key.pem" }) }, "c.yaml", "/etc/meb", {});
      assert.equal(cfg.smtp.tls_cert_file, "/etc/meb/cert.pem");
      assert.equal(cfg.smtp.tls_key_file, "/tls/key.pem");
    });

    it("outbound: relay mode needs outbound.relay; static routes are host:port with a port 1-65535", () => {
      assert.deepEqual(problemsOf({ outbound: { mode: "relay" } }), ['c.yaml: outbound.relay: is required when outbound.mode is "relay"']);
      assert.deepEqual(problemsOf({ outbound: { static_routes: { "a.example": "10.0.0.1:70000", "b.example": "mx.b.example:25" } } }), [
        'c.yaml: outbound.static_routes.a.example: port of "10.0.0.1:70000" must be 1-65535',
      ]);
      assert.deepEqual(problemsOf({ outbound: { static_routes: { "a.example": "10.0.0.1:0" } } }), ['c.yaml: outbound.static_routes.a.example: port of "10.0.0.1:0" must be 1-65535']);
      const cfg = validateConfig({ ...minimal(), outbound: { mode: "relay", relay: { host: "smtp.example.net" }, static_routes: { "a.example": "10.0.0.1:2525" } } }, "c.yaml", "/", {});
      assert.deepEqual(cfg.outbound.relay, { host: "smtp.example.net", port: 587, secure: false, username: null, password: null });
    });

    it("URLs must parse: homeserver.url, appservice.url, database.url; spam.rspamd_url without credentials", () => {
      assert.deepEqual(problemsOf({ homeserver: { url: "http://", domain: "hs.example" } }), ['c.yaml: homeserver.url: "http://" is not a valid URL']);
      assert.deepEqual(problemsOf({ appservice: { url: "https://bad host:8090" } }), ['c.yaml: appservice.url: "https://bad host:8090" is not a valid URL']);
      assert.deepEqual(problemsOf({ database: { url: "postgres://bridge@db:port/bridge" } }), ["c.yaml: database.url: is not a valid URL (postgres://user:password@host:port/database)"]);
      assert.deepEqual(problemsOf({ spam: { rspamd_url: "http://user:pw@127.0.0.1:11333" } }), ["c.yaml: spam.rspamd_url: must not contain a user name or password"]);
    });

    it("appservice.public_url: https (http only on loopback), no credentials, query or fragment; a trailing slash is dropped", () => {
      const as = (public_url: string) => ({ appservice: { url: "http://127.0.0.1:8090", public_url } });
      assert.deepEqual(problemsOf(as("http://bridge.example.org")), ["c.yaml: appservice.public_url: must be an https:// URL (http:// is allowed only for localhost, 127.0.0.1 or [::1])"]);
      assert.deepEqual(problemsOf(as("ftp://bridge.example.org")), ['c.yaml: appservice.public_url: "ftp://bridge.example.org" must be an https:// URL']);
      assert.deepEqual(problemsOf(as("https://u:p@bridge.example.org")), ["c.yaml: appservice.public_url: must not contain a user name or password"]);
      assert.deepEqual(problemsOf(as("https://bridge.example.org/?a=1")), ["c.yaml: appservice.public_url: must not have a query or fragment (the bridge appends /unsubscribe/<token>)"]);
      assert.deepEqual(problemsOf(as("bridge.example.org")), ['c.yaml: appservice.public_url: "bridge.example.org" is not a valid URL']);
      assert.equal(validateConfig({ ...minimal(), ...as("https://bridge.example.org/email/") }, "c.yaml", "/", {}).appservice.public_url, "https://bridge.example.org/email");
      assert.equal(validateConfig({ ...minimal(), ...as("http://127.0.0.1:8090") }, "c.yaml", "/", {}).appservice.public_url, "http://127.0.0.1:8090");
      assert.equal(validateConfig(minimal(), "c.yaml", "/", {}).appservice.public_url, null);
    });

    it("permissions, dns and inbound: user patterns, nameserver addresses, retry delays", () => {
      assert.deepEqual(problemsOf({ permissions: { allowed_users: ["@*:hs.example", "alice"] } }), ["c.yaml: permissions.allowed_users.1: must look like @localpart:server (with * wildcards)"]);
      assert.deepEqual(problemsOf({ dns: { nameservers: ["127.0.0.1:53", "ns.example"] } }), ['c.yaml: dns.nameservers.1: "ns.example" must be ip, ip:port or [ipv6]:port']);
      assert.deepEqual(problemsOf({ inbound: { retry_base_ms: 5000, retry_max_ms: 1000 } }), ["c.yaml: inbound.retry_max_ms: must be at least inbound.retry_base_ms"]);
    });

    it("every cross-field problem is reported, not only the first", () => {
      assert.deepEqual(problemsOf({ ...smtp({ require_tls: true }), outbound: { mode: "relay" }, inbound: { retry_base_ms: 5000, retry_max_ms: 1000 } }), [
        "c.yaml: smtp.require_tls: needs smtp.tls_cert_file and smtp.tls_key_file (there is no STARTTLS without them)",
        'c.yaml: outbound.relay: is required when outbound.mode is "relay"',
        "c.yaml: inbound.retry_max_ms: must be at least inbound.retry_base_ms",
      ]);
    });
  });

  it("every key of the schema has a description (the config.sample.yaml comment)", () => {
    type Node = { description?: string; properties?: Record<string, Node> };
    const walk = (node: Node, path: string): void => {
      for (const [key, child] of Object.entries(node.properties ?? {})) {
        assert.ok((child.description ?? "").length > 3, `${path}${key} has no description`);
        walk(child, `${path}${key}.`);
      }
    };
    walk(configSchema as Node, "");
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
  // The optional listeners, off in the sample, are published as comments with their default ports.
  const composeText = readFileSync(join(root, "docker-compose.yml"), "utf8");
  assert.match(composeText, new RegExp(`# - "${cfg.submission.port}:${cfg.submission.port}"`), "submission.port, commented");
  assert.match(composeText, new RegExp(`# - "127\\.0\\.0\\.1:${cfg.admin_api.port}:${cfg.admin_api.port}"`), "admin_api.port, commented");
  assert.equal(cfg.appservice.bind_address, "0.0.0.0");
  // Synapse reads the registration the bridge writes into its data folder.
  assert.ok(services.synapse?.volumes?.some((v) => v.startsWith("./data/bridge:")));
  assert.ok(services.bridge?.volumes?.some((v) => v.startsWith("./data/bridge:/data")));
});
