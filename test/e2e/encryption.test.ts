/**
 * End-to-end-encrypted rooms (issue 11, docs/encryption.md), end to end: a real Synapse with
 * the experimental features appservice encryption needs (MSC2409 to-device messages, MSC3202),
 * the bridge in-process, and a real encrypting client (matrix-js-sdk with its Rust crypto).
 * What is asserted is what that client shows (decrypted text, the shield next to a message)
 * and what the remote MTA receives. A second Synapse without the features shows the
 * fallback: a notice, and nothing bridged.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { parse } from "yaml";
import { simpleParser } from "mailparser";
import { prepareEnv, MAIL_DOMAIN, type PreparedEnv } from "./env.ts";
import { startBridge, type RunningBridge } from "../../src/bridge/Bridge.ts";
import { startE2eeClient, type E2eeClient } from "../harness/e2eeClient.ts";
import { DEVICE_REPLACED_NOTICE, ENCRYPTED_ROOM_BRIDGED_NOTICE, ENCRYPTED_ROOM_NOTICE } from "../../src/bridge/notices.ts";

const BOB = "bob@example.org";
const BOB_GHOST = "@email_bob=40example.org:localhost";
const DAVE_GHOST = "@email_dave=40example.com:localhost";
const BOT = "@emailbot:localhost";

describe("encrypted rooms, homeserver with the experimental features", () => {
  let env: PreparedEnv;
  let bridge: RunningBridge | undefined;
  let alice: E2eeClient;
  let roomId: string;
  /** Message-ID of the last mail Alice's room sent to Bob. */
  let lastMessageId: string;

  const start = async () => {
    bridge = await startBridge(env.config);
    env.smtpPort = bridge.smtpPort;
  };

  before(async () => {
    env = await prepareEnv("sqlite", { allowedUsers: ["@alice:localhost", "@dora:localhost"], synapseE2ee: true });
    env.config.smtp.port = 0;
    await start();
    alice = await startE2eeClient(env.synapse, "alice", "Alice Liddell");
  });
  after(async () => {
    alice?.stop();
    await bridge?.stop();
    await env?.stop();
  });

  it("a message in an encrypted room is mailed with its text; the mailed reply comes back encrypted by the ghost's own device, with no red shield", async () => {
    roomId = await alice.createEncryptedRoom("Secret tea", [BOB_GHOST]);
    await alice.waitForMembership(roomId, BOB_GHOST, "join");
    await alice.waitForMembership(roomId, BOT, "join");
    // The bot says, encrypted, that email itself travels in plaintext.
    const notice = await alice.waitForMessage(roomId, (m) => m.sender === BOT && m.content.body === ENCRYPTED_ROOM_BRIDGED_NOTICE);
    assert.equal(notice.wireType, "m.room.encrypted");
    assert.notEqual(notice.shield?.colour, "red", JSON.stringify(notice.shield));

    await alice.sendText(roomId, "The password is swordfish.");
    const sent = await env.sink.waitForMail((m) => m.rcptTo.includes(BOB) && m.raw.includes("swordfish"), 60_000);
    const mail = await simpleParser(sent.raw);
    assert.equal(mail.from?.value[0]?.address, `alice@${MAIL_DOMAIN}`);
    assert.match(mail.text ?? "", /The password is swordfish\./);
    lastMessageId = mail.messageId!;

    const reply = await env.sendMail({ from: `"Bob Example" <${BOB}>`, to: `alice@${MAIL_DOMAIN}`, subject: "Re: Secret tea", text: "Noted, swordfish it is.", inReplyTo: lastMessageId, references: [lastMessageId] });
    assert.match(reply, /^250/);
    const answer = await alice.waitForMessage(roomId, (m) => m.sender === BOB_GHOST && String(m.content.body).includes("swordfish it is"));
    assert.equal(answer.wireType, "m.room.encrypted", "the ghost's message must be encrypted");
    assert.ok(answer.shield, "an encrypted message has encryption info");
    assert.notEqual(answer.shield.colour, "red", `red shield: ${answer.shield.reason}`);
    // Encrypted by the ghost's own device: the session's owner is the sender.
    const event = alice.client.getRoom(roomId)!.findEventById(answer.eventId)!;
    assert.equal(event.getWireContent().device_id, "EMAILBRIDGE");
  });

  it("a file sent in the encrypted room (an encrypted attachment) is mailed decrypted", async () => {
    const plain = Buffer.concat([Buffer.from("%PDF-1.4\n"), randomBytes(50_000)]);
    const key = randomBytes(32);
    const iv = Buffer.concat([randomBytes(8), Buffer.alloc(8)]);
    const cipher = createCipheriv("aes-256-ctr", key, iv);
    const data = Buffer.concat([cipher.update(plain), cipher.final()]);
    const { content_uri: url } = await alice.client.uploadContent(data, { type: "application/octet-stream", name: "blob" });
    await alice.client.sendMessage(roomId, {
      msgtype: "m.file",
      body: "minutes.pdf",
      info: { mimetype: "application/pdf", size: plain.length },
      file: {
        url,
        key: { kty: "oct", alg: "A256CTR", k: key.toString("base64url"), ext: true, key_ops: ["encrypt", "decrypt"] },
        iv: iv.toString("base64").replace(/=+$/, ""),
        hashes: { sha256: createHash("sha256").update(data).digest("base64").replace(/=+$/, "") },
        v: "v2",
      },
    } as never);
    const sent = await env.sink.waitForMail((m) => m.rcptTo.includes(BOB) && m.raw.includes("minutes.pdf"), 60_000);
    const attachment = (await simpleParser(sent.raw)).attachments.find((a) => a.filename === "minutes.pdf");
    assert.ok(attachment, "the file is attached");
    assert.equal(attachment.contentType, "application/pdf");
    assert.ok(attachment.content.equals(plain), "the attachment is the decrypted file");
  });

  it("after a restart, a message sent while the bridge was down is mailed once, and replies still decrypt", async () => {
    await bridge!.stop();
    bridge = undefined;
    await alice.sendText(roomId, "Sent while the bridge sleeps.");
    await start();
    await env.sink.waitForMail((m) => m.rcptTo.includes(BOB) && m.raw.includes("while the bridge sleeps"), 90_000);
    // Exactly once: give a duplicate time to show up.
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(env.sink.mails.filter((m) => m.raw.includes("while the bridge sleeps")).length, 1);

    await alice.sendText(roomId, "And after it woke up.");
    const sent = await env.sink.waitForMail((m) => m.rcptTo.includes(BOB) && m.raw.includes("after it woke up"), 60_000);
    const id = (await simpleParser(sent.raw)).messageId!;
    await env.sendMail({ from: `"Bob Example" <${BOB}>`, to: `alice@${MAIL_DOMAIN}`, subject: "Re: Secret tea", text: "Good morning from email.", inReplyTo: id, references: [id] });
    const answer = await alice.waitForMessage(roomId, (m) => m.sender === BOB_GHOST && String(m.content.body).includes("Good morning from email"));
    assert.equal(answer.wireType, "m.room.encrypted");
    assert.notEqual(answer.shield?.colour, "red", JSON.stringify(answer.shield));
  });

  it("a lost crypto store: the devices are made anew, the bot says so in the room, and mail flows both ways again", async () => {
    await bridge!.stop();
    bridge = undefined;
    const db = new DatabaseSync(env.config.database.sqlite_file);
    try {
      assert.ok((db.prepare("SELECT COUNT(*) AS n FROM crypto_store").get() as { n: number }).n >= 2, "the bot's and the ghost's state were saved");
      db.exec("DELETE FROM crypto_store");
    } finally {
      db.close();
    }
    await start();
    const notice = await alice.waitForMessage(roomId, (m) => m.sender === BOT && m.content.body === DEVICE_REPLACED_NOTICE);
    assert.notEqual(notice.shield?.colour, "red", JSON.stringify(notice.shield));
    const newDevice = String(alice.client.getRoom(roomId)!.findEventById(notice.eventId)!.getWireContent().device_id);
    assert.match(newDevice, /^EMAILBRIDGE_[0-9A-F]{8}$/, "a new device ID: clients refuse new keys under a known one");

    await alice.sendText(roomId, "Can you still read me after the loss?");
    const sent = await env.sink.waitForMail((m) => m.rcptTo.includes(BOB) && m.raw.includes("still read me after the loss"), 60_000);
    const id = (await simpleParser(sent.raw)).messageId!;
    await env.sendMail({ from: `"Bob Example" <${BOB}>`, to: `alice@${MAIL_DOMAIN}`, subject: "Re: Secret tea", text: "Loud and clear.", inReplyTo: id, references: [id] });
    const answer = await alice.waitForMessage(roomId, (m) => m.sender === BOB_GHOST && String(m.content.body).includes("Loud and clear"));
    assert.equal(answer.wireType, "m.room.encrypted");
    assert.notEqual(answer.shield?.colour, "red", JSON.stringify(answer.shield));
  });

  it("a stranger's mail opens an encrypted DM; the user's encrypted answer is mailed back", async () => {
    const dora = await startE2eeClient(env.synapse, "dora");
    try {
      const reply = await env.sendMail({ from: "Dave <dave@example.com>", to: `dora@${MAIL_DOMAIN}`, subject: "Hi Dora", text: "We met at the conference." });
      assert.match(reply, /^250/);
      const dm = await dora.waitForInvite(DAVE_GHOST, 60_000);
      await dora.join(dm);
      const first = await dora.waitForMessage(dm, (m) => m.sender === DAVE_GHOST && String(m.content.body).includes("We met at the conference"));
      assert.equal(first.wireType, "m.room.encrypted", "the DM must be encrypted");
      assert.notEqual(first.shield?.colour, "red", JSON.stringify(first.shield));

      await dora.sendText(dm, "Nice to hear from you, Dave.");
      const sent = await env.sink.waitForMail((m) => m.rcptTo.includes("dave@example.com") && m.raw.includes("Nice to hear from you"), 60_000);
      assert.equal((await simpleParser(sent.raw)).from?.value[0]?.address, `dora@${MAIL_DOMAIN}`);
    } finally {
      dora.stop();
    }
  });

  it("an encrypted room can have an email address: mail to it is posted encrypted, with no red shield", async () => {
    const vault = await alice.createEncryptedRoom("Vault", [BOT]);
    await alice.waitForMembership(vault, BOT, "join");
    await alice.sendText(vault, "!email mailbox on vault");
    await alice.waitForMessage(vault, (m) => m.sender === BOT && /^Done: mail to vault@/.test(String(m.content.body)));
    assert.match(await env.sendMail({ from: "Erin <erin@example.net>", to: `vault@${MAIL_DOMAIN}`, subject: "Deposit", text: "Two gold bars." }), /^250/);
    const posted = await alice.waitForMessage(vault, (m) => m.sender === "@email_erin=40example.net:localhost" && String(m.content.body).includes("Two gold bars"));
    assert.equal(posted.wireType, "m.room.encrypted");
    assert.notEqual(posted.shield?.colour, "red", JSON.stringify(posted.shield));
  });

  it("a mail's attachment reaches the encrypted room as an encrypted attachment: the media repository holds only ciphertext", async () => {
    const safe = await alice.createEncryptedRoom("Safe", [BOT]);
    await alice.waitForMembership(safe, BOT, "join");
    await alice.sendText(safe, "!email mailbox on safe");
    await alice.waitForMessage(safe, (m) => m.sender === BOT && /^Done: mail to safe@/.test(String(m.content.body)));
    const pdf = Buffer.concat([Buffer.from("%PDF-1.4\n"), randomBytes(30_000)]);
    const raw = [
      "From: Erin <erin@example.net>",
      `To: safe@${MAIL_DOMAIN}`,
      "Subject: The deeds",
      `Message-ID: <deeds.${randomBytes(4).toString("hex")}@example.net>`,
      `Date: ${new Date().toUTCString()}`,
      "MIME-Version: 1.0",
      'Content-Type: multipart/mixed; boundary="b1"',
      "",
      "--b1",
      "Content-Type: text/plain; charset=utf-8",
      "",
      "The deeds are attached.",
      "--b1",
      'Content-Type: application/pdf; name="deeds.pdf"',
      'Content-Disposition: attachment; filename="deeds.pdf"',
      "Content-Transfer-Encoding: base64",
      "",
      pdf.toString("base64").replace(/.{76}/g, "$&\r\n"),
      "--b1--",
      "",
    ].join("\r\n");
    assert.match(await env.sendRaw(raw, { from: "erin@example.net", to: `safe@${MAIL_DOMAIN}` }), /^250/);
    const posted = await alice.waitForMessage(safe, (m) => m.sender === "@email_erin=40example.net:localhost" && m.content.body === "deeds.pdf");
    assert.equal(posted.wireType, "m.room.encrypted");
    assert.equal(posted.content.msgtype, "m.file");
    assert.equal(posted.content.url, undefined, "no plain media URL");
    const file = posted.content.file as { url: string; key: { k: string; alg: string }; iv: string; hashes: { sha256: string } };
    assert.equal(file.key.alg, "A256CTR");
    const [serverName, mediaId] = file.url.replace("mxc://", "").split("/");
    const res = await fetch(`${env.synapse.url}/_matrix/client/v1/media/download/${serverName}/${mediaId}`, { headers: { Authorization: `Bearer ${alice.client.getAccessToken()}` } });
    assert.equal(res.status, 200);
    const stored = Buffer.from(await res.arrayBuffer());
    assert.ok(!stored.equals(pdf) && !stored.includes(pdf.subarray(0, 64)), "the homeserver holds ciphertext only");
    assert.equal(createHash("sha256").update(stored).digest("base64").replace(/=+$/, ""), file.hashes.sha256);
    // Decrypted here with node:crypto alone, as a client would (AES-256-CTR, key and IV from the event).
    const decipher = createDecipheriv("aes-256-ctr", Buffer.from(file.key.k, "base64url"), Buffer.from(file.iv, "base64"));
    assert.ok(Buffer.concat([decipher.update(stored), decipher.final()]).equals(pdf), "the event's key decrypts it to the attachment");
  });
});

describe("encrypted rooms, homeserver without the experimental features", () => {
  let env: PreparedEnv;
  let bridge: RunningBridge | undefined;
  let carol: E2eeClient;

  before(async () => {
    env = await prepareEnv("sqlite", { allowedUsers: ["@carol:localhost"] });
    env.config.smtp.port = 0;
    bridge = await startBridge(env.config);
    env.smtpPort = bridge.smtpPort;
    carol = await startE2eeClient(env.synapse, "carol");
  });
  after(async () => {
    carol?.stop();
    await bridge?.stop();
    await env?.stop();
  });

  it("the bridge falls back to today's notice: nothing is bridged and the ghost leaves", async () => {
    const roomId = await carol.createEncryptedRoom("No features", [BOB_GHOST]);
    const notice = await carol.waitForMessage(roomId, (m) => m.sender === BOT);
    assert.equal(notice.content.body, ENCRYPTED_ROOM_NOTICE);
    assert.equal(notice.wireType, "m.room.message", "as before encryption support: the notice is in plaintext");
    await carol.waitForMembership(roomId, BOB_GHOST, "leave");
    // The bot stays to answer commands, but nothing here goes out by mail.
    await carol.sendText(roomId, "Is anybody mailing this?");
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(env.sink.mails.filter((m) => m.raw.includes("anybody mailing this")).length, 0);
  });

  it("without the features the crypto library is never loaded: the bot's device stays keyless, unsaved, and is used again after a restart", async () => {
    const registration = parse(readFileSync(env.config.appservice.registration_file, "utf8")) as { as_token: string };
    const devices = async (): Promise<string[]> => {
      const res = await fetch(`${env.synapse.url}/_matrix/client/v3/devices?user_id=${encodeURIComponent(BOT)}`, { headers: { Authorization: `Bearer ${registration.as_token}` } });
      assert.equal(res.status, 200);
      return ((await res.json()) as { devices: { device_id: string }[] }).devices.map((d) => d.device_id).filter((id) => id.startsWith("EMAILBRIDGE")).sort();
    };
    const savedDevices = (): number => {
      const db = new DatabaseSync(env.config.database.sqlite_file);
      try {
        return Number((db.prepare("SELECT COUNT(*) AS n FROM crypto_store").get() as { n: number }).n);
      } finally {
        db.close();
      }
    };
    assert.deepEqual(await devices(), ["EMAILBRIDGE"]);
    assert.equal(savedDevices(), 0, "no crypto machine was made, so no state was saved");
    await bridge!.stop();
    bridge = await startBridge(env.config);
    env.smtpPort = bridge.smtpPort;
    // The keyless device of the first start is used again: not "lost", not replaced by a new ID.
    assert.deepEqual(await devices(), ["EMAILBRIDGE"]);
    assert.equal(savedDevices(), 0);
  });
});
