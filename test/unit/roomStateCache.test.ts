import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { RoomStateCache } from "../../src/matrix/RoomStateCache.ts";

describe("RoomStateCache", () => {
  it("reads state once, until an event of the same type and key replaces it", async () => {
    const cache = new RoomStateCache();
    let reads = 0;
    const fetch = async (): Promise<Record<string, unknown> | null> => ({ name: `v${++reads}` });
    assert.deepEqual(await cache.state("!r", "m.room.name", "", fetch), { name: "v1" });
    assert.deepEqual(await cache.state("!r", "m.room.name", "", fetch), { name: "v1" });
    cache.noteEvent({ type: "m.room.message", room_id: "!r" });
    cache.noteEvent({ type: "m.room.name", room_id: "!other", state_key: "" });
    assert.deepEqual(await cache.state("!r", "m.room.name", "", fetch), { name: "v1" }, "other events and rooms change nothing");
    cache.noteEvent({ type: "m.room.name", room_id: "!r", state_key: "" });
    assert.deepEqual(await cache.state("!r", "m.room.name", "", fetch), { name: "v2" });
    assert.equal(reads, 2);
  });

  it("keeps 'not set' too, and never keeps an error", async () => {
    const cache = new RoomStateCache();
    let reads = 0;
    assert.equal(await cache.state("!r", "m.room.encryption", "", async () => (reads++, null)), null);
    assert.equal(await cache.state("!r", "m.room.encryption", "", async () => (reads++, null)), null);
    assert.equal(reads, 1);
    await assert.rejects(cache.state("!r", "m.room.topic", "", async () => Promise.reject(new Error("502"))), /502/);
    assert.deepEqual(await cache.state("!r", "m.room.topic", "", async () => ({ topic: "t" })), { topic: "t" });
  });

  it("member lists: forgotten by any member event of the room and by the bridge's own membership changes", async () => {
    const cache = new RoomStateCache();
    let list = ["@a:hs"];
    const fetch = async (): Promise<string[]> => [...list];
    assert.deepEqual(await cache.members("!r", fetch), ["@a:hs"]);
    list = ["@a:hs", "@b:hs"];
    assert.deepEqual(await cache.members("!r", fetch), ["@a:hs"], "cached");
    cache.noteEvent({ type: "m.room.member", room_id: "!r", state_key: "@b:hs" });
    assert.deepEqual(await cache.members("!r", fetch), ["@a:hs", "@b:hs"]);
    list = ["@a:hs"];
    cache.forgetMember("!r", "@b:hs");
    assert.deepEqual(await cache.members("!r", fetch), ["@a:hs"]);
    const copy = await cache.members("!r", fetch);
    copy.push("@mutated:hs");
    assert.deepEqual(await cache.members("!r", fetch), ["@a:hs"], "callers get copies");
  });

  it("a read in flight when the state changes is not kept", async () => {
    const cache = new RoomStateCache();
    let release!: () => void;
    const slow = cache.state("!r", "m.room.member", "@u:hs", () => new Promise((resolve) => (release = () => resolve({ displayname: "old" }))));
    cache.noteEvent({ type: "m.room.member", room_id: "!r", state_key: "@u:hs" });
    release();
    assert.deepEqual(await slow, { displayname: "old" });
    assert.deepEqual(await cache.state("!r", "m.room.member", "@u:hs", async () => ({ displayname: "new" })), { displayname: "new" });
  });

  it("forgetAllState drops every entry; the bound drops the oldest", async () => {
    const cache = new RoomStateCache(2);
    let reads = 0;
    const fetch = async (): Promise<Record<string, unknown>> => ({ n: ++reads });
    await cache.state("!a", "t", "", fetch);
    await cache.state("!b", "t", "", fetch);
    await cache.state("!c", "t", "", fetch);
    assert.deepEqual(await cache.state("!c", "t", "", fetch), { n: 3 });
    assert.deepEqual(await cache.state("!a", "t", "", fetch), { n: 4 }, "the oldest went");
    cache.forgetAllState();
    assert.deepEqual(await cache.state("!c", "t", "", fetch), { n: 5 });
    assert.throws(() => new RoomStateCache(0), RangeError);
  });
});
