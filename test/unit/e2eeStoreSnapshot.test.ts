/**
 * The crypto machines' stores in the bridge's database (src/matrix/e2ee/storeSnapshot.ts): a
 * real OlmMachine (matrix-sdk-crypto-wasm over fake-indexeddb) keeps its identity through
 * snapshot → seal → open → restore, and a sealed snapshot opens only with its key and user.
 */
import { it } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { DeviceId, OlmMachine, UserId } from "@matrix-org/matrix-sdk-crypto-wasm";
import { dropStore, openSnapshot, restoreSnapshot, sealSnapshot, SnapshotSealError, takeSnapshot } from "../../src/matrix/e2ee/storeSnapshot.ts";

const USER = "@emailbot:hs.test";

it("a machine restored from its sealed snapshot has the same identity keys", async () => {
  const name = `unit:${randomBytes(4).toString("hex")}`;
  const machine = await OlmMachine.initialize(new UserId(USER), new DeviceId("EMAILBRIDGE"), name);
  const keys = { ed25519: machine.identityKeys.ed25519.toBase64(), curve25519: machine.identityKeys.curve25519.toBase64() };
  const key = randomBytes(32);
  const sealed = sealSnapshot(await takeSnapshot(name), USER, key);
  machine.close();
  await dropStore(name);

  await restoreSnapshot(openSnapshot(sealed, USER, key));
  const again = await OlmMachine.initialize(new UserId(USER), new DeviceId("EMAILBRIDGE"), name);
  assert.deepEqual({ ed25519: again.identityKeys.ed25519.toBase64(), curve25519: again.identityKeys.curve25519.toBase64() }, keys);
  again.close();
  await dropStore(name);
});

it("a sealed snapshot opens only with its key and for its user; an empty one is never sealed", async () => {
  const key = randomBytes(32);
  const snapshot = { databases: [{ name: "x::matrix-sdk-crypto", version: 3, stores: [{ name: "core", keyPath: null, autoIncrement: false, indexes: [], records: [["k", new Uint8Array([1, 2, 3])]] as [unknown, unknown][] }] }] };
  const sealed = sealSnapshot(snapshot, USER, key);
  assert.deepEqual(openSnapshot(sealed, USER, key), snapshot);
  assert.throws(() => sealSnapshot({ databases: [] }, USER, key), /is empty: nothing to save/);
  assert.throws(() => openSnapshot(sealed, USER, randomBytes(32)), SnapshotSealError);
  assert.throws(() => openSnapshot(sealed, "@email_bob=40example.org:hs.test", key), SnapshotSealError);
  assert.throws(() => openSnapshot(Buffer.from("not sealed"), USER, key), SnapshotSealError);
});
