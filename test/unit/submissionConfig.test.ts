/**
 * The `submission` config section: off by default on port 587; enabling it needs TLS files (its
 * own or smtp's), named in the error; its files are resolved against the config's folder.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError, validateConfig } from "../../src/config/load.ts";
import { submissionListenerConfig } from "../../src/bridge/Submission.ts";

const minimal = (over: Record<string, unknown> = {}) => ({
  homeserver: { url: "http://127.0.0.1:8008", domain: "hs.example" },
  appservice: { url: "http://127.0.0.1:8090" },
  mail: { domain: "bridge.example" },
  smtp: { hostname: "mx.bridge.example" },
  ...over,
});

test("submission is off by default, on port 587", () => {
  const cfg = validateConfig(minimal(), "/etc/meb/config.yaml", "/etc/meb");
  assert.equal(cfg.submission.enabled, false);
  assert.equal(cfg.submission.port, 587);
  assert.equal(cfg.submission.max_auth_failures_per_ip, 5);
});

test("enabling submission without any TLS files is a config error naming submission.tls_cert_file", () => {
  assert.throws(
    () => validateConfig(minimal({ submission: { enabled: true } }), "c.yaml", "/"),
    (err: unknown) => err instanceof ConfigError && err.problems.some((p) => p.key === "submission.tls_cert_file") && /c\.yaml: submission\.tls_cert_file: is required when submission\.enabled is true/.test(err.message),
  );
  assert.throws(() => validateConfig(minimal({ submission: { tls_cert_file: "cert.pem" } }), "c.yaml", "/"), /submission\.tls_key_file: must be set together/);
});

test("submission uses its own TLS files, else smtp's, and the MX listener's limits", () => {
  const own = validateConfig(minimal({ submission: { enabled: true, tls_cert_file: "sub.crt", tls_key_file: "sub.key" } }), "/etc/meb/c.yaml", "/etc/meb");
  const ownListener = submissionListenerConfig(own);
  assert.equal(ownListener.tls_cert_file, "/etc/meb/sub.crt");
  assert.equal(ownListener.tls_key_file, "/etc/meb/sub.key");
  assert.equal(ownListener.max_message_bytes, own.smtp.max_message_bytes);
  assert.equal(ownListener.hostname, "mx.bridge.example");
  const shared = validateConfig(
    minimal({ smtp: { hostname: "mx.bridge.example", tls_cert_file: "mx.crt", tls_key_file: "mx.key" }, submission: { enabled: true } }),
    "/etc/meb/c.yaml",
    "/etc/meb",
  );
  assert.equal(submissionListenerConfig(shared).tls_cert_file, "/etc/meb/mx.crt");
  assert.equal(submissionListenerConfig(shared).tls_key_file, "/etc/meb/mx.key");
});
