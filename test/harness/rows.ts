/**
 * Store rows for tests: one inbound mail as the router would commit it, with fields to override.
 */
import type { NewInbound } from "../../src/store/Store.ts";

/**
 * A {@link NewInbound} for room `!room:hs.test`: a verified mail from bob@example.org
 * (Message-ID `m1@mail.test`, content hash `h1`), with any field replaced by `over`.
 */
export function newInbound(over: Partial<NewInbound> = {}): NewInbound {
  return {
    roomId: "!room:hs.test",
    dmLocalUserId: null,
    replyToEventId: null,
    messageId: "m1@mail.test",
    sender: "bob@example.org",
    senderVerified: true,
    senderName: "Bob",
    auth: { spf: "pass", dkim: "pass", dmarc: "pass", arc: "none", verified: true },
    spam: null,
    participants: ["alice@bridge.test"],
    contentHash: "h1",
    envelopeFrom: "bob@example.org",
    kind: "mail",
    raw: Buffer.from("From: bob@example.org\r\n\r\nhi\r\n"),
    ...over,
  };
}
