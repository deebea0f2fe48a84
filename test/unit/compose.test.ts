import { describe, it, before } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateKeyPairSync } from "node:crypto";
import { simpleParser } from "mailparser";
import { dkimVerify } from "mailauth";
import { HEADER_TEXT_MAX, composeMail, type OutgoingMail } from "../../src/mail/outbound/compose.ts";
import { dkimTxtRecord, generateDkimKey, loadDkimSigner, type DkimSigner } from "../../src/mail/outbound/dkim.ts";

const DOMAIN = "mail.example";
const SELECTOR = "meb";

function baseMail(over: Partial<OutgoingMail> = {}): OutgoingMail {
  return {
    from: { name: "Bob", address: "bob@mail.example" },
    to: [{ name: "Alice", address: "alice@example.org" }],
    subject: "Hello",
    text: "Hi Alice,\nhow are you?\n",
    html: null,
    messageId: "evt1.abc@mail.example",
    inReplyTo: null,
    references: [],
    date: new Date(Date.UTC(2024, 0, 2, 3, 4, 5)),
    ...over,
  };
}

/** The header block of a raw message (up to the first empty line), unfolded lines kept as is. */
function headerBlock(raw: Buffer): string {
  const s = raw.toString("latin1");
  const end = s.indexOf("\r\n\r\n");
  assert.ok(end > 0, "message has a header/body separator");
  return s.slice(0, end + 2);
}

/** Field names of the top-level header lines. */
function fieldNames(raw: Buffer): string[] {
  return headerBlock(raw)
    .split("\r\n")
    .filter((l) => l.length > 0 && !/^[ \t]/.test(l))
    .map((l) => l.slice(0, l.indexOf(":")).toLowerCase());
}

function assertCrlfOnly(raw: Buffer): void {
  const s = raw.toString("latin1");
  assert.equal(/[^\r]\n/.test(s) || s.startsWith("\n"), false, "no bare LF");
  assert.equal(/\r(?!\n)/.test(s), false, "no bare CR");
}

/** DNS resolver for mailauth: only the DKIM key record exists. Never touches the network. */
function keyResolver(txt: string, queried: string[] = []) {
  return async (name: string, rrtype: string): Promise<string[][]> => {
    queried.push(`${rrtype} ${name}`);
    if (rrtype === "TXT" && name === `${SELECTOR}._domainkey.${DOMAIN}`) return [[txt]];
    throw Object.assign(new Error(`no ${rrtype} for ${name}`), { code: "ENOTFOUND" });
  };
}

describe("composeMail", () => {
  it("builds a UTF-8 text/plain message with CRLF line ends when html is null", async () => {
    const raw = await composeMail(baseMail(), null);
    assertCrlfOnly(raw);
    const parsed = await simpleParser(raw);
    assert.match(parsed.headerLines.find((h) => h.key === "content-type")?.line ?? "", /^Content-Type: text\/plain; charset=utf-8$/i);
    assert.equal(parsed.html, false);
    assert.equal(parsed.text, "Hi Alice,\nhow are you?\n");
    assert.equal(fieldNames(raw).includes("dkim-signature"), false);
  });

  it("builds multipart/alternative with text first and html last", async () => {
    const raw = await composeMail(baseMail({ html: "<p>Hi <b>Alice</b></p>" }), null);
    assertCrlfOnly(raw);
    const parsed = await simpleParser(raw);
    const ct = parsed.headerLines.find((h) => h.key === "content-type")?.line ?? "";
    assert.match(ct, /multipart\/alternative/i);
    const body = raw.toString("utf8");
    const iText = body.indexOf("Content-Type: text/plain; charset=utf-8");
    const iHtml = body.indexOf("Content-Type: text/html; charset=utf-8");
    assert.ok(iText > 0 && iHtml > iText, "text part before html part");
    assert.equal(parsed.text?.trim(), "Hi Alice,\nhow are you?");
    assert.equal(parsed.html, "<p>Hi <b>Alice</b></p>");
  });

  it("sets Message-ID, Date, In-Reply-To and References with angle brackets, and no Auto-Submitted", async () => {
    const raw = await composeMail(
      baseMail({ inReplyTo: "parent.1@example.org", references: ["root.0@example.org", "parent.1@example.org"] }),
      null,
    );
    const parsed = await simpleParser(raw);
    assert.equal(parsed.messageId, "<evt1.abc@mail.example>");
    assert.equal(parsed.inReplyTo, "<parent.1@example.org>");
    assert.deepEqual(parsed.references, ["<root.0@example.org>", "<parent.1@example.org>"]);
    assert.equal(parsed.date?.toISOString(), "2024-01-02T03:04:05.000Z");
    const names = fieldNames(raw);
    assert.ok(!names.includes("auto-submitted"));
    assert.ok(names.includes("mime-version"));
    assert.match(headerBlock(raw), /\r\nReferences: <root\.0@example\.org> <parent\.1@example\.org>\r\n/);
  });

  it("leaves out In-Reply-To/References when not given and drops malformed ids", async () => {
    const raw = await composeMail(baseMail({ references: ["no brackets allowed <x@y>", "ok.2@example.org"] }), null);
    const names = fieldNames(raw);
    assert.ok(!names.includes("in-reply-to"));
    assert.match(headerBlock(raw), /\r\nReferences: <ok\.2@example\.org>\r\n/);
    const plain = await composeMail(baseMail(), null);
    assert.ok(!fieldNames(plain).includes("references"));
  });

  it("encodes UTF-8 subjects and display names (RFC 2047) and keeps the header block ASCII", async () => {
    const raw = await composeMail(
      baseMail({
        subject: "Grüße aus Köln 🎉",
        from: { name: "Zoë Ünal", address: "zoe@mail.example" },
        to: [
          { name: "Ålice, Wonderland", address: "alice@example.org" },
          { name: null, address: "carol@example.net" },
        ],
        text: "Ça va? 日本語",
      }),
      null,
    );
    assert.equal(/[^\x00-\x7f]/.test(headerBlock(raw)), false, "headers are 7-bit");
    const parsed = await simpleParser(raw);
    assert.equal(parsed.subject, "Grüße aus Köln 🎉");
    const from = Array.isArray(parsed.from) ? parsed.from[0] : parsed.from;
    assert.equal(from?.value[0]?.name, "Zoë Ünal");
    assert.equal(from?.value[0]?.address, "zoe@mail.example");
    const to = Array.isArray(parsed.to) ? parsed.to[0] : parsed.to;
    assert.deepEqual(
      to?.value.map((v) => [v.name, v.address]),
      [
        ["Ålice, Wonderland", "alice@example.org"],
        ["", "carol@example.net"],
      ],
    );
    assert.equal(parsed.text?.trim(), "Ça va? 日本語");
  });

  it("cannot be made to inject header lines through the subject, names or extra headers", async () => {
    const raw = await composeMail(
      baseMail({
        subject: "Hi\r\nBcc: victim@evil.example\r\n\r\nfake body",
        from: { name: "Bob\r\nX-Evil: 1", address: "bob@mail.example" },
        to: [{ name: "Alice\nCc: other@evil.example", address: "alice@example.org" }],
        headers: { "X-Mailer": "matrix-email-bridge\r\nInjected: yes" },
      }),
      null,
    );
    const names = fieldNames(raw);
    for (const bad of ["bcc", "cc", "x-evil", "injected"]) assert.ok(!names.includes(bad), `no ${bad} header`);
    assert.equal(names.filter((n) => n === "subject").length, 1);
    const parsed = await simpleParser(raw);
    assert.equal(parsed.subject, "Hi Bcc: victim@evil.example fake body");
    assert.equal(parsed.bcc, undefined);
    assert.equal(parsed.cc, undefined);
    assert.equal(parsed.headers.get("x-mailer"), "matrix-email-bridge  Injected: yes");
    assert.equal(parsed.text?.trim(), "Hi Alice,\nhow are you?");
  });

  it("header text loses C1 and bidi controls and is cut (RFC 5322 §2.1.1: no line over 998 characters), a file name keeping its extension", async () => {
    const raw = await composeMail(
      baseMail({
        subject: `Invoice \u202Efdp.exe\u202C \u0085${"a".repeat(10_000)}`,
        from: { name: `Alice \u2066x\u2069${"b".repeat(5_000)}`, address: "bob@mail.example" },
        attachments: [{ filename: `Rechnung \u202Efdp.exe${"n".repeat(10_000)}.pdf`, contentType: "application/pdf", content: Buffer.from("%PDF-1.4") }],
      }),
      null,
    );
    const lines = raw.toString("latin1").split("\r\n");
    assert.ok(lines.every((l) => l.length <= 998), `longest line ${Math.max(...lines.map((l) => l.length))}`);
    const parsed = await simpleParser(raw);
    assert.equal([...parsed.subject!].length, HEADER_TEXT_MAX.subject);
    assert.ok(parsed.subject!.startsWith("Invoice fdp.exe aaa") && parsed.subject!.endsWith("a…"), parsed.subject!.slice(0, 40));
    assert.equal([...parsed.from!.value[0]!.name].length, HEADER_TEXT_MAX.name);
    assert.ok(parsed.from!.value[0]!.name.startsWith("Alice xbbb"));
    const name = parsed.attachments[0]!.filename!;
    assert.equal([...name].length, HEADER_TEXT_MAX.filename);
    assert.ok(name.startsWith("Rechnung fdp.exennn") && name.endsWith("n….pdf"), name.slice(-20));
    assert.ok(!/[\u202a-\u202e\u2066-\u2069\u0080-\u009f]/u.test(`${parsed.subject}${parsed.from!.value[0]!.name}${name}`));
  });

  it("rejects invalid ids, addresses and reserved or malformed extra header names", async () => {
    await assert.rejects(composeMail(baseMail({ messageId: "<x@y>" }), null), TypeError);
    await assert.rejects(composeMail(baseMail({ messageId: "x y@z" }), null), TypeError);
    await assert.rejects(composeMail(baseMail({ to: [{ name: null, address: "a@b\r\nBcc: c@d" }] }), null), TypeError);
    await assert.rejects(composeMail(baseMail({ to: [] }), null), TypeError);
    await assert.rejects(composeMail(baseMail({ headers: { Bcc: "x@y" } }), null), TypeError);
    await assert.rejects(composeMail(baseMail({ headers: { "Auto-Submitted": "auto-generated" } }), null), TypeError);
    await assert.rejects(composeMail(baseMail({ headers: { "Bad Name": "x" } }), null), TypeError);
  });
});

describe("composeMail DKIM", () => {
  let signer: DkimSigner;
  let txt: string;
  before(() => {
    const key = generateDkimKey();
    signer = { domainName: DOMAIN, keySelector: SELECTOR, privateKey: key.privateKeyPem };
    txt = dkimTxtRecord(key.publicKeyPem);
  });

  const threaded = () =>
    baseMail({ html: "<p>hi</p>", inReplyTo: "parent.1@example.org", references: ["root.0@example.org", "parent.1@example.org"] });

  it("signs relaxed/relaxed over the required headers and verifies with mailauth", async () => {
    const raw = await composeMail(threaded(), signer);
    assert.ok(raw.toString("latin1").startsWith("DKIM-Signature: "));
    const queried: string[] = [];
    const res = await dkimVerify(raw, { resolver: keyResolver(txt, queried) });
    assert.equal(res.results.length, 1);
    const r = res.results[0];
    assert.equal(r?.status.result, "pass", r?.info);
    assert.equal(r?.signingDomain, DOMAIN);
    assert.equal(r?.selector, SELECTOR);
    assert.equal(r?.algo, "rsa-sha256");
    assert.equal(r?.format, "relaxed/relaxed");
    const signed = (r?.signingHeaders?.keys ?? "").toLowerCase().split(": ").join(":").split(":");
    for (const h of ["from", "to", "subject", "date", "message-id", "in-reply-to", "references", "content-type", "mime-version"]) {
      assert.ok(signed.includes(h), `h= includes ${h} (got ${signed.join(":")})`);
    }
    assert.ok(queried.includes(`TXT ${SELECTOR}._domainkey.${DOMAIN}`));
  });

  it("fails verification after the body or a signed header is tampered with", async () => {
    const raw = await composeMail(threaded(), signer);
    const s = raw.toString("latin1");

    const tamperedBody = Buffer.from(s.replace("<p>hi</p>", "<p>HI</p>"), "latin1");
    assert.notDeepEqual(tamperedBody, raw);
    const bodyRes = await dkimVerify(tamperedBody, { resolver: keyResolver(txt) });
    assert.notEqual(bodyRes.results[0]?.status.result, "pass");

    const tamperedSubject = Buffer.from(s.replace("\r\nSubject: Hello\r\n", "\r\nSubject: Hellp\r\n"), "latin1");
    assert.notDeepEqual(tamperedSubject, raw);
    const subjRes = await dkimVerify(tamperedSubject, { resolver: keyResolver(txt) });
    assert.equal(subjRes.results[0]?.status.result, "fail");
  });

  it("does not verify against another key", async () => {
    const raw = await composeMail(threaded(), signer);
    const other = dkimTxtRecord(generateDkimKey().publicKeyPem);
    const res = await dkimVerify(raw, { resolver: keyResolver(other) });
    assert.equal(res.results[0]?.status.result, "fail");
  });

  it("throws instead of sending unsigned when the key cannot sign rsa-sha256", async () => {
    const ed = generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    await assert.rejects(composeMail(baseMail(), { domainName: DOMAIN, keySelector: SELECTOR, privateKey: ed }), /DKIM signing failed/);
  });
});

describe("dkim keys", () => {
  it("dkimTxtRecord gives the SPKI DER of an RSA key from the public or the private PEM", () => {
    const key = generateDkimKey();
    assert.match(key.privateKeyPem, /^-----BEGIN PRIVATE KEY-----/);
    assert.match(key.publicKeyPem, /^-----BEGIN PUBLIC KEY-----/);
    const fromPub = dkimTxtRecord(key.publicKeyPem);
    assert.equal(fromPub, dkimTxtRecord(key.privateKeyPem));
    const m = /^v=DKIM1; k=rsa; p=([A-Za-z0-9+/=]+)$/.exec(fromPub);
    assert.ok(m?.[1]);
    const b64 = key.publicKeyPem.replace(/-----[^-]+-----|\s/g, "");
    assert.equal(m[1], b64);
  });

  it("dkimTxtRecord gives the raw 32-byte key for Ed25519 (RFC 8463)", () => {
    const { publicKey, privateKey } = generateKeyPairSync("ed25519");
    const txt = dkimTxtRecord(publicKey.export({ type: "spki", format: "pem" }).toString());
    const m = /^v=DKIM1; k=ed25519; p=([A-Za-z0-9+/=]+)$/.exec(txt);
    assert.ok(m?.[1]);
    const raw = Buffer.from(m[1], "base64");
    assert.equal(raw.length, 32);
    const der = publicKey.export({ type: "spki", format: "der" });
    assert.deepEqual(raw, der.subarray(der.length - 32));
    assert.equal(dkimTxtRecord(privateKey.export({ type: "pkcs8", format: "pem" }).toString()), txt);
  });

  it("dkimTxtRecord rejects text that is not a key", () => {
    assert.throws(() => dkimTxtRecord("hello"), /not a PEM/);
  });

  describe("loadDkimSigner", () => {
    let dir: string;
    before(() => {
      dir = mkdtempSync(join(tmpdir(), "meb-dkim-"));
    });
    it("loads an RSA key (PKCS#8 or PKCS#1)", () => {
      const { privateKeyPem } = generateDkimKey();
      const f = join(dir, "k8.pem");
      writeFileSync(f, privateKeyPem);
      const s = loadDkimSigner(f, DOMAIN, SELECTOR);
      assert.equal(s.domainName, DOMAIN);
      assert.equal(s.keySelector, SELECTOR);
      assert.match(s.privateKey, /^-----BEGIN PRIVATE KEY-----/);
      const pkcs1 = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs1", format: "pem" }).toString();
      const f1 = join(dir, "k1.pem");
      writeFileSync(f1, pkcs1);
      assert.match(loadDkimSigner(f1, DOMAIN, SELECTOR).privateKey, /^-----BEGIN PRIVATE KEY-----/);
    });
    it("names the file when it is missing, not a private key, not RSA, or too short", () => {
      const missing = join(dir, "missing.pem");
      assert.throws(() => loadDkimSigner(missing, DOMAIN, SELECTOR), (e: Error) => e.message.includes(missing) && e.message.includes("ENOENT"));
      const pub = join(dir, "pub.pem");
      writeFileSync(pub, generateDkimKey().publicKeyPem);
      assert.throws(() => loadDkimSigner(pub, DOMAIN, SELECTOR), (e: Error) => e.message.includes(pub) && /private key/.test(e.message));
      const junk = join(dir, "junk.pem");
      writeFileSync(junk, "-----BEGIN PRIVATE KEY-----\nnotbase64!!\n-----END PRIVATE KEY-----\n");
      assert.throws(() => loadDkimSigner(junk, DOMAIN, SELECTOR), (e: Error) => e.message.includes(junk));
      const ed = join(dir, "ed.pem");
      writeFileSync(ed, generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }));
      assert.throws(() => loadDkimSigner(ed, DOMAIN, SELECTOR), (e: Error) => e.message.includes(ed) && /ed25519/.test(e.message));
      const small = join(dir, "small.pem");
      writeFileSync(small, generateKeyPairSync("rsa", { modulusLength: 512 }).privateKey.export({ type: "pkcs8", format: "pem" }));
      assert.throws(() => loadDkimSigner(small, DOMAIN, SELECTOR), (e: Error) => e.message.includes(small) && /512-bit/.test(e.message));
      rmSync(dir, { recursive: true, force: true });
    });
  });
});
