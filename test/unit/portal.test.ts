import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { DmPortal, GroupPortal, MailboxPortal, portalOf, type PortalContext } from "../../src/bridge/Portal.ts";
import type { MessageRow, PortalRow } from "../../src/store/Store.ts";
import type { IdContext } from "../../src/bridge/ids.ts";

const ids: IdContext = { ghostPrefix: "email_", serverName: "hs.example", mailDomain: "bridge.example", botLocalpart: "emailbot", caseSensitiveLocalparts: false };
const row = (over: Partial<PortalRow>): PortalRow => ({ roomId: "!r:hs.example", kind: "group", localUserId: null, remoteAddress: null, subject: null, encrypted: false, remoteVerified: true, createdAt: 0, ...over });
const message = (over: Partial<MessageRow>): MessageRow => ({
  roomId: "!r:hs.example",
  eventId: "$e",
  messageId: "m@x",
  references: [],
  direction: "inbound",
  sender: "bob@example.org",
  subject: "Hi",
  participants: [],
  viaList: false,
  createdAt: 0,
  ...over,
});

function context(opts: { members?: string[]; subscribers?: string[]; latest?: MessageRow | null; name?: string | null } = {}): PortalContext {
  return {
    ids,
    store: { latestInboundMessage: async () => opts.latest ?? null, listSubscribers: async () => opts.subscribers ?? [] },
    matrix: {
      joinedMembers: async () => opts.members ?? [],
      stateContent: async (_room: string, type: string) => (type === "m.room.name" && opts.name != null ? { name: opts.name } : null),
    },
  };
}

describe("Portal", () => {
  it("portalOf makes the kind's class; a DM without a remote address is refused", () => {
    assert.ok(portalOf(row({ kind: "dm", remoteAddress: "bob@example.org", localUserId: "@a:hs.example" })) instanceof DmPortal);
    assert.ok(portalOf(row({ kind: "group" })) instanceof GroupPortal);
    assert.ok(portalOf(row({ kind: "mailbox" })) instanceof MailboxPortal);
    assert.throws(() => portalOf(row({ kind: "dm" })), TypeError);
  });

  it("a DM: read as the remote party's (verified or unverified) ghost, no bot, mail to the remote party, continuing its latest mail", async () => {
    const dm = portalOf(row({ kind: "dm", remoteAddress: "bob@example.org" }));
    assert.equal(dm.reader(ids), "@email_bob=40example.org:hs.example");
    assert.equal(portalOf(row({ kind: "dm", remoteAddress: "bob@example.org", remoteVerified: false })).reader(ids), "@email_bob=40example.org/unverified:hs.example");
    assert.equal(dm.hasBot, false);
    assert.deepEqual(await dm.recipients(null, context()), { envelope: ["bob@example.org"], to: ["bob@example.org"], list: false });
    const latest = message({ messageId: "latest@x" });
    assert.equal(await dm.implicitParent(context({ latest })), latest);
    assert.deepEqual(await dm.describe(context({ name: "ignored" })), { label: "in a direct chat", name: null });
  });

  it("a group: read as the bot; mail to the verified ghosts joined, each once (never to an unverified one); a new topic per message; named by the room", async () => {
    const group = portalOf(row({ kind: "group" }));
    assert.equal(group.reader(ids), "@emailbot:hs.example");
    assert.equal(group.hasBot, true);
    const members = ["@alice:hs.example", "@email_bob=40example.org:hs.example", "@email_bob=40example.org/unverified:hs.example", "@email_carol=40example.net:hs.example", "@email_ceo=40bank.test/unverified:hs.example", "@emailbot:hs.example"];
    assert.deepEqual(await group.recipients(null, context({ members })), { envelope: ["bob@example.org", "carol@example.net"], to: ["bob@example.org", "carol@example.net"], list: false });
    assert.equal(await group.implicitParent(context({ latest: message({}) })), null);
    assert.deepEqual(await group.describe(context({ name: " Tea " })), { label: 'in the room "Tea"', name: "Tea" });
    assert.deepEqual(await group.describe(context({ name: null })), { label: "in a room", name: null });
  });

  it("a room mailbox: a reply in a conversation goes to its people; anything else to the subscribers as a list mail", async () => {
    const mailbox = portalOf(row({ kind: "mailbox" }));
    const parent = message({ sender: "bob@example.org", participants: ["team@bridge.example", "carol@example.net", "bob@example.org"] });
    assert.deepEqual(await mailbox.recipients(parent, context({ subscribers: ["s@example.com"] })), { envelope: ["bob@example.org", "carol@example.net"], to: ["bob@example.org", "carol@example.net"], list: false });
    assert.deepEqual(await mailbox.recipients(null, context({ subscribers: ["s@example.com"] })), { envelope: ["s@example.com"], to: [], list: true });
    assert.deepEqual(await mailbox.recipients(message({ viaList: true }), context({ subscribers: ["s@example.com"] })), { envelope: ["s@example.com"], to: [], list: true });
  });

  it("only a room mailbox threads replies; only a DM keeps senders' ghosts out (the DM is its ghost's room)", () => {
    const dm = portalOf(row({ kind: "dm", remoteAddress: "bob@example.org", localUserId: "@a:hs.example" }));
    const group = portalOf(row({ kind: "group" }));
    const mailbox = portalOf(row({ kind: "mailbox" }));
    assert.deepEqual([dm.threadsReplies, group.threadsReplies, mailbox.threadsReplies], [false, false, true]);
    assert.deepEqual([dm.joinsSenders, group.joinsSenders, mailbox.joinsSenders], [false, true, true]);
  });

  it("a DM belongs to its local user: declining its invite refuses the remote address, joining accepts it when verified", () => {
    const owner = "@a:hs.example";
    const dm = portalOf(row({ kind: "dm", remoteAddress: "bob@example.org", localUserId: owner }));
    assert.equal(dm.isOwnedBy(owner), true);
    assert.equal(dm.isOwnedBy("@other:hs.example"), false);
    assert.equal(dm.refusedOnDecline(owner), "bob@example.org");
    assert.equal(dm.acceptedOnJoin(owner), "bob@example.org");
    // Someone else leaving or joining decides nothing about the owner's contacts.
    assert.equal(dm.refusedOnDecline("@other:hs.example"), null);
    assert.equal(dm.acceptedOnJoin("@other:hs.example"), null);
    // An unverified sender's DM can be refused, but joining it vouches for nobody.
    const unverified = portalOf(row({ kind: "dm", remoteAddress: "bob@example.org", localUserId: owner, remoteVerified: false }));
    assert.equal(unverified.refusedOnDecline(owner), "bob@example.org");
    assert.equal(unverified.acceptedOnJoin(owner), null);
  });

  it("group and mailbox rooms belong to nobody: declining or joining them refuses or accepts no address", () => {
    // Even a row that carries DM-only fields: the kind decides.
    for (const kind of ["group", "mailbox"] as const) {
      const portal = portalOf(row({ kind, localUserId: "@a:hs.example", remoteAddress: "bob@example.org" }));
      assert.equal(portal.isOwnedBy("@a:hs.example"), false, kind);
      assert.equal(portal.refusedOnDecline("@a:hs.example"), null, kind);
      assert.equal(portal.acceptedOnJoin("@a:hs.example"), null, kind);
    }
  });

  it("a room mailbox without its mailbox becomes a group portal of the same room, everything else kept", () => {
    const stored = row({ kind: "mailbox", roomId: "!m:hs.example", subject: "Team", encrypted: true, createdAt: 42 });
    const mailbox = portalOf(stored);
    assert.ok(mailbox instanceof MailboxPortal);
    const after = mailbox.withoutMailbox();
    assert.deepEqual(after, { ...stored, kind: "group" });
    assert.ok(portalOf(after) instanceof GroupPortal);
    assert.equal(stored.kind, "mailbox", "the stored row is not changed in place");
  });
});
