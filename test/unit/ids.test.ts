import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  bareMessageId,
  decodeLocalpart,
  encodeLocalpart,
  ghostAddress,
  ghostUserId,
  InvalidAddressError,
  mailboxUserId,
  noPersonalMailboxReason,
  mintMessageId,
  normalizeAddress,
  personalAddress,
  type IdContext,
} from "../../src/bridge/ids.ts";

const ctx: IdContext = { ghostPrefix: "email_", serverName: "hs.example", mailDomain: "bridge.example", botLocalpart: "emailbot", caseSensitiveLocalparts: false };
const cs: IdContext = { ...ctx, caseSensitiveLocalparts: true };

describe("address ↔ user ID mapping", () => {
  it("maps the spec's example both ways", () => {
    assert.equal(ghostUserId("bob@example.org", ctx), "@email_bob=40example.org:hs.example");
    assert.equal(ghostAddress("@email_bob=40example.org:hs.example", ctx), "bob@example.org");
  });

  it("round-trips odd addresses", () => {
    for (const a of ["bob+tag@example.org", "o'brien@example.org", "a_b@example.org", "x=y@example.org", "a/b@example.org", "müller@example.org", "first.last@sub.example.co.uk", "#!$%&*@example.org"]) {
      const id = ghostUserId(a, ctx);
      assert.match(id, /^@[a-z0-9._=\-/+]+:hs\.example$/, id);
      assert.equal(ghostAddress(id, ctx), normalizeAddress(a), a);
    }
  });

  it("folds case by default and keeps it when configured", () => {
    assert.equal(ghostUserId("Bob@Example.ORG", ctx), ghostUserId("bob@example.org", ctx));
    assert.equal(ghostUserId("Bob@Example.ORG", cs), "@email__bob=40example.org:hs.example");
    assert.equal(ghostAddress("@email__bob=40example.org:hs.example", cs), "Bob@example.org");
    assert.notEqual(ghostUserId("Bob@example.org", cs), ghostUserId("bob@example.org", cs));
  });

  it("handles quoted local parts", () => {
    assert.equal(normalizeAddress('"bob"@example.org'), "bob@example.org");
    const quoted = normalizeAddress('"john doe"@example.org');
    assert.equal(quoted, '"john doe"@example.org');
    assert.equal(ghostAddress(ghostUserId(quoted, ctx), ctx), quoted);
    assert.equal(ghostUserId(quoted, ctx), "@email_=22john=20doe=22=40example.org:hs.example");
  });

  it("turns IDN domains into A-labels", () => {
    assert.equal(normalizeAddress("info@Bücher.Example"), "info@xn--bcher-kva.example");
    assert.equal(ghostUserId("info@bücher.example", ctx), "@email_info=40xn--bcher-kva.example:hs.example");
  });

  it("is collision-free: non-canonical encodings are not ghosts", () => {
    assert.equal(ghostAddress("@email_=62ob=40example.org:hs.example", ctx), null); // "=62" for "b"
    assert.equal(ghostAddress("@email_bob=4Xexample.org:hs.example", ctx), null);
    assert.equal(ghostAddress("@email_bob_=40example.org:hs.example", ctx), null);
    assert.equal(ghostAddress("@email_bob=40example.org:other.example", ctx), null);
    assert.equal(ghostAddress("@someone:hs.example", ctx), null);
    assert.equal(ghostAddress("@email_bob=40bridge.example:hs.example", ctx), null, "own mail domain is not a ghost");
    assert.equal(decodeLocalpart("=c3"), null, "invalid UTF-8");
    const seen = new Map<string, string>();
    for (const a of ["a@x.org", "A@x.org", "a_@x.org", "a=5f@x.org", "a.@x.org", "a@x.org.", "_a@x.org"]) {
      let id: string;
      try {
        id = encodeLocalpart(a);
      } catch {
        continue;
      }
      if (seen.has(id)) assert.equal(seen.get(id), a);
      seen.set(id, a);
    }
  });

  it("rejects unusable addresses with a clear error", () => {
    for (const bad of ["", "bob", "@example.org", "bob@", "bob@localhost", "bo b@example.org", "bob@exa mple.org", "a..b@example.org"]) {
      assert.throws(() => ghostUserId(bad, ctx), InvalidAddressError, bad);
    }
    assert.throws(() => ghostUserId("x".repeat(65) + "@example.org", ctx), /64 octets/);
    assert.throws(() => ghostUserId("alice@bridge.example", ctx), /mailbox of this bridge/);
  });

  it("maps local users to personal mailboxes and back", () => {
    assert.equal(personalAddress("@alice:hs.example", ctx), "alice@bridge.example");
    assert.equal(personalAddress("@alice:other.example", ctx), null);
    assert.equal(personalAddress("@email_bob=40example.org:hs.example", ctx), null);
    assert.equal(personalAddress("@emailbot:hs.example", ctx), null);
    assert.equal(mailboxUserId("alice", ctx), "@alice:hs.example");
    assert.equal(mailboxUserId("emailbot", ctx), null);
    assert.equal(mailboxUserId("email_bob=40example.org", ctx), null);
    assert.equal(mailboxUserId("Alice", ctx), null);
  });

  it("a user name that is no usable address, or a reserved one, has no personal mailbox, either way round", () => {
    const none: [string, RegExp][] = [
      ["@alice+boss:hs.example", /no '\+'/],
      ["@.dot:hs.example", /not usable as an address/],
      ["@trail.:hs.example", /not usable as an address/],
      ["@a..b:hs.example", /not usable as an address/],
      ["@a=b:hs.example", /not usable as an address/],
      [`@${"x".repeat(65)}:hs.example`, /not usable as an address/],
      ["@postmaster:hs.example", /"postmaster@bridge\.example" is reserved/],
      ["@noreply:hs.example", /reserved/],
      ["@alice:other.example", /only users of hs\.example/],
      ["@emailbot:hs.example", /bridge's own users/],
    ];
    for (const [userId, why] of none) {
      assert.equal(personalAddress(userId, ctx), null, userId);
      assert.match(noPersonalMailboxReason(userId, ctx) ?? "", why, userId);
    }
    for (const localpart of ["alice+boss", ".dot", "a..b", "postmaster", "noreply", "x".repeat(65)]) assert.equal(mailboxUserId(localpart, ctx), null, localpart);
    assert.equal(noPersonalMailboxReason("@alice.smith_2-x:hs.example", ctx), null);
    assert.equal(personalAddress(`@${"x".repeat(64)}:hs.example`, ctx), `${"x".repeat(64)}@bridge.example`);
  });
});

describe("Message-ID minting", () => {
  it("mints unguessable, valid, unique ids on the mail domain", () => {
    const ids = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const id = mintMessageId("bridge.example");
      assert.match(id, /^[A-Za-z0-9_-]{22}\.[a-z0-9]+@bridge\.example$/);
      ids.add(id);
    }
    assert.equal(ids.size, 1000);
  });
  it("strips brackets", () => {
    assert.equal(bareMessageId(" <a@b> "), "a@b");
    assert.equal(bareMessageId("<>"), null);
    assert.equal(bareMessageId(null), null);
  });
});
