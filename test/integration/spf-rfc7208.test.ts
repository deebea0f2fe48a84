/**
 * The RFC 7208 SPF test suite (openspf.org, as shipped with pyspf; see
 * test/fixtures/spf/README.md) run through mailauth's SPF check, with every lookup going
 * through the bridge's resolver (src/mail/dns.ts, cache off) to a real DNS server on loopback
 * (test/harness/dnsServer.ts) that serves each scenario's `zonedata`.
 *
 * Every case must give one of its expected results, except those in {@link KNOWN_FAILURES},
 * which must still fail (so the list stays true: fix mailauth, then remove the entry).
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

/**
 * Cases mailauth (7.1.0, default mode) gets wrong, by test id: what it returns and why.
 * Each must still fail; remove an entry when mailauth is fixed.
 */
const KNOWN_FAILURES: Record<string, string> = {};

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

describe("RFC 7208 test suite through mailauth, the bridge's resolver and a real DNS server", () => {
  let dns: TestDns;
  const scenarios = loadSuite();
  const outcomes: Outcome[] = [];

  before(async () => {
    dns = await startDnsServer({ records: {} });
  });
  after(async () => {
    await dns?.stop();
  });

  test("the suite file is the one documented (16 scenarios, 203 cases)", () => {
    assert.equal(scenarios.length, 16);
    assert.equal(
      scenarios.reduce((n, s) => n + Object.keys(s.tests).length, 0),
      203,
    );
    for (const id of Object.keys(KNOWN_FAILURES)) {
      assert.ok(scenarios.some((s) => id in s.tests), `KNOWN_FAILURES names ${id}, which is not in the suite`);
    }
  });

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
      // One case at a time: c-ares fails every query in flight on a connection when one answer
      // on it is malformed (the suite's null-text record), which would leak into other cases.
      const results: Outcome[] = [];
      for (const [id, c] of Object.entries(scenario.tests)) {
        const res = await spf({
          sender: c.mailfrom,
          ip: c.host,
          helo: c.helo,
          mta: "mx.bridge.test",
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
      const wrong = results.filter((o) => !o.expected.includes(o.got) && !(o.id in KNOWN_FAILURES));
      const fixed = results.filter((o) => o.expected.includes(o.got) && o.id in KNOWN_FAILURES);
      assert.deepEqual(
        wrong.map((o) => `${o.id}: expected ${o.expected.join("|")}, got ${o.got} (${o.comment})`),
        [],
        "cases that fail and are not in KNOWN_FAILURES",
      );
      assert.deepEqual(
        fixed.map((o) => `${o.id}: now gives ${o.got}; remove it from KNOWN_FAILURES`),
        [],
        "KNOWN_FAILURES entries that pass",
      );
    });
  }

  test("every KNOWN_FAILURES entry ran", () => {
    const ran = new Set(outcomes.map((o) => o.id));
    assert.deepEqual(
      Object.keys(KNOWN_FAILURES).filter((id) => !ran.has(id)),
      [],
    );
  });
});
