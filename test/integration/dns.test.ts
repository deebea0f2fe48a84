/**
 * The bridge's DNS resolver (src/mail/dns.ts) against a real authoritative DNS server on
 * loopback (test/harness/dnsServer.ts): every answer crosses the wire through c-ares, and the
 * server's query log shows what the resolver actually asked (for the cache and TCP tests).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { startDnsServer, zoneFromZoneFile } from "../harness/dns.ts";
import type { LoggedQuery, TestDns, Zone } from "../harness/dns.ts";
import { DnsResolver, isNegativeDnsAnswer, isTemporaryDnsError, reverseName } from "../../src/mail/dns.ts";
import type { DnsResolverOptions } from "../../src/mail/dns.ts";
import { dkimTxtRecord } from "../../src/mail/outbound/dkim.ts";
import { dnsRecords, formatZone } from "../../src/mail/outbound/dnsRecords.ts";

/** The reverse-zone names, written out by hand (not computed by the code under test). */
const PTR_V4 = "10.2.0.192.in-addr.arpa"; // 192.0.2.10
const PTR_V6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"; // 2001:db8::1
const PTR_NAT64 = "1.2.2.0.0.0.0.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.b.9.f.f.4.6.0.0.ip6.arpa"; // 64:ff9b::192.0.2.33

const BASE_ZONE: Zone = {
  records: {
    "mail.example.test": { A: ["192.0.2.10", "192.0.2.11"], AAAA: ["2001:db8::10"] },
    "example.test": {
      MX: [
        { exchange: "mx2.example.test.", priority: 20 },
        { exchange: "mx1.example.test", priority: 10 },
      ],
      TXT: [["v=spf1 ip4:192.0.2.0/24 ", "a:mail.example.test -all"], "google-site-verification=abc"],
    },
    "alias.example.test": { CNAME: ["mail.example.test."] },
    [PTR_V4]: { PTR: ["mail.example.test."] },
    [PTR_V6]: { PTR: ["v6.example.test"] },
    [PTR_NAT64]: { PTR: ["nat64.example.test"] },
    "sel._domainkey.deep.example.test": { TXT: ["v=DKIM1; p=x"] },
  },
  timeout: ["slow.example.test"],
  servfail: ["broken.example.test"],
};

const OPTS: DnsResolverOptions = { nameservers: [], timeoutMs: 1000, tries: 1, cacheEntries: 100, cacheTtlMs: 60_000 };

let dns: TestDns;

/** A resolver pointed at the test server; `opts` override {@link OPTS}. */
function resolver(opts: Partial<DnsResolverOptions> = {}, now?: () => number): DnsResolver {
  return new DnsResolver({ ...OPTS, nameservers: [dns.nameserver], ...opts }, now);
}

/** The rejection of `p` (fails the test when `p` resolves). */
async function rejection(p: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    const v = await p;
    assert.fail(`expected a rejection, got ${JSON.stringify(v)}`);
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err;
    return err as Error & { code?: string };
  }
}

/** `type name` of each logged query, for compact assertions. */
function asked(log: LoggedQuery[]): string[] {
  return log.map((q) => `${q.type} ${q.name.toLowerCase()}`);
}

before(async () => {
  dns = await startDnsServer(BASE_ZONE);
});

after(async () => {
  await dns?.stop();
});

describe("DnsResolver against a real DNS server", () => {
  test("A and AAAA records", async () => {
    await dns.setZone(BASE_ZONE);
    const r = resolver();
    assert.deepEqual((await r.resolve("mail.example.test", "A")).sort(), ["192.0.2.10", "192.0.2.11"]);
    assert.deepEqual(await r.resolve("MAIL.Example.TEST.", "AAAA"), ["2001:db8::10"]);
    // The mailauth-shaped lookup goes the same way.
    assert.deepEqual((await r.lookup("mail.example.test", "A")).sort(), ["192.0.2.10", "192.0.2.11"]);
  });

  test("MX records keep exchange and priority; a CNAME is followed to its target's A", async () => {
    await dns.setZone(BASE_ZONE);
    const r = resolver();
    const mx = (await r.resolveMx("example.test")).map(({ exchange, priority }) => ({ exchange, priority }));
    assert.deepEqual(
      mx.sort((a, b) => a.priority - b.priority),
      [
        { exchange: "mx1.example.test", priority: 10 },
        { exchange: "mx2.example.test", priority: 20 },
      ],
    );
    assert.deepEqual((await r.resolve("alias.example.test", "A")).sort(), ["192.0.2.10", "192.0.2.11"]);
    assert.deepEqual(await r.resolve("alias.example.test", "CNAME"), ["mail.example.test"]);
  });

  test("TXT records come back as their character-strings, unjoined", async () => {
    await dns.setZone(BASE_ZONE);
    const txt = (await resolver().resolve("example.test", "TXT")) as string[][];
    assert.deepEqual(
      txt.sort((a, b) => a[0]!.localeCompare(b[0]!)),
      [["google-site-verification=abc"], ["v=spf1 ip4:192.0.2.0/24 ", "a:mail.example.test -all"]],
    );
  });

  test("a DKIM record over 512 bytes, from the dns-records zone text, is fetched over TCP", async () => {
    // A 4096-bit key: its record (~755 bytes) does not fit a 512-byte UDP answer.
    const { publicKey } = generateKeyPairSync("rsa", { modulusLength: 4096 });
    const dkim = dkimTxtRecord(publicKey.export({ type: "spki", format: "pem" }) as string);
    assert.ok(Buffer.byteLength(dkim) > 512, `record is ${Buffer.byteLength(dkim)} bytes`);
    const zoneText = formatZone(
      dnsRecords({ mailDomain: "Bridge.Example.TEST", mxHost: "smtp.bridge.example.test", selector: "meb", dkimPublicTxt: dkim }),
    );
    const records = zoneFromZoneFile(zoneText);
    assert.ok(records["meb._domainkey.bridge.example.test"]?.TXT?.[0]?.length === Math.ceil(Buffer.byteLength(dkim) / 255));
    await dns.setZone({ records });
    await dns.takeQueries();

    const r = resolver();
    const answer = (await r.resolve("meb._domainkey.bridge.example.test", "TXT")) as string[][];
    assert.equal(answer.length, 1);
    assert.equal(answer[0]!.join(""), dkim);
    const log = await dns.takeQueries();
    assert.deepEqual(
      log.map((q) => `${q.transport} ${q.type}`),
      ["udp TXT", "tcp TXT"],
      "the truncated UDP answer must be retried over TCP",
    );

    // The rest of the dns-records output resolves too.
    assert.deepEqual(
      (await r.resolveMx("bridge.example.test")).map(({ exchange, priority }) => ({ exchange, priority })),
      [{ exchange: "smtp.bridge.example.test", priority: 10 }],
    );
    assert.deepEqual(await r.resolve("bridge.example.test", "TXT"), [["v=spf1 a:smtp.bridge.example.test mx -all"]]);
    assert.deepEqual(await r.resolve("_dmarc.bridge.example.test", "TXT"), [["v=DMARC1; p=quarantine; adkim=s; aspf=r"]]);
  });

  test("reverse() finds PTR names for IPv4, IPv4-mapped, IPv6 and NAT64 addresses", async () => {
    await dns.setZone(BASE_ZONE);
    const r = resolver();
    assert.equal(reverseName("192.0.2.10"), PTR_V4);
    assert.equal(reverseName("2001:db8::1"), PTR_V6);
    assert.equal(reverseName("64:ff9b::192.0.2.33"), PTR_NAT64);
    assert.deepEqual(await r.reverse("192.0.2.10"), ["mail.example.test"]);
    assert.deepEqual(await r.reverse("::ffff:192.0.2.10"), ["mail.example.test"]);
    assert.deepEqual(await r.reverse("::ffff:c000:20a"), ["mail.example.test"]);
    assert.deepEqual(await r.reverse("2001:db8::1"), ["v6.example.test"]);
    assert.deepEqual(await r.reverse("2001:0DB8:0:0:0:0:0:1"), ["v6.example.test"]);
    assert.deepEqual(await r.reverse("64:ff9b::192.0.2.33"), ["nat64.example.test"]);
    assert.throws(() => reverseName("192.0.2"), RangeError);

    // smtp-server's callback form.
    const names = await new Promise<string[] | undefined>((resolve, reject) =>
      r.callbackApi.reverse("192.0.2.10", (err, hostnames) => (err ? reject(err) : resolve(hostnames))),
    );
    assert.deepEqual(names, ["mail.example.test"]);
    const err = await new Promise<Error | null>((resolve) => r.callbackApi.reverse("192.0.2.99", (e) => resolve(e)));
    assert.equal((err as Error & { code?: string })?.code, "ENOTFOUND");
  });

  test("NXDOMAIN is ENOTFOUND and NODATA is ENODATA: definite, not temporary", async () => {
    await dns.setZone(BASE_ZONE);
    const r = resolver();
    const nx = await rejection(r.resolve("nothing.example.test", "A"));
    assert.equal(nx.code, "ENOTFOUND");
    assert.equal(isNegativeDnsAnswer(nx), true);
    assert.equal(isTemporaryDnsError(nx), false);

    const nodata = await rejection(r.resolve("mail.example.test", "MX"));
    assert.equal(nodata.code, "ENODATA");
    assert.equal(isNegativeDnsAnswer(nodata), true);
    assert.equal(isTemporaryDnsError(nodata), false);

    // An empty non-terminal (only a longer name exists under it) is NODATA, not NXDOMAIN.
    const ent = await rejection(r.resolve("deep.example.test", "TXT"));
    assert.equal(ent.code, "ENODATA");
  });

  test("a server that never answers gives ETIMEOUT within the configured time, and is temporary", async () => {
    await dns.setZone(BASE_ZONE);
    await dns.takeQueries();
    const r = resolver({ timeoutMs: 200, tries: 1 });
    const started = Date.now();
    const err = await rejection(r.resolve("slow.example.test", "TXT"));
    const elapsed = Date.now() - started;
    assert.equal(err.code, "ETIMEOUT");
    assert.equal(isTemporaryDnsError(err), true);
    assert.equal(isNegativeDnsAnswer(err), false);
    assert.ok(elapsed >= 150 && elapsed < 3000, `took ${elapsed} ms`);
    assert.deepEqual(asked(await dns.takeQueries()), ["TXT slow.example.test"]);

    // tries: 4 asks four times, each try waiting timeoutMs (not doubling: c-ares's default
    // backoff would make it 300 + 600 + 1200 + 2400 = 4500 ms). Node checks c-ares timeouts on a
    // timer that ticks every timeoutMs, so a try can end up to one tick late (2 × 4 × 300); the
    // upper bound leaves room for a loaded machine and still tells the two apart.
    const r3 = resolver({ timeoutMs: 300, tries: 4 });
    const started3 = Date.now();
    assert.equal((await rejection(r3.resolve("slow.example.test", "A"))).code, "ETIMEOUT");
    const elapsed3 = Date.now() - started3;
    assert.ok(elapsed3 >= 1100 && elapsed3 < 3800, `4 tries of 300 ms took ${elapsed3} ms`);
    assert.deepEqual(asked(await dns.takeQueries()), ["A slow.example.test", "A slow.example.test", "A slow.example.test", "A slow.example.test"]);

    // Not cached: once the server answers, so does the resolver.
    await dns.setZone({ records: { "slow.example.test": { TXT: ["back"] } } });
    assert.deepEqual(await r.resolve("slow.example.test", "TXT"), [["back"]]);
  });

  test("SERVFAIL is ESERVFAIL, temporary, and not cached", async () => {
    await dns.setZone(BASE_ZONE);
    await dns.takeQueries();
    const r = resolver();
    for (let i = 0; i < 2; i++) {
      const err = await rejection(r.resolve("broken.example.test", "A"));
      assert.equal(err.code, "ESERVFAIL");
      assert.equal(isTemporaryDnsError(err), true);
    }
    assert.deepEqual(asked(await dns.takeQueries()), ["A broken.example.test", "A broken.example.test"]);
  });

  test("a malformed reply (a TXT record with no strings) is EBADRESP: temporary, not cached", async () => {
    await dns.setZone({ records: { "empty.example.test": { TXT: [[]] } }, timeout: ["slow.example.test"] });
    const r = resolver({ timeoutMs: 300 });
    const err = await rejection(r.resolve("empty.example.test", "TXT"));
    assert.equal(err.code, "EBADRESP");
    assert.equal(isTemporaryDnsError(err), true);

    // c-ares drops the connection a bad reply came on, failing what else was in flight on it:
    // whatever a concurrent lookup gets, it must be classed as temporary.
    const [bad, other] = await Promise.allSettled([r.resolve("empty.example.test", "TXT"), r.resolve("slow.example.test", "A")]);
    for (const s of [bad, other]) {
      assert.equal(s.status, "rejected");
      assert.equal(isTemporaryDnsError(s.reason), true, `code ${(s.reason as { code?: string }).code}`);
    }

    await dns.setZone({ records: { "empty.example.test": { TXT: ["fixed"] } } });
    assert.deepEqual(await r.resolve("empty.example.test", "TXT"), [["fixed"]]);
  });

  test("names with characters Node's resolver refuses fail with EBADNAME before any query", async () => {
    // RFC 7208 macros can expand to such names (e.g. %{l} of "user+tag"); mailauth then
    // returns permerror. See test/fixtures/spf/README.md.
    await dns.setZone(BASE_ZONE);
    await dns.takeQueries();
    const r = resolver();
    for (const name of ["user+tag.example.test", "foo:bar.example.test", "a b.example.test"]) {
      const err = await rejection(r.resolve(name, "A"));
      assert.equal(err.code, "EBADNAME", name);
      assert.equal(isTemporaryDnsError(err), false);
      assert.equal(isNegativeDnsAnswer(err), false);
    }
    assert.deepEqual(asked(await dns.takeQueries()), []);
  });

  test("answers are cached for cacheTtlMs, then asked again", async () => {
    await dns.setZone({ records: { "c.example.test": { A: ["192.0.2.1"] } } });
    await dns.takeQueries();
    let now = 1_000_000;
    const r = resolver({ cacheTtlMs: 10_000 }, () => now);
    assert.deepEqual(await r.resolve("c.example.test", "A"), ["192.0.2.1"]);

    await dns.setZone({ records: { "c.example.test": { A: ["192.0.2.2"] } } });
    now += 9_999;
    assert.deepEqual(await r.resolve("C.example.test.", "A"), ["192.0.2.1"], "fresh cache entry, same key for any case and trailing dot");
    assert.deepEqual(asked(await dns.takeQueries()), ["A c.example.test"]);

    now += 1;
    assert.deepEqual(await r.resolve("c.example.test", "A"), ["192.0.2.2"], "expired entry is asked again");
    assert.deepEqual(asked(await dns.takeQueries()), ["A c.example.test"]);
  });

  test("a caller that changes an answer (sorts MX, edits TXT) does not change the cached one", async () => {
    await dns.setZone({ records: { "m.example.test": { MX: [{ exchange: "mx1.example.test", priority: 20 }, { exchange: "mx2.example.test", priority: 10 }], TXT: ["v=spf1 -all"] } } });
    const r = resolver({ cacheTtlMs: 60_000 });
    const mx = (await r.resolve("m.example.test", "MX")) as { exchange: string; priority: number }[];
    const want = structuredClone(mx);
    mx.sort((a, b) => a.priority - b.priority);
    mx[0]!.exchange = "changed.example.test";
    mx.push({ exchange: "added.example.test", priority: 1 });
    assert.deepEqual(await r.resolve("m.example.test", "MX"), want);
    const txt = (await r.resolve("m.example.test", "TXT")) as string[][];
    txt[0]![0] = "changed";
    txt[0]!.push("more");
    assert.deepEqual(await r.resolve("m.example.test", "TXT"), [["v=spf1 -all"]]);
  });

  test("NXDOMAIN and NODATA are cached too", async () => {
    await dns.setZone({ records: { "n.example.test": { A: ["192.0.2.1"] } } });
    await dns.takeQueries();
    let now = 5_000_000;
    const r = resolver({ cacheTtlMs: 10_000 }, () => now);
    assert.equal((await rejection(r.resolve("new.example.test", "A"))).code, "ENOTFOUND");
    assert.equal((await rejection(r.resolve("n.example.test", "TXT"))).code, "ENODATA");

    await dns.setZone({ records: { "new.example.test": { A: ["192.0.2.5"] }, "n.example.test": { TXT: ["now"] } } });
    now += 5_000;
    const cachedNx = await rejection(r.resolve("new.example.test", "A"));
    assert.equal(cachedNx.code, "ENOTFOUND");
    assert.equal(isNegativeDnsAnswer(cachedNx), true);
    assert.ok(cachedNx instanceof Error);
    assert.equal((cachedNx as Error & { hostname?: string }).hostname, "new.example.test", "the cached answer names the host, as node:dns does");
    assert.match(cachedNx.message, /ENOTFOUND/);
    assert.ok(Error.stackTraceLimit > 0, "building it without a stack leaves the process's stack traces as they were");
    assert.equal((await rejection(r.resolve("n.example.test", "TXT"))).code, "ENODATA");
    assert.deepEqual(asked(await dns.takeQueries()), ["A new.example.test", "TXT n.example.test"]);

    now += 5_000;
    assert.deepEqual(await r.resolve("new.example.test", "A"), ["192.0.2.5"]);
    assert.deepEqual(await r.resolve("n.example.test", "TXT"), [["now"]]);
  });

  test("cacheEntries: 0 turns the cache off", async () => {
    await dns.setZone({ records: { "o.example.test": { A: ["192.0.2.1"] } } });
    await dns.takeQueries();
    const r = resolver({ cacheEntries: 0 });
    assert.deepEqual(await r.resolve("o.example.test", "A"), ["192.0.2.1"]);
    await dns.setZone({ records: { "o.example.test": { A: ["192.0.2.2"] } } });
    assert.deepEqual(await r.resolve("o.example.test", "A"), ["192.0.2.2"]);
    assert.equal((await rejection(r.resolve("p.example.test", "A"))).code, "ENOTFOUND");
    assert.equal((await rejection(r.resolve("p.example.test", "A"))).code, "ENOTFOUND");
    assert.deepEqual(asked(await dns.takeQueries()), ["A o.example.test", "A o.example.test", "A p.example.test", "A p.example.test"]);
  });

  test("the cache holds at most cacheEntries answers, evicting the least recently used", async () => {
    await dns.setZone({ records: { "a.lru.test": { A: ["192.0.2.1"] }, "b.lru.test": { A: ["192.0.2.2"] }, "c.lru.test": { A: ["192.0.2.3"] } } });
    await dns.takeQueries();
    const r = resolver({ cacheEntries: 2 });
    await r.resolve("a.lru.test", "A");
    await r.resolve("b.lru.test", "A");
    await r.resolve("a.lru.test", "A"); // hit: a becomes the most recent
    await r.resolve("c.lru.test", "A"); // evicts b
    assert.deepEqual(asked(await dns.takeQueries()), ["A a.lru.test", "A b.lru.test", "A c.lru.test"]);

    assert.deepEqual(await r.resolve("a.lru.test", "A"), ["192.0.2.1"]);
    assert.deepEqual(await r.resolve("c.lru.test", "A"), ["192.0.2.3"]);
    assert.deepEqual(asked(await dns.takeQueries()), [], "a and c are cached");
    assert.deepEqual(await r.resolve("b.lru.test", "A"), ["192.0.2.2"]);
    assert.deepEqual(asked(await dns.takeQueries()), ["A b.lru.test"], "b was evicted");
  });

  test("concurrent identical queries share one request, answers and failures alike", async () => {
    await dns.setZone(BASE_ZONE);
    await dns.takeQueries();
    const r = resolver({ cacheEntries: 0 });
    const answers = await Promise.all(Array.from({ length: 5 }, () => r.resolve("mail.example.test", "A")));
    for (const a of answers) assert.deepEqual([...a].sort(), ["192.0.2.10", "192.0.2.11"]);
    assert.deepEqual(asked(await dns.takeQueries()), ["A mail.example.test"]);

    const failures = await Promise.allSettled(Array.from({ length: 3 }, () => r.resolve("broken.example.test", "TXT")));
    for (const f of failures) {
      assert.equal(f.status, "rejected");
      assert.equal((f.reason as { code?: string }).code, "ESERVFAIL");
    }
    assert.deepEqual(asked(await dns.takeQueries()), ["TXT broken.example.test"]);

    // Different types of one name are different questions.
    await Promise.all([r.resolve("mail.example.test", "A"), r.resolve("mail.example.test", "AAAA")]);
    assert.deepEqual(asked(await dns.takeQueries()).sort(), ["A mail.example.test", "AAAA mail.example.test"]);
  });
});

describe("test DNS server", () => {
  test("an invalid zone is refused and the previous one stays", async () => {
    await dns.setZone(BASE_ZONE);
    await assert.rejects(dns.setZone({ records: { "x.test": { A: ["not-an-ip"] } } }), /not an IPv4 address/);
    await assert.rejects(dns.setZone({ records: { "x.test": { TXT: [["y".repeat(256)]] } } }), /256 bytes/);
    assert.deepEqual(await resolver({ cacheEntries: 0 }).resolve("mail.example.test", "AAAA"), ["2001:db8::10"]);
  });

  test("zoneFromZoneFile reads owners, TTL, class, quoted strings with escapes, and comments", () => {
    const records = zoneFromZoneFile(
      [
        "; a comment",
        "",
        'Example.TEST.\t3600\tIN\tTXT\t"v=spf1 \\"q\\" \\\\ -all" "two" ; trailing comment',
        "example.test. IN MX 10 mx.example.test.",
        "mx.example.test. A 192.0.2.1",
        'x.test. 60 TXT "semi;colon" bare "\\065\\066"',
      ].join("\n"),
    );
    assert.deepEqual(records, {
      "example.test": { TXT: [['v=spf1 "q" \\ -all', "two"]], MX: [{ priority: 10, exchange: "mx.example.test" }] },
      "mx.example.test": { A: ["192.0.2.1"] },
      "x.test": { TXT: [["semi;colon", "bare", "AB"]] },
    });
    assert.throws(() => zoneFromZoneFile("relative 3600 IN A 192.0.2.1"), /line 1.*absolute/);
    assert.throws(() => zoneFromZoneFile("x.test. IN SRV 0 0 25 y.test."), /unsupported or missing record type/);
    assert.throws(() => zoneFromZoneFile('x.test. IN TXT "open'), /unterminated/);
  });
});
