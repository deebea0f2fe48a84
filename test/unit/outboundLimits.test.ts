/**
 * The per-user sending limits of OutboundHandler, on the real store (SQLite :memory:): mails
 * per hour and first-time recipients per day. Crossing a limit throws NotSentError (the bot
 * posts its text in the room) and queues nothing. The Matrix side answers only what the
 * handler asks of a DM portal (a display name).
 */
import { afterEach, beforeEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { openStore } from "../../src/store/open.ts";
import type { BridgeStore, PortalRow } from "../../src/store/Store.ts";
import { NotSentError, OutboundHandler, type RoomMessageEvent } from "../../src/bridge/OutboundHandler.ts";
import type { MatrixActions } from "../../src/bridge/ports.ts";
import type { IdContext } from "../../src/bridge/ids.ts";
import { configureLogging } from "../../src/util/logger.ts";

configureLogging({ level: "error" });
const ids: IdContext = { ghostPrefix: "email_", serverName: "hs.example", mailDomain: "bridge.example", botLocalpart: "emailbot", caseSensitiveLocalparts: false };

describe("per-user sending limits", () => {
  let store: BridgeStore;
  let n = 0;
  const matrix = { displayName: async () => "Alice", stateContent: async () => null } as unknown as MatrixActions;

  beforeEach(async () => {
    store = await openStore({ url: null, sqliteFile: ":memory:" });
  });
  afterEach(async () => {
    await store.close();
  });

  async function dm(remote: string): Promise<PortalRow> {
    return store.upsertPortal({ roomId: `!dm-${remote}:hs.example`, kind: "dm", localUserId: "@alice:hs.example", remoteAddress: remote, subject: "Hi", encrypted: false, remoteVerified: true });
  }
  function message(roomId: string): RoomMessageEvent {
    n++;
    return { room_id: roomId, event_id: `$e${n}`, sender: "@alice:hs.example", origin_server_ts: Date.now(), content: { msgtype: "m.text", body: `message ${n}` } };
  }
  function handler(limits: { mailsPerHour: number; newRecipientsPerDay: number }): OutboundHandler {
    return new OutboundHandler({ store, matrix, ids, dkim: null, onQueued: () => undefined, limits, maxAttachmentBytes: 10_000_000, mailNotices: false, batchDelayMs: 0 });
  }

  it("mails per hour: the one over the limit is refused with a notice text, and nothing is queued", async () => {
    const h = handler({ mailsPerHour: 3, newRecipientsPerDay: 0 });
    const portal = await dm("bob@example.org");
    for (let i = 0; i < 3; i++) assert.ok(await h.handle(message(portal.roomId), portal));
    const over = message(portal.roomId);
    await assert.rejects(h.handle(over, portal), (err: unknown) => err instanceof NotSentError && /sent 3 mails in the last hour/.test(err.message));
    assert.equal(await store.getOutboundByEvent(over.event_id), null, "nothing queued");
  });

  it("new recipients per day: known addresses are fine, the first-time one over the limit is refused", async () => {
    const h = handler({ mailsPerHour: 0, newRecipientsPerDay: 2 });
    const bob = await dm("bob@example.org");
    const carol = await dm("carol@example.org");
    const dave = await dm("dave@example.org");
    assert.ok(await h.handle(message(bob.roomId), bob));
    assert.ok(await h.handle(message(carol.roomId), carol));
    assert.ok(await h.handle(message(bob.roomId), bob), "bob is known: no new recipient");
    const over = message(dave.roomId);
    await assert.rejects(h.handle(over, dave), (err: unknown) => err instanceof NotSentError && /3 new addresses/.test(err.message));
    assert.equal(await store.getOutboundByEvent(over.event_id), null);
  });

  it("0 means no limit", async () => {
    const h = handler({ mailsPerHour: 0, newRecipientsPerDay: 0 });
    for (let i = 0; i < 5; i++) {
      const portal = await dm(`p${i}@example.org`);
      assert.ok(await h.handle(message(portal.roomId), portal));
    }
  });
});
