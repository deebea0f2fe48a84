/**
 * The inbound poster's relations, on a real SQLite store with a fake homeserver: a reply in a
 * room mailbox is posted as a thread message; a reply in a group portal as a rich reply; a thread
 * the homeserver refuses with 400 (its root has a relation of its own: Client-Server API,
 * "Threading", "Validation of m.thread relationships") is posted as a rich reply instead.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InboundPoster, type InboundPosterOptions } from "../../src/bridge/InboundPoster.ts";
import type { MatrixActions } from "../../src/bridge/ports.ts";
import type { IdContext } from "../../src/bridge/ids.ts";
import { openStore } from "../../src/store/open.ts";
import type { BridgeStore, PortalKind } from "../../src/store/Store.ts";
import { configureLogging } from "../../src/util/logger.ts";
import { newInbound } from "../harness/rows.ts";
import { FakeHttpError, postRow, strictHomeserver } from "../harness/fakeHomeserver.ts";

if (!process.env.MEB_LOG_LEVEL) configureLogging({ level: "error" });

const IDS: IdContext = { ghostPrefix: "email_", serverName: "hs.test", mailDomain: "bridge.test", botLocalpart: "emailbot", caseSensitiveLocalparts: false };

/** An error the fake homeserver throws, with the status it classifies as. */
/** A homeserver that records sends and refuses threads rooted at `refusedRoots` with 400 M_UNKNOWN, as Synapse does. */
function fakeHomeserver(
  refusedRoots: Set<string>,
  ghostMembership = "join",
): MatrixActions & { sends: { content: Record<string, unknown>; txnId: string | undefined }[]; joins: string[] } {
  const sends: { content: Record<string, unknown>; txnId: string | undefined }[] = [];
  const joins: string[] = [];
  const known: Partial<MatrixActions> = {
    ensureGhost: async () => {},
    join: async (_room, userId) => {
      joins.push(userId);
    },
    stateContent: async (_room, type, stateKey, asUser) => {
      assert.equal(type, "m.room.member");
      assert.equal(asUser, "@emailbot:hs.test", "the bot reads the group portal's state");
      assert.equal(stateKey, "@email_bob=40example.org:hs.test");
      return { membership: ghostMembership };
    },
    sendEvent: async (_user, _room, _type, content, txnId) => {
      const rel = content["m.relates_to"] as { rel_type?: string; event_id?: string } | undefined;
      if (rel?.rel_type === "m.thread" && refusedRoots.has(rel.event_id ?? "")) throw new FakeHttpError(400, "Cannot start threads from an event with a relation");
      sends.push({ content, txnId });
      return `$posted${sends.length}`;
    },
    uploadLimitBytes: async () => null,
    isEncrypted: async () => false,
    uploadContent: async () => "mxc://hs.test/file",
  };
  return strictHomeserver(known, { sends, joins });
}

/**
 * A poster on `store` and the fake homeserver, with short retries; no notice is expected, and
 * by default nothing may be undeliverable.
 */
function posterFor(store: BridgeStore, matrix: MatrixActions, onUndeliverable: InboundPosterOptions["onUndeliverable"] = async () => Promise.reject(new Error("nothing should be undeliverable"))): InboundPoster {
  return new InboundPoster({
    store,
    matrix,
    ids: IDS,
    botDisplayName: "Email bridge",
    settings: { retryHours: 1, retryBaseMs: 10, retryMaxMs: 20, concurrency: 1, maxTextBytes: 24000 },
    notices: { post: async () => Promise.reject(new Error("no notice expected")) },
    onUndeliverable,
    pollMs: 50,
  });
}

describe("inbound poster: replies in room mailboxes are threads", () => {
  let dir: string;
  let store: BridgeStore;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "meb-threads-"));
    store = await openStore({ url: null, sqliteFile: join(dir, "bridge.sqlite") });
  });
  after(async () => {
    await store?.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  /** Post one reply into a `kind` portal whose parent is a mapped message; returns what was sent and stored. */
  async function postReply(kind: PortalKind, roomId: string, parent: { eventId: string; messageId: string; references: string[] }, refused: Set<string>, withFile = false) {
    await store.upsertPortal({ roomId, kind, localUserId: null, remoteAddress: null, subject: null, encrypted: false, remoteVerified: true });
    await store.insertMessage({ roomId, eventId: parent.eventId, messageId: parent.messageId, references: parent.references, direction: "outbound", sender: "alice@bridge.test", subject: "Plans", participants: ["bob@example.org"], viaList: false });
    const matrix = fakeHomeserver(refused);
    const poster = posterFor(store, matrix);
    const messageId = `reply-${roomId}@example.org`;
    const head = `From: bob@example.org\r\nTo: x@bridge.test\r\nSubject: Re: Plans\r\nMessage-ID: <${messageId}>\r\nIn-Reply-To: <${parent.messageId}>\r\n`;
    const raw = Buffer.from(
      withFile
        ? `${head}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nSounds good.\r\n--b\r\n` +
            'Content-Type: text/csv\r\nContent-Disposition: attachment; filename="plan.csv"\r\n\r\na,b\r\n--b--\r\n'
        : `${head}\r\nSounds good.\r\n`,
    );
    const { row } = await store.insertInbound(newInbound({ roomId, replyToEventId: parent.eventId, messageId, contentHash: messageId, raw }));
    assert.equal(await postRow(poster, store, row.id), "posted");
    const stored = (await store.getMessagesByMessageId(messageId)).find((m) => m.roomId === roomId);
    return { sends: matrix.sends, rowId: row.id, stored };
  }

  it("room mailbox: a thread message rooted at the conversation's first message", async () => {
    const { sends, rowId, stored } = await postReply("mailbox", "!mb1:hs.test", { eventId: "$first", messageId: "first@bridge.test", references: [] }, new Set());
    assert.equal(sends.length, 1);
    assert.deepEqual(sends[0]!.content["m.relates_to"], { rel_type: "m.thread", event_id: "$first", is_falling_back: true, "m.in_reply_to": { event_id: "$first" } });
    assert.equal(sends[0]!.txnId, `meb-in-${rowId}`);
    assert.deepEqual(stored?.references, ["first@bridge.test"], "a mail with only In-Reply-To is stored with the parent's chain");
  });

  it("room mailbox: a thread message's attachments go into the same thread, falling back to the message", async () => {
    const { sends } = await postReply("mailbox", "!mb3:hs.test", { eventId: "$f", messageId: "f@bridge.test", references: [] }, new Set(), true);
    assert.equal(sends.length, 2);
    assert.equal(sends[1]!.content.body, "plan.csv");
    assert.deepEqual(sends[1]!.content["m.relates_to"], { rel_type: "m.thread", event_id: "$f", is_falling_back: true, "m.in_reply_to": { event_id: "$posted1" } });
  });

  it("group portal: a rich reply", async () => {
    const { sends } = await postReply("group", "!grp:hs.test", { eventId: "$g", messageId: "g@bridge.test", references: [] }, new Set());
    assert.deepEqual(sends[0]!.content["m.relates_to"], { "m.in_reply_to": { event_id: "$g" } });
  });

  it("group portal: a ghost a member removed after the 250 is not joined again; its sender gets a DSN saying why", async () => {
    const roomId = "!removed:hs.test";
    await store.upsertPortal({ roomId, kind: "group", localUserId: null, remoteAddress: null, subject: null, encrypted: false, remoteVerified: true });
    for (const membership of ["leave", "ban"]) {
      const matrix = fakeHomeserver(new Set(), membership);
      const refused: { status: string; diagnostic: string }[] = [];
      const poster = posterFor(store, matrix, async (_row, why) => {
        refused.push({ status: why.status, diagnostic: why.diagnostic });
      });
      const messageId = `after-removal-${membership}@example.org`;
      const raw = Buffer.from(`From: bob@example.org\r\nTo: x@bridge.test\r\nSubject: Re: Plans\r\nMessage-ID: <${messageId}>\r\n\r\nLet me back in.\r\n`);
      const { row } = await store.insertInbound(newInbound({ roomId, messageId, contentHash: messageId, raw }));
      poster.start();
      try {
        for (let i = 0; i < 200 && refused.length === 0; i++) await new Promise((r) => setTimeout(r, 25));
      } finally {
        await poster.stop();
      }
      assert.equal(refused.length, 1, `a DSN for membership ${membership}`);
      assert.equal(refused[0]!.status, "5.7.1");
      assert.match(refused[0]!.diagnostic, /no longer a member of the Matrix room/);
      assert.deepEqual(matrix.joins, [], "the ghost was not joined (the bot would have invited it back)");
      assert.deepEqual(matrix.sends, []);
      assert.equal((await store.getInbound(row.id))?.state, "failed");
    }
  });

  it("a reply that reached the queue before its parent was posted (routed without a parent) answers it once the parent is posted; a stranger's and an unverified sender's do not", async () => {
    for (const kind of ["group", "mailbox"] as const) {
      const roomId = `!late-${kind}:hs.test`;
      await store.upsertPortal({ roomId, kind, localUserId: null, remoteAddress: null, subject: null, encrypted: false, remoteVerified: true });
      // The parent, posted by now: Carol's mail to the room, with Bob among its recipients.
      await store.insertMessage({ roomId, eventId: `$parent-${kind}`, messageId: `parent-${kind}@example.org`, references: [], direction: "inbound", sender: "carol@example.org", subject: "Plans", participants: ["bob@example.org"], viaList: false });
      const cases = [
        { sender: "bob@example.org", verified: true, expect: `$parent-${kind}` },
        { sender: "mallory@example.org", verified: true, expect: null },
        { sender: "bob@example.org", verified: false, expect: null },
      ];
      for (const [i, c] of cases.entries()) {
        const matrix = fakeHomeserver(new Set());
        const poster = posterFor(store, matrix);
        const messageId = `late-${kind}-${i}@example.org`;
        const raw = Buffer.from(`From: ${c.sender}\r\nTo: x@bridge.test\r\nSubject: Re: Plans\r\nMessage-ID: <${messageId}>\r\nIn-Reply-To: <parent-${kind}@example.org>\r\n\r\nCount me in.\r\n`);
        const { row } = await store.insertInbound(
          newInbound({ roomId, replyToEventId: null, messageId, contentHash: messageId, sender: c.sender, senderVerified: c.verified, auth: { spf: "pass", dkim: "none", dmarc: "pass", arc: "none", verified: c.verified }, raw }),
        );
        if (kind === "group") {
          // A group portal posts only for a ghost that is in the room (stillMember).
          (matrix as { stateContent: unknown }).stateContent = async () => ({ membership: "join" });
        }
        assert.equal(await postRow(poster, store, row.id), "posted");
        const rel = matrix.sends[0]!.content["m.relates_to"] as { event_id?: string; "m.in_reply_to"?: { event_id: string } } | undefined;
        assert.equal(rel?.["m.in_reply_to"]?.event_id ?? null, c.expect, `${kind}: ${c.sender} verified=${c.verified}`);
        if (c.expect && kind === "mailbox") assert.equal(rel?.event_id, c.expect, "a thread in the room mailbox");
      }
    }
  });

  it("a thread the homeserver refuses (its root is itself in a thread) is posted as a rich reply", async () => {
    const { sends, rowId } = await postReply("mailbox", "!mb2:hs.test", { eventId: "$inThread", messageId: "t@bridge.test", references: [] }, new Set(["$inThread"]));
    assert.equal(sends.length, 1);
    assert.deepEqual(sends[0]!.content["m.relates_to"], { "m.in_reply_to": { event_id: "$inThread" } });
    assert.equal(sends[0]!.txnId, `meb-in-${rowId}-reply`, "its own txn ID");
    assert.match(String(sends[0]!.content.body), /Sounds good\./);
  });
});
