import { it } from "node:test";
import assert from "node:assert/strict";
import { makeAccessCheck } from "../../src/bridge/access.ts";

it("allows local users by default and matches * patterns", () => {
  const local = makeAccessCheck([], "hs.example");
  assert.equal(local("@alice:hs.example"), true);
  assert.equal(local("@alice:evil.example"), false);
  assert.equal(local("@alice:hs.example.evil"), false);
  const some = makeAccessCheck(["@alice:hs.example", "@*:friends.example"], "hs.example");
  assert.equal(some("@alice:hs.example"), true);
  assert.equal(some("@bob:hs.example"), false);
  assert.equal(some("@carol:friends.example"), true);
  assert.equal(some("@carol:friendsXexample"), false);
});
