/**
 * The RFC 7208 SPF test suite (openspf.org, as shipped with pyspf; see
 * test/fixtures/spf/README.md) run through mailauth's SPF check, in its default (lenient) mode
 * and in strict mode, with every lookup going through the bridge's resolver (src/mail/dns.ts,
 * cache off) to a real DNS server on loopback (test/harness/dnsServer.ts) that serves each
 * scenario's `zonedata`.
 *
 * Every case must give one of its expected results, except those in {@link KNOWN_FAILURES},
 * which must still fail (so the list stays true: when one passes, remove it).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { spf } from "mailauth";
import { startDnsServer } from "../harness/dns.ts";
import type { TestDns, Zone, ZoneRecordSet } from "../harness/dns.ts";
import { DnsResolver } from "../../src/mail/dns.ts";

const SUITE_FILE = new URL("../fixtures/spf/rfc7208-tests.yml", import.meta.url);

/** Per-try DNS timeout, in ms: the suite's TIMEOUT names cost this much (and one Node timer tick at most). */
const DNS_TIMEOUT_MS = 300;

/** The characters Node's resolver refuses in a name (EBADNAME, nothing sent); checked in test/integration/dns.test.ts. */
const REFUSED_CHARS = "space ! \" # $ % & ' ( ) + , : ; < = > ? @ [ ] ^ ` { | } ~";

/** A failure caused by the resolver refusing the name `name` (the zone has the record mailauth looks for). */
function nameRefused(name: string, want: string): string {
  return (
    `permerror instead of ${want}: Node's resolver (node:dns over c-ares 1.34) refuses ${JSON.stringify(name)} with EBADNAME ` +
    `before sending a query (it refuses any of ${REFUSED_CHARS}) and mailauth maps EBADNAME to permerror; ` +
    `the name is a valid RFC 7208 target and its record is in the zone (with a resolver that sends it, mailauth gives ${want})`
  );
}

/** Failures that come from the resolver layer, so both modes have them. */
const RESOLVER_FAILURES: Record<string, string> = {
  "null-text":
    "temperror instead of pass: one of null.example.com's two TXT records has no character-strings (RFC 1035 forbids it; " +
    "the suite says SPF must not crash on it); c-ares rejects the whole answer as EBADRESP, so mailauth never sees the valid " +
    'record ("v=spf1 ip4:" "192.0.2.5 -all") and returns temperror',
  "a-colon-domain": nameRefused("foo:bar/baz.example.com", "pass"),
  "a-colon-domain-ip4mapped": nameRefused("foo:bar/baz.example.com", "pass"),
  "mx-colon-domain": nameRefused("foo:bar/baz.example.com", "pass"),
  "mx-colon-domain-ip4mapped": nameRefused("foo:bar/baz.example.com", "pass"),
  "macro-mania-in-domain": nameRefused("macro%percent  space%20url-space.example.com", "pass"),
};

/**
 * Cases that fail, by mailauth mode and test id: what mailauth (7.1.0) returns and why.
 * Each must still fail; remove an entry when it passes.
 */
const KNOWN_FAILURES: Record<"default" | "strict", Record<string, string>> = {
  strict: RESOLVER_FAILURES,
  default: {
    ...RESOLVER_FAILURES,
    "bare-ip6":
      'fail instead of permerror: "v=spf1 -all ip6" has a syntax error (ip6 needs ":" and a network, RFC 7208 §5.6); ' +
      "the default mode evaluates left to right and stops at -all before reaching it (strict mode validates the whole record first)",
    "exp-syntax-error":
      'neutral instead of permerror: "v=spf1 exp=-all": "-all" is not a domain-spec (RFC 7208 §6.2); the default mode only ' +
      "checks exp= values for emptiness, so the record has no mechanisms and gives neutral",
    "exp-twice":
      'fail instead of permerror: "exp=" appears twice, which RFC 7208 §6 makes a permerror; the default mode does not check ' +
      "for duplicate modifiers and evaluates -all",
    "exp-only-macro-char":
      'fail instead of permerror: "exp=%{r}.example.com" uses the r macro outside explanation text (RFC 7208 §7.3 allows c, r ' +
      "and t only there); the default mode expands it and evaluates -all",
    "invalid-hello-macro":
      "permerror instead of fail: a:%{H} with HELO \"JUMPIN' JUPITER\" expands to \"JUMPIN%27%20JUPITER\"; the default mode's " +
      "check before each query (a dot and an alphabetic top label) rejects it as permerror, where RFC 7208 §7.1 says the term " +
      "just does not match (strict mode skips it and reaches -all)",
    "hello-domain-literal":
      'permerror instead of fail: a:%{H} with HELO "[192.168.218.40]" expands to "%5B192.168.218.40%5D", whose top label is ' +
      "not alphabetic; the default mode's pre-query name check makes that permerror instead of a non-matching term",
    "require-valid-helo":
      'permerror instead of fail: the included policy has -a:%{h} and the HELO is "OEMCOMPUTER" (one label); the default ' +
      "mode's pre-query name check makes that permerror instead of a non-matching term, so +all is never reached",
  },
};

/** One test case of the suite (RFC 7208 suite schema). */
interface SuiteCase {
  description?: string;
  comment?: string;
  spec: string | string[];
  helo: string;
  host: string;
  mailfrom: string;
  /** The result, or a list of acceptable results (the first preferred). */
  result: string | string[];
  explanation?: string;
}

/** One scenario: its cases and the DNS data they run against. */
interface SuiteScenario {
  description: string;
  tests: Record<string, SuiteCase>;
  zonedata?: Record<string, unknown[]>;
}

/**
 * Translate a scenario's `zonedata` into a {@link Zone}, the way the suite's reference driver
 * (pyspf's testspf.py) reads it:
 * - `{TXT: s}` / `{SPF: s}`: a record, `s` a string or a list of strings (character-strings);
 *   `NONE` means no record of that type.
 * - SPF records are also published as TXT when the name has no TXT entry at all (not even
 *   `TXT: NONE`): the suite labels most policies SPF but means them for either type.
 * - `{A: ip}`, `{AAAA: ip}`, `{PTR: name}`, `{CNAME: name}`, `{MX: [priority, name]}`.
 * - the bare word `TIMEOUT`: queries of the name for types it has no records of get no reply
 *   (every query, when it has no records).
 * @throws Error for an entry of another form, so a suite update cannot be half understood
 */
function zoneFromSuite(zonedata: Record<string, unknown[]>): Zone {
  const zone: Zone = { records: {}, timeout: [], timeoutNoData: [] };
  for (const [name, entries] of Object.entries(zonedata)) {
    const set: ZoneRecordSet = {};
    let hasTxtEntry = false;
    let timesOut = false;
    for (const entry of entries) {
      if (entry === "TIMEOUT") {
        timesOut = true;
        continue;
      }
      if (!entry || typeof entry !== "object" || Array.isArray(entry)) throw new Error(`zonedata ${name}: unknown entry ${JSON.stringify(entry)}`);
      for (const [type, value] of Object.entries(entry)) {
        switch (type) {
          case "TXT":
          case "SPF":
            if (type === "TXT") hasTxtEntry = true;
            if (value === "NONE") break;
            if (typeof value !== "string" && !(Array.isArray(value) && value.every((s) => typeof s === "string"))) {
              throw new Error(`zonedata ${name}: ${type} ${JSON.stringify(value)}`);
            }
            (set[type] ??= []).push(value as string | string[]);
            break;
          case "A":
          case "AAAA":
          case "PTR":
          case "CNAME":
            if (typeof value !== "string") throw new Error(`zonedata ${name}: ${type} ${JSON.stringify(value)}`);
            (set[type] ??= []).push(value);
            break;
          case "MX": {
            const [priority, exchange] = value as [unknown, unknown];
            if (!Array.isArray(value) || value.length !== 2 || typeof priority !== "number" || typeof exchange !== "string") {
              throw new Error(`zonedata ${name}: MX ${JSON.stringify(value)}`);
            }
            (set.MX ??= []).push({ priority, exchange });
            break;
          }
          default:
            throw new Error(`zonedata ${name}: unknown type ${type}`);
        }
      }
    }
    if (!hasTxtEntry && set.SPF) set.TXT = [...set.SPF];
    zone.records[name] = set;
    if (timesOut) (Object.keys(set).length > 0 ? zone.timeoutNoData! : zone.timeout!).push(name);
  }
  return zone;
}

/** The suite's scenarios, in file order. */
function loadSuite(): SuiteScenario[] {
  const docs = parseAllDocuments(readFileSync(SUITE_FILE, "utf8"));
  const out: SuiteScenario[] = [];
  for (const doc of docs) {
    if (doc.errors.length > 0) throw new Error(`rfc7208-tests.yml: ${doc.errors.map((e) => e.message).join("; ")}`);
    out.push(doc.toJS() as SuiteScenario);
  }
  return out;
}

/** What one case gave. */
interface Outcome {
  scenario: string;
  id: string;
  expected: string[];
  got: string;
  comment: string;
}

const scenarios = loadSuite();
let dns: TestDns;

before(async () => {
  dns = await startDnsServer({ records: {} });
});
after(async () => {
  await dns?.stop();
});

test("the suite file is the one documented (16 scenarios, 203 cases) and KNOWN_FAILURES names its cases", () => {
  assert.equal(scenarios.length, 16);
  assert.equal(
    scenarios.reduce((n, s) => n + Object.keys(s.tests).length, 0),
    203,
  );
  for (const [mode, list] of Object.entries(KNOWN_FAILURES)) {
    for (const id of Object.keys(list)) {
      assert.ok(scenarios.some((s) => id in s.tests), `KNOWN_FAILURES.${mode} names ${id}, which is not in the suite`);
    }
  }
});

for (const mode of ["default", "strict"] as const) {
  describe(`RFC 7208 suite, mailauth ${mode} mode, bridge resolver, real DNS server`, () => {
    const known = KNOWN_FAILURES[mode];
    const outcomes: Outcome[] = [];

    for (const scenario of scenarios) {
      test(scenario.description, async () => {
        await dns.setZone(zoneFromSuite(scenario.zonedata ?? {}));
        const resolver = new DnsResolver({
          nameservers: [dns.nameserver],
          timeoutMs: DNS_TIMEOUT_MS,
          tries: 1,
          cacheEntries: 0,
          cacheTtlMs: 0,
        });
        // One case at a time: c-ares fails every query in flight on a connection when one
        // answer on it is malformed (the suite's null-text record), which would leak into
        // other cases.
        const results: Outcome[] = [];
        for (const [id, c] of Object.entries(scenario.tests)) {
          const res = await spf({
            sender: c.mailfrom,
            ip: c.host,
            helo: c.helo,
            mta: "mx.bridge.test",
            strict: mode === "strict",
            resolver: resolver.lookup as never,
          });
          results.push({
            scenario: scenario.description,
            id,
            expected: Array.isArray(c.result) ? c.result : [c.result],
            got: res.status.result,
            comment: res.status.comment ?? "",
          });
        }
        outcomes.push(...results);
        const wrong = results.filter((o) => !o.expected.includes(o.got) && !(o.id in known));
        const fixed = results.filter((o) => o.expected.includes(o.got) && o.id in known);
        assert.deepEqual(
          wrong.map((o) => `${o.id}: expected ${o.expected.join("|")}, got ${o.got} (${o.comment})`),
          [],
          "cases that fail and are not in KNOWN_FAILURES",
        );
        assert.deepEqual(
          fixed.map((o) => `${o.id}: now gives ${o.got}; remove it from KNOWN_FAILURES.${mode}`),
          [],
          "KNOWN_FAILURES entries that pass",
        );
      });
    }

    test("totals", (t) => {
      const ran = new Set(outcomes.map((o) => o.id));
      assert.deepEqual(
        Object.keys(known).filter((id) => !ran.has(id)),
        [],
        "every KNOWN_FAILURES entry ran",
      );
      const passed = outcomes.filter((o) => o.expected.includes(o.got)).length;
      t.diagnostic(`mailauth ${mode} mode: ${passed} of ${outcomes.length} pass, ${outcomes.length - passed} known failures`);
      assert.equal(outcomes.length, 203);
      assert.equal(passed, 203 - Object.keys(known).length);
    });
  });
}
