import { it } from "node:test";
import assert from "node:assert/strict";
import { parse } from "yaml";
import { readFileSync } from "node:fs";
import { validateConfig } from "../../src/config/load.ts";
import { buildRegistration } from "../../src/cli/registration.ts";

const config = validateConfig(
  { homeserver: { url: "http://localhost:8008", domain: "example.org" }, appservice: { url: "http://localhost:8090" }, mail: { domain: "email.example.org" }, smtp: { hostname: "mx.example.org" } },
  "c.yaml",
  "/tmp",
);

it("claims the ghost prefix and the bot exclusively, with fresh tokens", () => {
  const a = buildRegistration(config);
  const b = buildRegistration(config);
  assert.notEqual(a.as_token, b.as_token);
  assert.notEqual(a.as_token, a.hs_token);
  assert.match(a.as_token, /^[0-9a-f]{64}$/);
  assert.equal(a.sender_localpart, "emailbot");
  assert.equal(a.url, "http://localhost:8090");
  const [ghosts, bot] = a.namespaces.users;
  assert.ok(ghosts?.exclusive && bot?.exclusive);
  const ghostRe = new RegExp(`^${ghosts.regex}$`);
  assert.ok(ghostRe.test("@email_bob=40example.org:example.org"));
  assert.ok(!ghostRe.test("@email_bob=40example.org:exampleXorg"));
  assert.ok(!ghostRe.test("@alice:example.org"));
  assert.ok(new RegExp(`^${bot!.regex}$`).test("@emailbot:example.org"));
  // Re-generation keeps the tokens Synapse already knows.
  assert.equal(buildRegistration(config, a).as_token, a.as_token);
});

it("registration.yaml.example matches what generate-registration writes, but for the tokens", () => {
  const example = parse(readFileSync(new URL("../../registration.yaml.example", import.meta.url), "utf8")) as Record<string, unknown>;
  const built = buildRegistration(config) as unknown as Record<string, unknown>;
  for (const key of ["id", "url", "sender_localpart", "rate_limited", "namespaces", "protocols", "receive_ephemeral", "de.sorunome.msc2409.push_ephemeral", "org.matrix.msc3202", "io.element.msc4190"]) {
    assert.deepEqual(example[key], built[key], key);
  }
});
