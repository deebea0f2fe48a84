import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { DeliveryError, resolveRoute, type AddressResolver, type MxResolver, type RouteConfig } from "../../src/mail/outbound/routes.ts";

const direct: RouteConfig = { mode: "direct", relay: null, static_routes: {} };
const keep = <T>(items: T[]): T[] => items;
const reverse = <T>(items: T[]): T[] => [...items].reverse();

function dnsError(code: string): Error {
  return Object.assign(new Error(`queryMx ${code}`), { code });
}

/** Fake MX resolver over a table; records the names asked for. Never touches the network. */
function fakeResolver(table: Record<string, { exchange: string; priority: number }[] | Error>, asked: string[] = []): MxResolver {
  return async (domain) => {
    asked.push(domain);
    const v = table[domain];
    if (v === undefined) throw dnsError("ENOTFOUND");
    if (v instanceof Error) throw v;
    return v;
  };
}

const noLookup: MxResolver = async () => {
  throw new Error("MX lookup must not happen");
};

describe("resolveRoute", () => {
  it("uses a matching static route alone, case-insensitively, without DNS", async () => {
    const cfg: RouteConfig = { ...direct, static_routes: { "Example.ORG": "127.0.0.1:2525" } };
    assert.deepEqual(await resolveRoute("example.org", cfg, noLookup), [{ host: "127.0.0.1", port: 2525, kind: "static" }]);
  });

  it("prefers a static route over relay mode", async () => {
    const cfg: RouteConfig = {
      mode: "relay",
      relay: { host: "smtp.relay.example", port: 587, secure: false, username: null, password: null },
      static_routes: { "internal.example": "10.0.0.5:25" },
    };
    assert.deepEqual(await resolveRoute("internal.example", cfg, noLookup), [{ host: "10.0.0.5", port: 25, kind: "static" }]);
    assert.deepEqual(await resolveRoute("example.org", cfg, noLookup), [{ host: "smtp.relay.example", port: 587, kind: "relay" }]);
  });

  it("relay mode without a relay is a temporary error", async () => {
    await assert.rejects(resolveRoute("example.org", { mode: "relay", relay: null, static_routes: {} }, noLookup), (e: unknown) => {
      assert.ok(e instanceof DeliveryError);
      assert.equal(e.temporary, true);
      return true;
    });
  });

  it("orders MX hosts by priority, drops duplicates and trailing dots, port 25", async () => {
    const resolver = fakeResolver({
      "example.org": [
        { exchange: "mx3.example.org.", priority: 30 },
        { exchange: "mx1.example.org", priority: 10 },
        { exchange: "mx2a.example.org", priority: 20 },
        { exchange: "mx2b.example.org", priority: 20 },
        { exchange: "MX1.example.org", priority: 10 },
      ],
    });
    const routes = await resolveRoute("example.org", direct, resolver, { shuffle: keep });
    assert.deepEqual(
      routes.map((r) => [r.host, r.port, r.kind]),
      [
        ["mx1.example.org", 25, "mx"],
        ["mx2a.example.org", 25, "mx"],
        ["mx2b.example.org", 25, "mx"],
        ["mx3.example.org", 25, "mx"],
      ],
    );
    const shuffled = await resolveRoute("example.org", direct, resolver, { shuffle: reverse, mxPort: 2525 });
    assert.deepEqual(
      shuffled.map((r) => `${r.host}:${r.port}`),
      ["mx1.example.org:2525", "mx2b.example.org:2525", "mx2a.example.org:2525", "mx3.example.org:2525"],
      "shuffle only reorders within one priority",
    );
  });

  it("default shuffle keeps priority order", async () => {
    const resolver = fakeResolver({
      "example.org": [
        { exchange: "b.example.org", priority: 5 },
        { exchange: "c.example.org", priority: 5 },
        { exchange: "a.example.org", priority: 1 },
      ],
    });
    for (let i = 0; i < 10; i++) {
      const routes = await resolveRoute("example.org", direct, resolver);
      assert.equal(routes[0]?.host, "a.example.org");
      assert.deepEqual(new Set(routes.slice(1).map((r) => r.host)), new Set(["b.example.org", "c.example.org"]));
    }
  });

  it("falls back to the implicit MX on ENODATA (RFC 5321 §5.1)", async () => {
    const routes = await resolveRoute("Example.NET", direct, fakeResolver({ "example.net": dnsError("ENODATA") }));
    assert.deepEqual(routes, [{ host: "example.net", port: 25, kind: "mx" }]);
  });

  it("falls back to the implicit MX on an empty answer", async () => {
    assert.deepEqual(await resolveRoute("example.net", direct, fakeResolver({ "example.net": [] })), [{ host: "example.net", port: 25, kind: "mx" }]);
  });

  /** Asserts a permanent 550 5.1.2 (bad destination system address, RFC 3463 §3.2). */
  const badDestination = (pattern: RegExp) => (e: unknown) => {
    assert.ok(e instanceof DeliveryError);
    assert.equal(e.temporary, false);
    assert.equal(e.responseCode, 550);
    assert.equal(e.enhancedStatus, "5.1.2");
    assert.match(e.message, pattern);
    return true;
  };

  it("refuses a domain that does not exist (NXDOMAIN) permanently with 550 5.1.2", async () => {
    await assert.rejects(resolveRoute("nx.example", direct, fakeResolver({})), badDestination(/^nx\.example does not exist \(NXDOMAIN\)$/));
  });

  describe("implicit MX with an address lookup", () => {
    /** Fake A/AAAA lookup over a table keyed `TYPE name`; missing entries are NODATA. */
    const addresses =
      (table: Record<string, string[] | Error>): AddressResolver =>
      async (host, rrtype) => {
        const v = table[`${rrtype} ${host}`];
        if (v === undefined) throw dnsError("ENODATA");
        if (v instanceof Error) throw v;
        return v;
      };
    const noMx = fakeResolver({ "example.net": dnsError("ENODATA") });

    it("routes to the domain when it has an A or an AAAA record", async () => {
      const tables: Record<string, string[]>[] = [{ "A example.net": ["192.0.2.1"] }, { "AAAA example.net": ["2001:db8::1"] }];
      for (const table of tables) {
        const routes = await resolveRoute("example.net", direct, noMx, { addressResolver: addresses(table) });
        assert.deepEqual(routes, [{ host: "example.net", port: 25, kind: "mx" }]);
      }
    });

    it("refuses a domain with no MX, A or AAAA records permanently with 550 5.1.2", async () => {
      await assert.rejects(
        resolveRoute("example.net", direct, noMx, { addressResolver: addresses({}) }),
        badDestination(/^example\.net has no MX, A or AAAA records$/),
      );
      const empty = fakeResolver({ "example.net": [] });
      await assert.rejects(resolveRoute("example.net", direct, empty, { addressResolver: addresses({ "A example.net": [] }) }), badDestination(/no MX, A or AAAA/));
    });

    it("stays temporary when an address lookup fails temporarily and none found an address", async () => {
      await assert.rejects(
        resolveRoute("example.net", direct, noMx, { addressResolver: addresses({ "AAAA example.net": dnsError("ESERVFAIL") }) }),
        (e: unknown) => {
          assert.ok(e instanceof DeliveryError);
          assert.equal(e.temporary, true);
          assert.equal(e.responseCode, 451);
          assert.match(e.message, /ESERVFAIL/);
          return true;
        },
      );
      // One family answering is enough, whatever the other one does.
      const routes = await resolveRoute("example.net", direct, noMx, {
        addressResolver: addresses({ "A example.net": ["192.0.2.1"], "AAAA example.net": dnsError("ETIMEOUT") }),
      });
      assert.equal(routes.length, 1);
    });

    it("is not asked when MX records exist", async () => {
      const routes = await resolveRoute("example.org", direct, fakeResolver({ "example.org": [{ exchange: "mx.example.org", priority: 10 }] }), {
        addressResolver: async () => assert.fail("no address lookup expected"),
      });
      assert.deepEqual(routes, [{ host: "mx.example.org", port: 25, kind: "mx" }]);
    });
  });

  for (const exchange of ["", "."]) {
    it(`refuses a null MX ${JSON.stringify(exchange)} permanently with 556 5.1.10 (RFC 7505)`, async () => {
      const resolver = fakeResolver({ "nomail.example": [{ exchange, priority: 0 }] });
      await assert.rejects(resolveRoute("nomail.example", direct, resolver), (e: unknown) => {
        assert.ok(e instanceof DeliveryError);
        assert.equal(e.temporary, false);
        assert.equal(e.responseCode, 556);
        assert.equal(e.enhancedStatus, "5.1.10");
        return true;
      });
    });
  }

  it("ignores a null MX next to real MX records", async () => {
    const resolver = fakeResolver({ "odd.example": [{ exchange: "", priority: 0 }, { exchange: "mx.odd.example", priority: 10 }] });
    assert.deepEqual(await resolveRoute("odd.example", direct, resolver), [{ host: "mx.odd.example", port: 25, kind: "mx" }]);
  });

  for (const code of ["ESERVFAIL", "ETIMEOUT", "ECONNREFUSED", "EREFUSED", "EWHATEVER"]) {
    it(`turns DNS failure ${code} into a temporary 451 4.4.3`, async () => {
      await assert.rejects(resolveRoute("example.org", direct, fakeResolver({ "example.org": dnsError(code) })), (e: unknown) => {
        assert.ok(e instanceof DeliveryError);
        assert.equal(e.temporary, true);
        assert.equal(e.responseCode, 451);
        assert.equal(e.enhancedStatus, "4.4.3");
        assert.match(e.message, new RegExp(code));
        return true;
      });
    });
  }

  it("times out a hanging lookup as a temporary error", async () => {
    const hanging: MxResolver = () => new Promise(() => {});
    await assert.rejects(resolveRoute("example.org", direct, hanging, { timeoutMs: 20 }), (e: unknown) => e instanceof DeliveryError && e.temporary);
  });

  it("routes an address literal to the address without DNS", async () => {
    assert.deepEqual(await resolveRoute("[192.0.2.1]", direct, noLookup), [{ host: "192.0.2.1", port: 25, kind: "mx" }]);
  });

  it("asks the resolver for the lower-cased domain", async () => {
    const asked: string[] = [];
    await resolveRoute("EXAMPLE.org", direct, fakeResolver({ "example.org": [{ exchange: "mx.example.org", priority: 1 }] }, asked));
    assert.deepEqual(asked, ["example.org"]);
  });
});
