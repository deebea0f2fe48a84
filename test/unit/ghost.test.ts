/**
 * The Ghost: two ghosts per address (verified, unverified), profile rules, and name cleaning.
 * Profile syncing runs on the real store (SQLite :memory:); the Matrix side records calls.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { cleanDisplayName, Ghost, MAX_DISPLAY_NAME, nameHasAtSign } from "../../src/bridge/Ghost.ts";
import { ghostAddress, ghostUserId, parseGhost, unverifiedGhostUserId, type IdContext } from "../../src/bridge/ids.ts";
import { openStore } from "../../src/store/open.ts";

const ids: IdContext = { ghostPrefix: "email_", serverName: "hs.example", mailDomain: "bridge.example", botLocalpart: "emailbot", caseSensitiveLocalparts: false };
const cs: IdContext = { ...ids, caseSensitiveLocalparts: true };

describe("cleanDisplayName", () => {
  it("removes line breaks, controls and bidi overrides, collapses white space", () => {
    assert.equal(cleanDisplayName("Bob\r\nAdmin\u202e"), "Bob Admin");
    assert.equal(cleanDisplayName("\u202eevil\u202c name\u200b\u2066x\u2069"), "evil name x");
    assert.equal(cleanDisplayName("a\u0000b\u0007c\u009bd"), "a b c d");
    assert.equal(cleanDisplayName("  Ünïcödé   Näme 🎉 "), "Ünïcödé Näme 🎉");
  });

  it("cuts to the homeserver's 256 code points, never inside a surrogate pair", () => {
    assert.equal([...cleanDisplayName("x".repeat(300))!].length, MAX_DISPLAY_NAME);
    const emoji = cleanDisplayName("🎉".repeat(300))!;
    assert.equal([...emoji].length, MAX_DISPLAY_NAME);
    assert.ok(!/[\ud800-\udbff]$/.test(emoji), "no lone high surrogate at the end");
  });

  it("gives null when nothing printable is left", () => {
    assert.equal(cleanDisplayName("\r\n\u202e\u200b "), null);
    assert.equal(cleanDisplayName(""), null);
    assert.equal(cleanDisplayName(null), null);
  });
});

describe("verified and unverified ghosts", () => {
  it("have distinct user IDs that parse back, and cannot collide", () => {
    const v = ghostUserId("bob@example.org", ids);
    const u = unverifiedGhostUserId("bob@example.org", ids);
    assert.equal(v, "@email_bob=40example.org:hs.example");
    assert.equal(u, "@email_bob=40example.org/unverified:hs.example");
    assert.deepEqual(parseGhost(v, ids), { address: "bob@example.org", verified: true });
    assert.deepEqual(parseGhost(u, ids), { address: "bob@example.org", verified: false });
    assert.equal(ghostAddress(u, ids), null, "an unverified ghost is never read as a verified one");
    // "/unverified" makes the domain invalid, so no address maps to it, even case-sensitively.
    assert.equal(ghostAddress(u, cs), null);
    assert.equal(parseGhost("@email_bob=40example.org/unverified/unverified:hs.example", ids), null);
    assert.equal(parseGhost("@alice:hs.example", ids), null);
  });

  it("the verified ghost's name follows authenticated mail; the unverified one's never", () => {
    const v = Ghost.of("bob@example.org", true, ids);
    const u = Ghost.of("bob@example.org", false, ids);
    assert.equal(v.displayNameFor("Bob Example", "Email bridge"), "Bob Example");
    assert.equal(u.displayNameFor("Bob Example", "Email bridge"), "bob@example.org (unverified)");
    assert.equal(v.displayNameFor("Bob\r\nAdmin\u202e", "Email bridge"), "Bob Admin");
    for (const imitation of ["Email bridge", "email BRIDGE ", "alice@bridge.example", "@alice:hs.example", "", "\u202e"]) {
      assert.equal(v.displayNameFor(imitation, "Email bridge"), "bob@example.org", JSON.stringify(imitation));
    }
  });

  it("an at sign in any spelling NFKC folds to @ (fullwidth U+FF20, small U+FE6B) makes the name the address", () => {
    const v = Ghost.of("bob@example.org", true, ids);
    for (const imitation of ["alice\uff20bridge.example", "\uff20alice:hs.example", "alice\ufe6bbridge.example", "PayPal <service\uff20paypal.com>", "\ufe6b"]) {
      assert.equal(nameHasAtSign(imitation), true, JSON.stringify(imitation));
      assert.equal(v.displayNameFor(imitation, "Email bridge"), "bob@example.org", JSON.stringify(imitation));
    }
    // Names without one are kept as written (cleaning stays NFC: a fullwidth name is not folded).
    assert.equal(nameHasAtSign("Ｂｏｂ Example"), false);
    assert.equal(v.displayNameFor("Ｂｏｂ Example", "Email bridge"), "Ｂｏｂ Example");
  });

  it("the bot's name is compared after NFKC: fullwidth or compatibility spellings of it are refused", () => {
    const v = Ghost.of("bob@example.org", true, ids);
    for (const imitation of ["Ｅｍａｉｌ ｂｒｉｄｇｅ", "EMAIL\u00a0BRIDGE", "\ud835\udc04mail bridge", "Email bridge"]) {
      assert.equal(v.displayNameFor(imitation, "Email bridge"), "bob@example.org", JSON.stringify(imitation));
    }
    assert.equal(v.displayNameFor("Email bridge", "Ｅｍａｉｌ ｂｒｉｄｇｅ "), "bob@example.org", "a fullwidth bot name is folded too");
    assert.equal(v.displayNameFor("Email bridges", "Email bridge"), "Email bridges");
  });

  it("ensureProfile: only a verified ghost's stored name changes; an unverified ghost is named once", async () => {
    const store = await openStore({ url: null, sqliteFile: ":memory:" });
    try {
      const calls: [string, string | null, string | null][] = [];
      const ctx = {
        store,
        ids,
        botDisplayName: "Email bridge",
        matrix: { ensureGhost: async (userId: string, name: string | null, previous: string | null) => void calls.push([userId, name, previous]) },
      };
      const v = Ghost.of("bob@example.org", true, ids);
      await v.ensureProfile(ctx, "Bob Example");
      assert.equal((await store.getGhostByAddress("bob@example.org"))?.displayName, "Bob Example");
      await v.ensureProfile(ctx, null);
      assert.equal((await store.getGhostByAddress("bob@example.org"))?.displayName, "Bob Example", "null keeps the name");
      assert.deepEqual(calls.at(-1), [v.userId, "Bob Example", "Bob Example"], "no rename asked for");

      const u = Ghost.of("bob@example.org", false, ids);
      await u.ensureProfile(ctx, "PayPal Security");
      await u.ensureProfile(ctx, "Something else");
      assert.deepEqual(calls.slice(-2), [
        [u.userId, "bob@example.org (unverified)", null],
        [u.userId, "bob@example.org (unverified)", "bob@example.org (unverified)"],
      ]);
      assert.equal((await store.getGhostByAddress("bob@example.org"))?.displayName, "Bob Example", "unverified mail never renames the verified ghost");
      assert.equal(await u.queryName({ store }), "bob@example.org (unverified)");
      assert.equal(await v.queryName({ store }), "Bob Example");
    } finally {
      await store.close();
    }
  });
});
