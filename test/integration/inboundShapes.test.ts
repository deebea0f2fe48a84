/**
 * The inbound poster with the mail shapes of issue 9, on a real SQLite store with a fake
 * homeserver that records every upload and send in order: inline (`cid:`) images are uploaded
 * before the message that shows them and not posted again; images that cannot be shown inline
 * (over the upload limit, refused, cut away with the HTML) are posted after it; forwarded messages
 * and calendars are shown as blocks and posted once; a folded reply, a cut subject and a subject
 * that lost control characters bring the original along; automatic mail is a notice; a mail with
 * nothing to show but a file posts the file alone.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InboundPoster } from "../../src/bridge/InboundPoster.ts";
import type { MatrixActions, MediaStream } from "../../src/bridge/ports.ts";
import { decryptFile, type EncryptedFile } from "../../src/bridge/format/encryptedFile.ts";
import { MAX_DATA_IMAGES } from "../../src/bridge/format/mailParts.ts";
import { AUTH_FIELD } from "../../src/bridge/format/toMatrix.ts";
import type { IdContext } from "../../src/bridge/ids.ts";
import { openStore } from "../../src/store/open.ts";
import { SqlStore } from "../../src/store/SqlStore.ts";
import { RawCipher } from "../../src/store/rawCipher.ts";
import { randomBytes } from "node:crypto";
import type { BridgeStore, NewInbound } from "../../src/store/Store.ts";
import { configureLogging } from "../../src/util/logger.ts";
import { newInbound } from "../harness/rows.ts";
import { FakeHttpError, postRow, strictHomeserver } from "../harness/fakeHomeserver.ts";

if (!process.env.MEB_LOG_LEVEL) configureLogging({ level: "error" });

const IDS: IdContext = { ghostPrefix: "email_", serverName: "hs.test", mailDomain: "bridge.test", botLocalpart: "emailbot", caseSensitiveLocalparts: false };

/** An error the fake homeserver throws, with the status it classifies as (null: a network error, temporary). */
type Op = { op: "upload"; name: string; type: string; size: number; url: string; data: Buffer; streamed?: boolean } | { op: "send"; content: Record<string, unknown>; txnId: string | undefined };

/** What the fake homeserver does with an upload: accept it, refuse it (400), or fail (temporary). */
type UploadRule = (type: string, name: string, attempt: number) => "ok" | "refuse" | "fail";

/** A homeserver that records uploads and sends in order; uploads are judged by `rule`. */
function fakeHomeserver(limit: number | null, rule: UploadRule, encrypted = false): MatrixActions & { ops: Op[] } {
  const ops: Op[] = [];
  const attempts = new Map<string, number>();
  const known: Partial<MatrixActions> = {
    ensureGhost: async () => {},
    join: async () => {},
    sendEvent: async (_user, _room, _type, content, txnId) => {
      // Idempotent by transaction ID, as the Client-Server API is.
      const earlier = ops.findIndex((o) => o.op === "send" && o.txnId === txnId);
      if (earlier >= 0) return `$event${earlier}`;
      ops.push({ op: "send", content, txnId });
      return `$event${ops.length - 1}`;
    },
    uploadLimitBytes: async () => limit,
    isEncrypted: async () => encrypted,
    uploadContent: async (_user, data, type, name) => {
      const key = `${type} ${name}`;
      const attempt = (attempts.get(key) ?? 0) + 1;
      attempts.set(key, attempt);
      const verdict = rule(type, name, attempt);
      if (verdict === "refuse") throw new FakeHttpError(400, `M_UNKNOWN: ${type} not accepted`);
      if (verdict === "fail") throw new FakeHttpError(null, "connection reset");
      // A streamed upload is read as a homeserver reads it, and checked against its length.
      const body = Buffer.isBuffer(data) ? data : await readStream(data);
      const url = `mxc://hs.test/u${ops.filter((o) => o.op === "upload").length + 1}`;
      ops.push({ op: "upload", name, type, size: body.length, url, data: body, streamed: !Buffer.isBuffer(data) });
      return url;
    },
  };
  return strictHomeserver(known, { ops });
}

/** Read a streamed upload whole, as a homeserver does; one whose length is not the one announced is refused. */
async function readStream(media: MediaStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  media.stream.on("data", (chunk: Buffer) => parts.push(chunk));
  await new Promise<void>((resolve, reject) => {
    media.stream.once("end", resolve);
    media.stream.once("error", reject);
    media.stream.resume();
  });
  const body = Buffer.concat(parts);
  if (body.length !== media.bytes) throw new FakeHttpError(400, `M_UNKNOWN: Content-Length ${media.bytes}, body ${body.length}`);
  return body;
}

/** A 1×1 PNG-looking payload of `size` bytes (the fake homeserver does not look inside). */
function image(size: number, seed: number): Buffer {
  return Buffer.from(Array.from({ length: size }, (_, i) => (i * 7 + seed) % 256));
}

/** A multipart/related mail: HTML showing `cid:logo@x`, the logo, an unreferenced photo, and a PDF. */
function relatedMail(opts: { logo: Buffer; html?: string; messageId: string }): Buffer {
  const html = opts.html ?? '<p>Our logo:</p><p><img src="cid:logo@x" alt="logo"></p><p>The end.</p>';
  return Buffer.from(
    [
      "From: Bob <bob@example.org>",
      "To: team@bridge.test",
      "Subject: Logo",
      `Message-ID: <${opts.messageId}>`,
      "MIME-Version: 1.0",
      'Content-Type: multipart/mixed; boundary="m"',
      "",
      "--m",
      'Content-Type: multipart/related; boundary="r"',
      "",
      "--r",
      "Content-Type: text/html; charset=utf-8",
      "",
      html,
      "--r",
      "Content-Type: image/png; name=logo.png",
      "Content-Disposition: inline; filename=logo.png",
      "Content-ID: <logo@x>",
      "Content-Transfer-Encoding: base64",
      "",
      opts.logo.toString("base64"),
      "--r",
      "Content-Type: image/png; name=photo.png",
      "Content-Disposition: inline; filename=photo.png",
      "Content-ID: <photo@x>",
      "Content-Transfer-Encoding: base64",
      "",
      image(30, 9).toString("base64"),
      "--r--",
      "--m",
      "Content-Type: application/pdf; name=doc.pdf",
      "Content-Disposition: attachment; filename=doc.pdf",
      "Content-Transfer-Encoding: base64",
      "",
      Buffer.from("%PDF-1.4 tiny").toString("base64"),
      "--m--",
      "",
    ].join("\r\n"),
  );
}

/** A poster over `store` and `matrix` that expects no notice and no undeliverable mail. */
function posterOver(store: BridgeStore, matrix: MatrixActions, maxTextBytes = 24000): InboundPoster {
  return new InboundPoster({
    store,
    matrix,
    ids: IDS,
    botDisplayName: "Email bridge",
    settings: { retryHours: 1, retryBaseMs: 10, retryMaxMs: 20, concurrency: 1, maxTextBytes },
    notices: { post: async () => Promise.reject(new Error("no notice expected")) },
    onUndeliverable: async () => Promise.reject(new Error("nothing should be undeliverable")),
    pollMs: 20,
  });
}

describe("inbound poster: inline images, forwards, calendars, folded replies, automatic mail", () => {
  let dir: string;
  let store: BridgeStore;
  let defaultStore: BridgeStore;
  let counter = 0;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "meb-shapes-"));
    store = defaultStore = await openStore({ url: null, sqliteFile: join(dir, "bridge.sqlite") });
  });
  after(async () => {
    await store?.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  /** Post one mail; returns what the homeserver saw, in order. */
  async function post(raw: Buffer, opts: { over?: Partial<NewInbound>; limit?: number | null; rule?: UploadRule; maxTextBytes?: number; encrypted?: boolean; via?: BridgeStore } = {}): Promise<Op[]> {
    const matrix = fakeHomeserver(opts.limit ?? null, opts.rule ?? (() => "ok"), opts.encrypted ?? false);
    const store = opts.via ?? defaultStore;
    const poster = posterOver(store, matrix, opts.maxTextBytes);
    const id = `shape-${++counter}@example.org`;
    const { row } = await store.insertInbound(newInbound({ roomId: `!shapes${counter}:hs.test`, messageId: id, contentHash: id, raw, ...opts.over }));
    assert.equal(await postRow(poster, store, row.id, 400), "posted");
    return matrix.ops;
  }

  const sends = (ops: Op[]) => ops.filter((o): o is Extract<Op, { op: "send" }> => o.op === "send");

  it("a cid: image is uploaded before the message and shown in it; the unreferenced image and the PDF follow as files", async () => {
    const logo = image(40, 1);
    const ops = await post(relatedMail({ logo, messageId: "inline-1@example.org" }));
    assert.deepEqual(
      ops.map((o) => (o.op === "upload" ? `upload ${o.name}` : `send ${String(o.content.msgtype)} ${String(o.content.body).split("\n")[0]}`)),
      ["upload logo.png", "send m.text Logo", "upload photo.png", "send m.image photo.png", "upload doc.pdf", "send m.file doc.pdf"],
    );
    const upload = ops[0] as Extract<Op, { op: "upload" }>;
    assert.equal(upload.size, logo.length);
    assert.equal(upload.type, "image/png");
    assert.equal(sends(ops)[0]!.content.formatted_body, `<p><strong>Logo</strong></p><p>Our logo:</p><p><img src="${upload.url}" alt="logo" /></p><p>The end.</p>`);
  });

  it("in an encrypted room every file is an encrypted attachment: only ciphertext is uploaded, the key is in the event; the cid: image follows the message", async () => {
    const logo = image(40, 9);
    const ops = await post(relatedMail({ logo, messageId: "inline-enc@example.org" }), { encrypted: true });
    assert.deepEqual(
      ops.map((o) => (o.op === "upload" ? `upload ${o.name} ${o.type}` : `send ${String(o.content.msgtype)} ${String(o.content.body).split("\n")[0]}`)),
      [
        "send m.text Logo",
        "upload logo.png application/octet-stream",
        "send m.image logo.png",
        "upload photo.png application/octet-stream",
        "send m.image photo.png",
        "upload doc.pdf application/octet-stream",
        "send m.file doc.pdf",
      ],
    );
    const [message, logoEvent] = sends(ops);
    assert.ok(!String(message!.content.formatted_body).includes("<img"), "no plain media in the message");
    const upload = ops.find((o): o is Extract<Op, { op: "upload" }> => o.op === "upload" && o.name === "logo.png")!;
    assert.ok(!upload.data.equals(logo), "the homeserver never gets the plaintext");
    assert.equal(logoEvent!.content.url, undefined);
    const file = logoEvent!.content.file as EncryptedFile;
    assert.equal(file.url, upload.url);
    assert.deepEqual(logoEvent!.content.info, { mimetype: "image/png", size: logo.length });
    assert.ok(decryptFile(upload.data, file).equals(logo), "the event's key decrypts the upload to the image");
  });

  /** A text/html mail whose HTML carries its images itself (`data:` URLs, RFC 2397). */
  function dataImageMail(images: Buffer[], messageId: string): Buffer {
    const imgs = images.map((b, i) => `<img src="data:image/png;base64,${b.toString("base64")}" alt="pic${i}">`).join("");
    return Buffer.from([`From: Bob <bob@example.org>`, `Message-ID: <${messageId}>`, "Subject: Pictures", "MIME-Version: 1.0", "Content-Type: text/html; charset=utf-8", "", `<p>Look:</p><p>${imgs}</p>`, ""].join("\r\n"));
  }

  it("a data: image in the HTML is uploaded before the message and shown in it, like a cid: image", async () => {
    const pic = image(60, 11);
    const ops = await post(dataImageMail([pic], "data-1@example.org"));
    assert.deepEqual(
      ops.map((o) => (o.op === "upload" ? `upload ${o.name} ${o.type}` : `send ${String(o.content.msgtype)} ${String(o.content.body).split("\n")[0]}`)),
      ["upload image-1.png image/png", "send m.text Pictures"],
    );
    const upload = ops[0] as Extract<Op, { op: "upload" }>;
    assert.ok(upload.data.equals(pic), "the decoded bytes are uploaded");
    assert.equal(sends(ops)[0]!.content.formatted_body, `<p><strong>Pictures</strong></p><p>Look:</p><p><img src="${upload.url}" alt="pic0" /></p>`);
  });

  it("in an encrypted room a data: image follows the message as an encrypted image; none is lost", async () => {
    const pic = image(60, 12);
    const ops = await post(dataImageMail([pic], "data-enc@example.org"), { encrypted: true });
    assert.deepEqual(
      ops.map((o) => (o.op === "upload" ? `upload ${o.name} ${o.type}` : `send ${String(o.content.msgtype)} ${String(o.content.body).split("\n")[0]}`)),
      ["send m.text Pictures", "upload image-1.png application/octet-stream", "send m.image image-1.png"],
    );
    const upload = ops.find((o): o is Extract<Op, { op: "upload" }> => o.op === "upload")!;
    assert.ok(decryptFile(upload.data, sends(ops)[1]!.content.file as EncryptedFile).equals(pic));
  });

  it(`data: images past ${MAX_DATA_IMAGES} are not shown: the message says so and the original follows as message.eml`, async () => {
    const pics = Array.from({ length: MAX_DATA_IMAGES + 1 }, (_, i) => image(20, 100 + i));
    const ops = await post(dataImageMail(pics, "data-many@example.org"));
    const names = ops.filter((o): o is Extract<Op, { op: "upload" }> => o.op === "upload").map((o) => o.name);
    assert.equal(names.filter((n) => n.startsWith("image-")).length, MAX_DATA_IMAGES);
    assert.ok(names.includes("message.eml"), names.join(", "));
    const message = sends(ops)[0]!;
    assert.match(String(message.content.body), /^🖼️ 1 image embedded in this mail is not shown here; the original is attached as message\.eml\./u);
    assert.equal((String(message.content.formatted_body).match(/<img /g) ?? []).length, MAX_DATA_IMAGES);
  });

  it("a cid: image over the upload limit is not shown; it is named in a notice after the message", async () => {
    const ops = await post(relatedMail({ logo: image(500, 2), messageId: "inline-2@example.org" }), { limit: 100 });
    assert.equal(ops[0]!.op, "send", "nothing is uploaded before the message");
    const [message, logoNotice] = sends(ops);
    assert.ok(!String(message!.content.formatted_body).includes("<img"), String(message!.content.formatted_body));
    assert.equal(logoNotice!.content.msgtype, "m.notice");
    assert.match(String(logoNotice!.content.body), /^📎 logo\.png \(500 bytes\) is larger than this homeserver's upload limit of 100 bytes/u);
  });

  it("a cid: image the homeserver refuses is posted after the message, as application/octet-stream", async () => {
    const ops = await post(relatedMail({ logo: image(40, 3), messageId: "inline-3@example.org" }), { rule: (type, name) => (type === "image/png" && name === "logo.png" ? "refuse" : "ok") });
    const [message, logo] = sends(ops);
    assert.ok(!String(message!.content.formatted_body).includes("<img"));
    assert.equal(logo!.content.body, "logo.png");
    assert.equal(logo!.content.msgtype, "m.file");
    assert.deepEqual(logo!.content.info, { mimetype: "application/octet-stream", size: 40 });
  });

  it("a temporary upload failure retries the mail; the message is sent once", async () => {
    const ops = await post(relatedMail({ logo: image(40, 4), messageId: "inline-4@example.org" }), { rule: (_t, name, attempt) => (name === "logo.png" && attempt === 1 ? "fail" : "ok") });
    const messages = sends(ops).filter((s) => String(s.content.body).startsWith("Logo"));
    assert.equal(messages.length, 1);
    assert.ok(String(messages[0]!.content.formatted_body).includes('<img src="mxc://hs.test/'));
  });

  it("HTML cut away (the mail is too long): the uploaded image is posted as a file with its upload, not uploaded again", async () => {
    const html = `<p>${"long text ".repeat(400)}</p><p><img src="cid:logo@x" alt="logo"></p>`;
    const ops = await post(relatedMail({ logo: image(40, 5), html, messageId: "inline-5@example.org" }), { maxTextBytes: 1024 });
    const uploads = ops.filter((o) => o.op === "upload").map((o) => (o as Extract<Op, { op: "upload" }>).name);
    assert.equal(uploads.filter((n) => n === "logo.png").length, 1, "uploaded once");
    const [message, ...files] = sends(ops);
    assert.ok(!String(message!.content.formatted_body).includes("<img"));
    assert.ok(String(message!.content.body).includes("✂️"));
    const logo = files.find((f) => f.content.body === "logo.png");
    assert.equal(logo?.content.url, (ops[0] as Extract<Op, { op: "upload" }>).url);
    assert.equal(logo?.content.msgtype, "m.image");
  });

  it("a forwarded message is a quoted block and a .eml file; a calendar in two parts is summarised and posted once", async () => {
    const ics = "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:u1\r\nSUMMARY:Review\r\nDTSTART:20261109T140000Z\r\nDTEND:20261109T150000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    const inner = "From: Carol <carol@example.net>\r\nTo: bob@example.org\r\nSubject: Numbers\r\nDate: Fri, 30 Oct 2026 16:45:00 +0100\r\n\r\nThe numbers.\r\n";
    const raw = Buffer.from(
      [
        "From: bob@example.org",
        "To: team@bridge.test",
        "Subject: Fwd and invite",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="m"',
        "",
        "--m",
        'Content-Type: multipart/alternative; boundary="a"',
        "",
        "--a",
        "Content-Type: text/plain",
        "",
        "See both.",
        "--a",
        "Content-Type: text/calendar; method=REQUEST; charset=utf-8",
        "",
        ics.trimEnd(),
        "--a--",
        "--m",
        "Content-Type: message/rfc822",
        "Content-Disposition: inline",
        "",
        inner,
        "--m",
        "Content-Type: application/ics; name=invite.ics",
        "Content-Disposition: attachment; filename=invite.ics",
        "Content-Transfer-Encoding: base64",
        "",
        Buffer.from(ics).toString("base64"),
        "--m--",
        "",
      ].join("\r\n"),
    );
    const ops = await post(raw);
    const [message, ...files] = sends(ops);
    const body = String(message!.content.body);
    assert.ok(body.startsWith("Fwd and invite\n\nSee both.\n\n📅 Invitation: Review\nWhen: Mon, 9 Nov 2026, 14:00–15:00 (UTC)\n(the calendar file is attached as invite.ics)\n\n---------- Forwarded message ----------\n> From: Carol <carol@example.net>\n> Date: Fri, 30 Oct 2026 16:45:00 +0100\n> Subject: Numbers\n> To: bob@example.org\n>\n> The numbers.\n(the forwarded message is attached as Numbers.eml)"), body);
    assert.deepEqual(
      files.map((f) => [f.content.body, (f.content.info as { mimetype: string }).mimetype]),
      [
        ["Numbers.eml", "message/rfc822"],
        ["invite.ics", "application/ics"],
      ],
    );
  });

  it("a folded reply brings the whole mail as message.eml; a reply with nothing to fold does not", async () => {
    const head = "From: bob@example.org\r\nTo: team@bridge.test\r\nSubject: Re: Plan\r\nIn-Reply-To: <root@example.org>\r\n\r\n";
    const folded = Buffer.from(`${head}Yes.\r\n\r\nOn Mon, 2 Nov 2026 at 10:00, Bob <bob@example.org> wrote:\r\n> Plan?\r\n`);
    const ops = await post(folded, { over: { replyToEventId: "$root" } });
    const [message, eml] = sends(ops);
    assert.equal(message!.content.body, "Yes.");
    assert.equal(eml!.content.body, "message.eml");
    assert.equal((ops.find((o) => o.op === "upload") as Extract<Op, { op: "upload" }>).size, folded.length);

    const plain = await post(Buffer.from(`${head}Yes, no quote.\r\n`), { over: { replyToEventId: "$root" } });
    assert.deepEqual(
      sends(plain).map((s) => s.content.body),
      ["Yes, no quote."],
    );
  });

  it("a mail stored in chunks is posted exactly as one stored whole: the same events, the same bytes uploaded, the same message.eml", async () => {
    // 512-byte chunks: every part of these mails crosses chunk boundaries.
    const chunked = new SqlStore((store as SqlStore).db, { rawChunkBytes: 512 });
    const strip = (ops: Op[]) => ops.map((o) => (o.op === "upload" ? { ...o, url: "" } : { ...o, txnId: "", content: { ...o.content, url: o.content.url ? "mxc" : undefined } }));
    const mail = relatedMail({ logo: image(4000, 3), messageId: "chunked-1@example.org" });
    assert.ok(mail.length > 8 * 512);
    const whole = await post(mail);
    const inChunks = await post(mail, { via: chunked });
    assert.deepEqual(strip(inChunks), strip(whole));
    const head = "From: bob@example.org\r\nTo: team@bridge.test\r\nSubject: Re: Plan\r\nIn-Reply-To: <root@example.org>\r\n\r\n";
    const folded = Buffer.from(`${head}Yes.\r\n\r\nOn Mon, 2 Nov 2026 at 10:00, Bob <bob@example.org> wrote:\r\n${"> Plan?\r\n".repeat(300)}`);
    const eml = (await post(folded, { over: { replyToEventId: "$root" }, via: chunked })).find((o): o is Extract<Op, { op: "upload" }> => o.op === "upload");
    assert.ok(eml?.data.equals(folded), "message.eml is the whole stored mail");
  });

  it("a large attachment of a chunked mail is streamed to the homeserver with its length; refused as typed, it is read again and uploaded as octet-stream; a temporary failure retries the row", async () => {
    const chunked = new SqlStore((store as SqlStore).db, { rawChunkBytes: 64 * 1024 });
    const big = Buffer.from(Array.from({ length: 1_300_000 }, (_, i) => (i * 13 + (i >> 11)) % 256));
    const small = image(3000, 9);
    const mail = Buffer.from(
      [
        "From: Bob <bob@example.org>",
        "To: room@bridge.test",
        "Subject: the report",
        "Message-ID: <streamed@example.org>",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="m"',
        "",
        "--m",
        "Content-Type: text/plain",
        "",
        "Both files attached.",
        "--m",
        'Content-Type: application/pdf; name="report.pdf"',
        'Content-Disposition: attachment; filename="report.pdf"',
        "Content-Transfer-Encoding: base64",
        "",
        ...(big.toString("base64").match(/.{1,76}/g) ?? []),
        "--m",
        'Content-Type: image/png; name="small.png"',
        'Content-Disposition: attachment; filename="small.png"',
        "Content-Transfer-Encoding: base64",
        "",
        ...(small.toString("base64").match(/.{1,76}/g) ?? []),
        "--m--",
        "",
      ].join("\r\n"),
    );
    const uploads = (ops: Op[]) => ops.filter((o): o is Extract<Op, { op: "upload" }> => o.op === "upload");

    const ops = await post(mail, { via: chunked });
    const [pdf, png] = uploads(ops);
    assert.equal(pdf?.name, "report.pdf");
    assert.equal(pdf?.streamed, true, "the large attachment is streamed");
    assert.ok(pdf?.data.equals(big), "byte for byte");
    assert.equal(png?.streamed, false, "a small one is uploaded whole");
    assert.ok(png?.data.equals(small));
    const file = sends(ops).find((o) => o.content.body === "report.pdf");
    assert.deepEqual(file?.content.info, { mimetype: "application/pdf", size: big.length });

    const whole = await post(mail, { via: new SqlStore((store as SqlStore).db, { rawChunkBytes: 8 * 1024 * 1024 }) });
    assert.equal(uploads(whole)[0]?.streamed, false, "a mail stored whole is not streamed");
    assert.ok(uploads(whole)[0]?.data.equals(big));

    const refused = await post(mail, { via: chunked, rule: (type) => (type === "application/pdf" ? "refuse" : "ok") });
    const again = uploads(refused).find((o) => o.name === "report.pdf");
    assert.equal(again?.type, "application/octet-stream");
    assert.equal(again?.streamed, false, "read again whole for the second try");
    assert.ok(again?.data.equals(big));

    const retried = await post(mail, { via: chunked, rule: (type, _name, attempt) => (type === "application/pdf" && attempt === 1 ? "fail" : "ok") });
    assert.equal(uploads(retried).filter((o) => o.name === "report.pdf").length, 1);
    assert.equal(sends(retried).filter((o) => o.content.body === "report.pdf").length, 1, "posted once");

    const limited = await post(mail, { via: chunked, limit: 1_000_000 });
    assert.deepEqual(uploads(limited).map((o) => o.name), ["small.png"]);
    assert.match(String(sends(limited).find((o) => o.content.msgtype === "m.notice")?.content.body), /report\.pdf \(1300000 bytes\) is larger than this homeserver's upload limit/);
  });

  it("a mail in chunks that cannot be decrypted is held back (no event, no DSN, no attempt counted) until the key is configured again", async () => {
    const keyA = { id: "key-a", key: randomBytes(32) };
    const writer = new SqlStore((store as SqlStore).db, { rawChunkBytes: 512, cipher: new RawCipher({ current: keyA }) });
    const keyless = new SqlStore((store as SqlStore).db, { rawChunkBytes: 512 });
    const mail = relatedMail({ logo: image(4000, 4), messageId: "chunked-2@example.org" });
    const { row } = await writer.insertInbound(newInbound({ roomId: "!locked:hs.test", messageId: "chunked-2@example.org", contentHash: "chunked-2", raw: mail }));
    const matrix = fakeHomeserver(null, () => "ok");
    // The keyless poster fails its passes (logged, retried); the row is watched through the keyed store.
    assert.equal(await postRow(posterOver(keyless, matrix), writer, row.id, 20), "pending");
    assert.deepEqual(matrix.ops, [], "nothing reached the homeserver");
    const held = await writer.getInbound(row.id);
    assert.equal(held?.attempts, 0, "not counted as a failed attempt");
    assert.equal(held?.lastError, null);
    assert.equal(await postRow(posterOver(writer, matrix), writer, row.id, 200), "posted", "with the key back, it is posted");
  });

  it("a subject of 50 KB (folded, or one line) is shown cut, so the event stays under the homeserver's size limit; a line says so and the original follows as message.eml", async () => {
    const words = Array.from({ length: 6000 }, (_, i) => `wörd${i}`).join(" ");
    const subjects = [
      { header: words.replace(/(.{70}) /g, "$1\r\n "), length: [...words].length, start: "wörd0 wörd1 wörd2" },
      { header: "s".repeat(50_000), length: 50_000, start: "sss" },
    ];
    for (const subject of subjects) {
      const raw = Buffer.from(
        ["From: Bob <bob@example.org>", "To: <room@bridge.test>", `Subject: ${subject.header}`, "Message-ID: <huge-subject@example.org>", "MIME-Version: 1.0", "Content-Type: text/html; charset=utf-8", "", `<p>${"<b>bold</b> and more text ".repeat(800)}</p>`, ""].join("\r\n"),
        "utf8",
      );
      const ops = await post(raw);
      const [message, eml, ...rest] = sends(ops);
      assert.ok(Buffer.byteLength(JSON.stringify(message!.content)) < 60_000, `event of ${Buffer.byteLength(JSON.stringify(message!.content))} bytes`);
      const [warning, shown] = String(message!.content.body).split("\n\n");
      assert.equal(warning, `✂️ The subject is too long to show here (${subject.length} characters); the original is attached as message.eml.`);
      assert.ok(String(message!.content.formatted_body).startsWith(`<p><em>${warning}</em></p><p><strong>${subject.start}`));
      assert.ok(shown!.startsWith(subject.start) && shown!.endsWith("…"), shown!.slice(-40));
      assert.equal([...shown!].length, 500);
      assert.equal(eml!.content.body, "message.eml");
      assert.deepEqual(rest, []);
      const upload = ops.find((o): o is Extract<Op, { op: "upload" }> => o.op === "upload" && o.name === "message.eml");
      assert.ok(upload?.data.equals(raw), "message.eml is the mail, whole subject and all");
    }
    // A reply does not show its subject: nothing is cut, nothing attached.
    const reply = Buffer.from(`From: bob@example.org\r\nTo: team@bridge.test\r\nSubject: Re: ${"s".repeat(5000)}\r\n\r\nYes.\r\n`);
    assert.deepEqual(
      sends(await post(reply, { over: { replyToEventId: "$root" } })).map((s) => s.content.body),
      ["Yes."],
    );
  });

  it("the subject loses control characters (named in the loss line, the original attached) and bidi controls (as names lose them); a bare CR in the text is a line break", async () => {
    const mail = (subject: string, body = "Hello.") => Buffer.from(`From: bob@example.org\r\nTo: team@bridge.test\r\nSubject: ${subject}\r\n\r\n${body}\r\n`, "utf8");
    const nul = sends(await post(mail("Nul\u0000in subject")));
    assert.deepEqual(
      nul.map((s) => s.content.body),
      ["⚠️ Parts of this mail could not be decoded (control characters in the subject); the original is attached as message.eml.\n\nNulin subject\n\nHello.", "message.eml"],
    );
    assert.ok(!JSON.stringify(nul[0]!.content).includes("\\u0000"), "no NUL in the event");

    // A right-to-left override (raw UTF-8, or an encoded word) is dropped from the shown subject, as from names; nothing else is lost.
    for (const subject of ["Invoice \u202efdp.exe", "Invoice =?utf-8?q?=E2=80=AEfdp.exe?="]) {
      const rlo = sends(await post(mail(subject)));
      assert.deepEqual(
        rlo.map((s) => [s.content.body, s.content.formatted_body]),
        [["Invoice fdp.exe\n\nHello.", "<p><strong>Invoice fdp.exe</strong></p>Hello."]],
        subject,
      );
    }

    // A bare CR (here from base64) is a line end, as a mail client shows it: no loss, no message.eml.
    const cr = Buffer.from(`From: bob@example.org\r\nTo: team@bridge.test\r\nSubject: Lines\r\nContent-Transfer-Encoding: base64\r\n\r\n${Buffer.from("one\rtwo\r\rthree").toString("base64")}\r\n`);
    assert.deepEqual(
      sends(await post(cr)).map((s) => [s.content.body, s.content.formatted_body]),
      [["Lines\n\none\ntwo\n\nthree", "<p><strong>Lines</strong></p>one<br>two<br><br>three"]],
    );
  });

  it("a mail with nothing to show but a file posts the file alone, as the mail's event; a reply, an automatic mail and a mail without files say (no text); a subject or a warning is still posted", async () => {
    const octet = (headers = "") =>
      Buffer.from(`From: bob@example.org\r\nTo: team@bridge.test\r\nMIME-Version: 1.0\r\n${headers}Content-Type: application/octet-stream\r\n\r\n`);
    const roomId = "!files-only:hs.test";
    const ops = await post(octet(), { over: { roomId } });
    const [file, ...more] = sends(ops);
    assert.deepEqual(more, [], "no blank text event");
    assert.equal(file!.content.msgtype, "m.file");
    assert.equal(file!.content.body, "attachment-1");
    assert.deepEqual(file!.content.info, { mimetype: "application/octet-stream", size: 0 });
    assert.equal((file!.content[AUTH_FIELD] as { verified: boolean }).verified, true, "the file carries the verdict");
    assert.match(String(file!.txnId), /^meb-in-\d+-att-0$/);
    // The file stands for the mail: its event is mapped to the Message-ID and recorded as posted.
    const eventId = `$event${ops.indexOf(file!)}`;
    assert.ok(await defaultStore.getMessageByEvent(roomId, eventId), "mapped for replies");
    assert.equal((await defaultStore.getInboundByEvent(roomId, eventId))?.state, "posted");

    const shown = async (raw: Buffer, over: Partial<NewInbound> = {}) => sends(await post(raw, { over })).map((s) => [s.content.msgtype, s.content.body, s.content.formatted_body, s.content["m.relates_to"]]);
    // Nothing at all: the mail still has its event.
    assert.deepEqual(await shown(Buffer.from("From: bob@example.org\r\nTo: team@bridge.test\r\n\r\n")), [["m.text", "(no text)", "<em>(no text)</em>", undefined]]);
    // A reply: its event carries the relation; the file follows.
    assert.deepEqual(await shown(octet(), { replyToEventId: "$root" }), [
      ["m.text", "(no text)", "<em>(no text)</em>", { "m.in_reply_to": { event_id: "$root" } }],
      ["m.file", "attachment-1", undefined, undefined],
    ]);
    // An automatic mail: its event is the notice.
    assert.deepEqual(await shown(octet("Auto-Submitted: auto-generated\r\n")), [
      ["m.notice", "(no text)", "<em>(no text)</em>", undefined],
      ["m.file", "attachment-1", undefined, undefined],
    ]);
    // A subject and no body: the subject is posted, as before.
    const subjectOnly = await shown(octet("Subject: The scan\r\n"));
    assert.equal(subjectOnly.length, 2);
    assert.equal(String(subjectOnly[0]![1]).trim(), "The scan");
    // An unverified sender: the warning line is the text.
    const unverified = await shown(octet(), { senderVerified: false, auth: { spf: "fail", dkim: "none", dmarc: "fail", arc: "none", verified: false } });
    assert.equal(unverified.length, 2);
    assert.match(String(unverified[0]![1]), /^⚠️ Unverified sender: this mail claims to be from bob@example\.org/u);
    assert.doesNotMatch(String(unverified[0]![1]), /no text/);
  });

  it("automatic mail is a notice: Auto-Submitted (not `no`), Precedence bulk/list/junk, the null reverse-path", async () => {
    const mail = (headers: string) => Buffer.from(`From: bob@example.org\r\nTo: team@bridge.test\r\nSubject: Hello\r\n${headers}\r\nHello.\r\n`);
    const msgtype = async (headers: string, over: Partial<NewInbound> = {}) => sends(await post(mail(headers), { over }))[0]!.content.msgtype;
    assert.equal(await msgtype("Auto-Submitted: auto-replied\r\n"), "m.notice");
    assert.equal(await msgtype("Auto-Submitted: auto-generated; owner-email=x@example.org\r\n"), "m.notice");
    assert.equal(await msgtype("Auto-Submitted: no\r\n"), "m.text");
    assert.equal(await msgtype("Precedence: list\r\n"), "m.notice");
    assert.equal(await msgtype("Precedence: junk\r\n"), "m.notice");
    assert.equal(await msgtype("Precedence: first-class\r\n"), "m.text");
    assert.equal(await msgtype("", { envelopeFrom: null }), "m.notice");
    assert.equal(await msgtype(""), "m.text");
  });
});
