/**
 * Legacy charsets in received mail (mail/inbound/parse.ts, mail/inbound/charsets.ts): bodies,
 * RFC 2047 encoded words in Subject and From, RFC 2231 file names, in ISO-2022-JP, Shift_JIS,
 * GB2312, windows-1251, ISO-8859-2 and ISO-8859-15 (the corpus fixtures); header text written as
 * raw 8-bit bytes in the message's charset (not RFC-conformant, but what legacy clients send);
 * and the other fields the parse gives for issue 9 (Precedence, Date as written, part metadata,
 * forwarded messages as attachments).
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { parseMail } from "../../src/mail/inbound/parse.ts";
import { charsetHint, recoverRawHeader, recoverRawParameter } from "../../src/mail/inbound/charsets.ts";

const corpus = (name: string): Buffer => readFileSync(new URL(`../fixtures/eml/corpus/${name}`, import.meta.url));

describe("legacy charsets (corpus)", () => {
  const cases: [string, string, string, string, string, string, Buffer][] = [
    ["14-charset-iso-2022-jp.eml", "会議の議事録について", "山田 太郎", "お疲れ様です。山田です。\n\n本日の会議の議事録を添付いたします。\nご確認のほど、よろしくお願いいたします。\n", "議事録.txt", "iso-2022-jp", Buffer.from("\x1b$B$*Hh$lMM$G$9!#;3ED$G$9!#\x1b(B", "latin1")],
    ["15-charset-shift_jis.eml", "見積書の送付", "鈴木 花子", "いつもお世話になっております。\n見積書を添付いたしますので、ご査収ください。\n", "見積書.txt", "shift_jis", Buffer.from([0x82, 0xa2, 0x82, 0xc2])],
    ["16-charset-gb2312.eml", "会议通知：下周一上午十点", "王伟", "各位同事：\n\n下周一上午十点在三楼会议室开会，请准时参加。\n\n谢谢！\n", "会议议程.txt", "gb2312", Buffer.from([0xb8, 0xf7, 0xce, 0xbb])],
    ["17-charset-windows-1251.eml", "Встреча в понедельник", "Иван Петров", "Добрый день!\n\nВстреча переносится на понедельник, 10:00.\nПовестка во вложении.\n", "Повестка дня.txt", "windows-1251", Buffer.from([0xc4, 0xee, 0xe1, 0xf0])],
    ["18-charset-iso-8859-2.eml", "Spotkanie w środę", "Łukasz Żółkiewski", "Dzień dobry,\n\nspotkanie odbędzie się w środę o 10:00 w sali 4.2.\nZażółć gęślą jaźń.\n", "Zażółć.txt", "iso-8859-2", Buffer.from("Dzie\xf1", "latin1")],
    ["19-charset-iso-8859-15.eml", "Facture n° 42 : 50 €", "Œdipe Müller", "Bonjour,\n\nVeuillez trouver ci-joint la facture n° 42 d'un montant de 50 € (cinquante euros).\nCœur, œuvre.\n", "Facture 42 €.txt", "iso-8859-15", Buffer.from("50 \xa4", "latin1")],
  ];
  for (const [file, subject, name, text, filename, charset, bytes] of cases) {
    it(`${charset}: body, Subject, From name, file name; the attachment keeps its bytes`, async () => {
      const m = await parseMail(corpus(file));
      assert.equal(m.subject, subject);
      assert.deepEqual(m.from, { address: "bob@example.org", name });
      assert.equal(m.text, text);
      assert.deepEqual(m.losses, []);
      assert.equal(m.attachments.length, 1);
      const att = m.attachments[0]!;
      assert.equal(att.filename, filename);
      assert.equal(att.charset, charset);
      assert.ok(att.content.includes(bytes), "the attachment is not re-encoded");
    });
  }
});

describe("raw 8-bit header text in the message's charset", () => {
  /** Bytes of `s` in Shift_JIS / GBK, written out (Node has no encoder for them). */
  const SUBJECT_SJIS = Buffer.from([0x90, 0xb6, 0x82, 0xcc, 0x8c, 0x8f, 0x96, 0xbc]); // 生の件名
  const NAME_GBK = Buffer.from([0xcd, 0xf5, 0xce, 0xb0]); // 王伟
  const FILE_SJIS = Buffer.from([0x8e, 0x91, 0x97, 0xbf, 0x2e, 0x74, 0x78, 0x74]); // 資料.txt
  const NAME_SJIS = Buffer.from([0x97, 0xe9, 0x96, 0xd8, 0x20, 0x89, 0xd4, 0x8e, 0x71]); // 鈴木 花子

  it("Subject, From name and a file name are decoded with the charset the message names", async () => {
    const raw = Buffer.concat([
      Buffer.from("From: "),
      NAME_SJIS,
      Buffer.from(" <bob@example.org>\r\nTo: corpus@bridge.test\r\nSubject: "),
      SUBJECT_SJIS,
      Buffer.from('\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain; charset=shift_jis\r\n\r\nhello\r\n--b\r\nContent-Type: application/octet-stream; name="'),
      FILE_SJIS,
      Buffer.from('"\r\n\r\nx\r\n--b--\r\n'),
    ]);
    const m = await parseMail(raw);
    assert.equal(m.subject, "生の件名");
    assert.equal(m.attachments[0]!.filename, "資料.txt");
    assert.deepEqual(m.from, { address: "bob@example.org", name: "鈴木 花子" });
    assert.deepEqual(m.losses, []);
  });

  it("a From name in the message's charset is decoded; without any charset named, the loss is reported", async () => {
    const withHint = Buffer.concat([Buffer.from("From: "), NAME_GBK, Buffer.from(" <bob@example.org>\r\nSubject: hi\r\nContent-Type: text/plain; charset=gb2312\r\n\r\nhello\r\n")]);
    const m = await parseMail(withHint);
    assert.deepEqual(m.from, { address: "bob@example.org", name: "王伟" });
    assert.deepEqual(m.losses, []);
    const noHint = Buffer.concat([Buffer.from("From: bob@example.org\r\nSubject: "), SUBJECT_SJIS, Buffer.from("\r\n\r\nhello\r\n")]);
    const n = await parseMail(noHint);
    assert.ok(n.subject?.includes("\uFFFD"));
    assert.deepEqual(n.losses, ["undecodable characters in the header fields"]);
  });

  it("text that mailparser decoded is left alone: RFC 2047 and RFC 2231 Latin-1 names, raw UTF-8", async () => {
    const raw = Buffer.from(
      [
        "From: =?iso-8859-1?Q?Andr=E9?= <andre@example.org>",
        "Subject: caf\u00e9 \u00fcber",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="b"',
        "",
        "--b",
        "Content-Type: text/plain; charset=windows-1251",
        "",
        "x",
        "--b",
        "Content-Type: application/octet-stream",
        "Content-Disposition: attachment; filename*=iso-8859-1''caf%E9.txt",
        "",
        "x",
        "--b--",
        "",
      ].join("\r\n"),
      "utf8",
    );
    const m = await parseMail(raw);
    assert.equal(m.subject, "café über");
    assert.equal(m.from?.name, "André");
    assert.equal(m.attachments[0]!.filename, "café.txt", "not re-read as windows-1251");
  });

  it("charsetHint, recoverRawHeader, recoverRawParameter", () => {
    assert.equal(charsetHint(Buffer.from('Content-Type: text/plain; charset="UTF-8"\r\nContent-Type: text/html; charset=Shift_JIS\r\n')), "shift_jis");
    assert.equal(charsetHint(Buffer.from("Content-Type: text/plain; charset=x-unknown-42\r\n")), null);
    assert.equal(recoverRawHeader(SUBJECT_SJIS.toString("latin1"), "shift_jis"), "生の件名");
    assert.equal(recoverRawHeader(SUBJECT_SJIS.toString("latin1"), null), null);
    assert.equal(recoverRawHeader("plain ascii", "shift_jis"), null);
    assert.equal(recoverRawHeader(Buffer.from("über", "utf8").toString("latin1"), "shift_jis"), null, "valid UTF-8 is mailparser's");
    assert.equal(recoverRawHeader(`=?utf-8?Q?x?= ${SUBJECT_SJIS.toString("latin1")}`, "shift_jis"), null, "encoded words mixed in");
    const raw = Buffer.concat([Buffer.from('name="'), FILE_SJIS, Buffer.from('"')]);
    assert.equal(recoverRawParameter(FILE_SJIS.toString("latin1"), raw, "shift_jis"), "資料.txt");
    assert.equal(recoverRawParameter("café.txt", Buffer.from("filename*=iso-8859-1''caf%E9.txt"), "shift_jis"), "café.txt", "bytes not in the message: decoded already");
    assert.equal(recoverRawParameter(null, raw, "shift_jis"), null);
  });
});

describe("the parse's other fields", () => {
  it("Precedence and the Date as written", async () => {
    const m = await parseMail(Buffer.from("From: a@example.org\r\nDate: Fri, 30 Oct 2026 16:45:00 +0100 (CET)\r\nPrecedence: Bulk\r\nAuto-Submitted: auto-generated (vacation)\r\n\r\nx\r\n"));
    assert.equal(m.precedence, "bulk");
    assert.equal(m.autoSubmitted, "auto-generated");
    assert.equal(m.dateHeader, "Fri, 30 Oct 2026 16:45:00 +0100 (CET)");
    const none = await parseMail(Buffer.from("From: a@example.org\r\n\r\nx\r\n"));
    assert.equal(none.precedence, null);
    assert.equal(none.dateHeader, null);
  });

  it("part metadata: Content-ID without brackets, disposition, charset (corpus: Apple Mail inline images, Outlook)", async () => {
    const apple = await parseMail(corpus("02-apple-inline-images.eml"), { attachments: "metadata" });
    assert.deepEqual(
      apple.attachments.map((a) => [a.filename, a.contentId, a.disposition, a.contentType]),
      [
        ["logo.png", "4F2A6C1E-1D2B-4C3D-9E8F-0A1B2C3D4E5F@example.org", "inline", "image/png"],
        ["offsite.png", "9A8B7C6D-5E4F-4A3B-2C1D-0E9F8A7B6C5D@example.org", "inline", "image/png"],
      ],
    );
    const outlook = await parseMail(corpus("03-outlook-attachments.eml"), { attachments: "metadata" });
    assert.deepEqual(
      outlook.attachments.map((a) => [a.filename, a.contentId, a.disposition]),
      [
        ["image001.png", "image001.png@01DB4C7A.2F3E4D50", "inline"],
        ["Q3 report.pdf", null, "attachment"],
        ["figures.csv", null, "attachment"],
      ],
    );
    assert.ok(outlook.html?.includes('src="cid:image001.png@01DB4C7A.2F3E4D50"'), "cid: links are kept");
  });

  it("a forwarded message/rfc822 part is an attachment with the message's bytes, whatever its disposition", async () => {
    const inner = "From: carol@example.net\r\nSubject: Inner\r\n\r\nInner text.\r\n";
    for (const disposition of ["inline", "attachment", null]) {
      const raw = Buffer.from(
        `From: bob@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nOuter text.\r\n--b\r\nContent-Type: message/rfc822\r\n${disposition ? `Content-Disposition: ${disposition}\r\n` : ""}\r\n${inner}\r\n--b--\r\n`,
      );
      const m = await parseMail(raw);
      assert.equal(m.text.trim(), "Outer text.", `the forwarded text is not mixed in (${disposition})`);
      assert.equal(m.attachments.length, 1);
      assert.equal(m.attachments[0]!.contentType, "message/rfc822");
      assert.equal(m.attachments[0]!.content.toString(), inner);
    }
  });
});
