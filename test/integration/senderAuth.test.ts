/**
 * Sender authentication (src/mail/inbound/auth.ts) against a real DNS server on loopback:
 * SPF, DKIM (keys made here), DMARC (p=, sp=, pct), ARC (sealed here by a "forwarder"), the
 * policy decisions and their SMTP replies, and the strict reading of the From header.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { authenticate, dkimSign, sealMessage } from "mailauth";
import { authDecision, authenticateMessage, readAuthor, type AuthPolicy, type AuthVerdict } from "../../src/mail/inbound/auth.ts";
import { SmtpReply } from "../../src/mail/inbound/rejections.ts";
import { DnsResolver } from "../../src/mail/dns.ts";
import { dkimTxtRecord } from "../../src/mail/outbound/dkim.ts";
import { startDnsServer, type TestDns } from "../harness/dns.ts";

const OWN = ["bridge.test", "mx.bridge.test"];
const POLICY: AuthPolicy = { enforceDmarcReject: true, unverified: "mark", deferOnDnsError: true };

function rsaKey(): string {
  return generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();
}
const bankKey = rsaKey();
const slowKey = rsaKey();
const fwdKey = rsaKey();

function message(from: string, body = "Your statement is ready.\r\n", extra: string[] = []): Buffer {
  return Buffer.from(
    [`From: ${from}`, "To: alice@bridge.test", "Subject: Statement", "Date: Mon, 2 Nov 2026 10:00:00 +0000", `Message-ID: <${Math.random().toString(36).slice(2)}@x.test>`, ...extra]
      .join("\r\n") + `\r\n\r\n${body}`,
  );
}

async function sign(raw: Buffer, domain: string, selector: string, privateKey: string): Promise<Buffer> {
  const { signatures, errors } = await dkimSign(raw, { signatureData: [{ signingDomain: domain, selector, privateKey, canonicalization: "relaxed/relaxed" }] } as never);
  assert.ok(signatures && !errors?.length, `signing failed: ${JSON.stringify(errors)}`);
  return Buffer.concat([Buffer.from(signatures), raw]);
}

describe("sender authentication", () => {
  let dns: TestDns;
  let resolver: DnsResolver;

  before(async () => {
    dns = await startDnsServer({
      records: {
        "bank.test": { TXT: ["v=spf1 -all"] },
        "_dmarc.bank.test": { TXT: ["v=DMARC1; p=reject"] },
        "s1._domainkey.bank.test": { TXT: [dkimTxtRecord(bankKey)] },
        "mailer.unrelated.test": { TXT: ["v=spf1 ip4:127.0.0.1 -all"] },
        "none.test": { TXT: ["v=spf1 -all"] },
        "_dmarc.none.test": { TXT: ["v=DMARC1; p=none"] },
        "spfonly.test": { TXT: ["v=spf1 ip4:127.0.0.1 -all"] },
        "_dmarc.spfonly.test": { TXT: ["v=DMARC1; p=reject"] },
        "pct.test": { TXT: ["v=spf1 -all"] },
        "_dmarc.pct.test": { TXT: ["v=DMARC1; p=reject; pct=0"] },
        "parent.test": { TXT: ["v=spf1 -all"] },
        "_dmarc.parent.test": { TXT: ["v=DMARC1; p=none; sp=reject"] },
        "sub.parent.test": { A: ["192.0.2.7"] },
        "slow.test": { TXT: ["v=spf1 -all"] },
        "_dmarc.slow.test": { TXT: ["v=DMARC1; p=reject"] },
        "fwd.test": { TXT: ["v=spf1 ip4:127.0.0.1 -all"] },
        "a1._domainkey.fwd.test": { TXT: [dkimTxtRecord(fwdKey)] },
      },
      timeout: ["s1._domainkey.slow.test"],
    });
    resolver = new DnsResolver({ nameservers: [dns.nameserver], timeoutMs: 300, tries: 1, cacheEntries: 0, cacheTtlMs: 0 });
  });
  after(async () => {
    await dns?.stop();
  });

  async function judge(raw: Buffer, mailFrom: string | null, trusted: string[] = []): Promise<{ verdict: AuthVerdict; decision: ReturnType<typeof authDecision> }> {
    const author = readAuthor(raw, OWN);
    const verdict = await authenticateMessage(
      { raw, mailFrom, remoteAddress: "127.0.0.1", heloName: "client.example" },
      author,
      { lookup: resolver.lookup, hostname: "mx.bridge.test", minKeyBits: 1024, trustedArcSealers: trusted },
    );
    return { verdict, decision: authDecision(verdict, author, POLICY) };
  }

  function refused(decision: ReturnType<typeof authDecision>, code: number, enhanced: string, text?: RegExp): void {
    assert.equal(decision.accept, false, "the mail should be refused");
    if (decision.accept) return;
    assert.equal(decision.reply.responseCode, code);
    assert.equal(decision.reply.enhancedStatus, enhanced);
    if (text) assert.match(decision.reply.text, text);
  }

  it("a DKIM-signed mail from a p=reject domain is verified", async () => {
    const raw = await sign(message('"Bank" <alerts@bank.test>'), "bank.test", "s1", bankKey);
    const { verdict, decision } = await judge(raw, "bounces@mailer.unrelated.test");
    assert.equal(verdict.dkim, "pass");
    assert.equal(verdict.dmarc, "pass");
    assert.equal(verdict.alignedBy, "dkim");
    assert.equal(verdict.verified, true);
    assert.deepEqual(decision, { accept: true, verified: true });
  });

  it("the same mail with its body altered after signing gets 550 5.7.1 naming DMARC", async () => {
    const signed = await sign(message('"Bank" <alerts@bank.test>'), "bank.test", "s1", bankKey);
    const tampered = Buffer.from(signed.toString().replace("Your statement is ready.", "Wire 5000 EUR to this account."));
    const { verdict, decision } = await judge(tampered, "bounces@mailer.unrelated.test");
    // mailauth says "neutral (body hash did not verify)"; either way it is no pass.
    assert.ok(["fail", "neutral"].includes(verdict.dkim), verdict.dkim);
    assert.equal(verdict.dmarc, "fail");
    assert.equal(verdict.policy, "reject");
    refused(decision, 550, "5.7.1", /DMARC/);
  });

  it("a spoofed From under p=reject (unsigned, unrelated envelope sender) gets 550 5.7.1", async () => {
    const { verdict, decision } = await judge(message('"PayPal Security" <ceo@bank.test>'), "bounce-8812@mailer.unrelated.test");
    assert.equal(verdict.spf, "pass", "SPF passes for the unrelated envelope domain");
    assert.equal(verdict.verified, false);
    refused(decision, 550, "5.7.1", /DMARC policy of bank\.test/);
  });

  it("an unaligned sender under p=none is accepted as unverified", async () => {
    const { verdict, decision } = await judge(message("news@none.test"), "bounce@mailer.unrelated.test");
    assert.equal(verdict.dmarc, "fail");
    assert.equal(verdict.policy, "none");
    assert.deepEqual(decision, { accept: true, verified: false });
  });

  it("an SPF-only aligned sender is verified", async () => {
    const { verdict, decision } = await judge(message("info@spfonly.test"), "info@spfonly.test");
    assert.equal(verdict.spf, "pass");
    assert.equal(verdict.dkim, "none");
    assert.equal(verdict.alignedBy, "spf");
    assert.deepEqual(decision, { accept: true, verified: true });
  });

  it("SPF aligned without any DMARC record is verified (relaxed alignment of a subdomain)", async () => {
    const { verdict, decision } = await judge(message("someone@mailer.unrelated.test"), "bounce@mailer.unrelated.test");
    assert.equal(verdict.dmarc, "none");
    assert.equal(verdict.alignedBy, "spf");
    assert.deepEqual(decision, { accept: true, verified: true });
  });

  it("pct=0 steps p=reject down to quarantine: unverified, not refused", async () => {
    const { verdict, decision } = await judge(message("x@pct.test"), "bounce@mailer.unrelated.test");
    assert.equal(verdict.dmarc, "fail");
    assert.equal(verdict.policy, "quarantine");
    assert.deepEqual(decision, { accept: true, verified: false });
  });

  it("sp=reject applies to a subdomain of a p=none organisation", async () => {
    const { verdict, decision } = await judge(message("x@sub.parent.test"), "bounce@mailer.unrelated.test");
    assert.equal(verdict.policy, "reject");
    refused(decision, 550, "5.7.1", /DMARC/);
  });

  it("a DNS timeout during authentication gets 451 4.4.3 (the sender retries)", async () => {
    const raw = await sign(message("alerts@slow.test"), "slow.test", "s1", slowKey);
    const { verdict, decision } = await judge(raw, "bounce@mailer.unrelated.test");
    assert.equal(verdict.dnsTemporaryError, true);
    assert.equal(verdict.verified, false);
    refused(decision, 451, "4.4.3");
  });

  it("unverified: reject refuses what mark would accept", () => {
    const verdict: AuthVerdict = {
      spf: "none", dkim: "none", dmarc: "none", arc: "none", verified: false, alignedBy: null, policy: null,
      dkimDomains: [], spfDomain: null, arcSealer: null, dnsTemporaryError: false,
    };
    const author = { address: "x@none.test", domain: "none.test" };
    assert.deepEqual(authDecision(verdict, author, POLICY), { accept: true, verified: false });
    refused(authDecision(verdict, author, { ...POLICY, unverified: "reject" }), 550, "5.7.1", /could not be authenticated/);
    refused(authDecision({ ...verdict, dmarc: "fail", policy: "reject" }, author, POLICY), 550, "5.7.1");
    assert.deepEqual(authDecision({ ...verdict, dmarc: "fail", policy: "reject" }, author, { ...POLICY, enforceDmarcReject: false }), { accept: true, verified: false });
  });

  describe("ARC: a forwarder that changes the body", () => {
    /** What a mailing list at fwd.test does: authenticate on arrival, add a footer, then seal. */
    async function forward(original: Buffer): Promise<Buffer> {
      const arrival = await authenticate(original, {
        ip: "127.0.0.1",
        helo: "client.example",
        sender: "bounces@mailer.unrelated.test",
        mta: "mx.fwd.test",
        resolver: resolver.lookup as never,
        disableBimi: true,
      });
      assert.equal(arrival.dmarc && arrival.dmarc.status.result, "pass", "the forwarder saw DMARC pass");
      const modified = Buffer.from(original.toString().replace(/\r\n$/, "\r\n-- \r\nSent through the fwd.test list\r\n"));
      const authResults = arrival.headers.match(/^Authentication-Results: ([\s\S]*?)\r\n(?=\S|$)/m)?.[1]?.replace(/\r\n/g, "");
      assert.ok(authResults, "the forwarder has Authentication-Results");
      const seal = await sealMessage(modified, { signingDomain: "fwd.test", selector: "a1", privateKey: fwdKey, cv: "none", authResults });
      return Buffer.concat([seal, modified]);
    }

    it("a sealer that is not trusted: DMARC fails under p=reject, 550", async () => {
      const raw = await forward(await sign(message('"Bank" <alerts@bank.test>'), "bank.test", "s1", bankKey));
      const { verdict, decision } = await judge(raw, "list-bounces@fwd.test");
      assert.equal(verdict.arc, "pass");
      assert.equal(verdict.arcSealer, "fwd.test");
      assert.ok(["fail", "neutral"].includes(verdict.dkim), verdict.dkim);
      refused(decision, 550, "5.7.1", /DMARC/);
    });

    it("a trusted sealer's passing chain turns the DMARC fail into a verified pass", async () => {
      const raw = await forward(await sign(message('"Bank" <alerts@bank.test>'), "bank.test", "s1", bankKey));
      const { verdict, decision } = await judge(raw, "list-bounces@fwd.test", ["fwd.test"]);
      assert.equal(verdict.alignedBy, "arc");
      assert.equal(verdict.dmarc, "pass");
      assert.deepEqual(decision, { accept: true, verified: true });
    });

    it("a trusted sealer cannot vouch for a mail that failed DMARC when it arrived", async () => {
      const unsigned = message('"Bank" <alerts@bank.test>');
      const arrival = await authenticate(unsigned, { ip: "127.0.0.1", helo: "h", sender: "x@mailer.unrelated.test", mta: "mx.fwd.test", resolver: resolver.lookup as never, disableBimi: true });
      const authResults = arrival.headers.match(/^Authentication-Results: ([\s\S]*?)\r\n(?=\S|$)/m)?.[1]?.replace(/\r\n/g, "");
      const seal = await sealMessage(unsigned, { signingDomain: "fwd.test", selector: "a1", privateKey: fwdKey, cv: "none", authResults: authResults! });
      const { verdict, decision } = await judge(Buffer.concat([seal, unsigned]), "list-bounces@fwd.test", ["fwd.test"]);
      assert.equal(verdict.arc, "pass");
      assert.equal(verdict.verified, false);
      refused(decision, 550, "5.7.1");
    });
  });

  describe("the From header is read strictly", () => {
    const tricks: [string, string][] = [
      ["two From header fields", "From: a@bank.test\r\nFrom: admin@legit.example\r\nSubject: x\r\n\r\nbody\r\n"],
      ["a folded From name (From\\r\\n :)", "From\r\n : admin@legit.example\r\nSubject: x\r\n\r\nbody\r\n"],
      ["a continuation line that looks like From", "Subject: hello\r\n From: admin@legit.example\r\n\r\nbody\r\n"],
      ["a From with two addresses", "From: a@bank.test, admin@legit.example\r\nSubject: x\r\n\r\nbody\r\n"],
      ["white space before the colon", "From : admin@legit.example\r\nSubject: x\r\n\r\nbody\r\n"],
      ["a group", "From: Friends: a@bank.test;\r\nSubject: x\r\n\r\nbody\r\n"],
      ["no From at all", "Subject: x\r\n\r\nbody\r\n"],
      ["a From with no usable domain", "From: someone@localhost\r\nSubject: x\r\n\r\nbody\r\n"],
      ["a From without an address", "From: Just A Name\r\nSubject: x\r\n\r\nbody\r\n"],
      ["a From on the bridge's own domain", "From: alice@bridge.test\r\nSubject: x\r\n\r\nbody\r\n"],
    ];
    for (const [name, raw] of tricks) {
      it(`${name}: 550 5.7.1`, () => {
        assert.throws(
          () => readAuthor(Buffer.from(raw), OWN),
          (e: unknown) => e instanceof SmtpReply && e.responseCode === 550 && e.enhancedStatus === "5.7.1",
        );
      });
    }

    it("a bare CR in the header section: 554 5.6.0 naming it, whatever the From (readers differ on where it ends a line)", () => {
      for (const raw of ["From: a@x.test\rSubject: s\r\rbody\r\n", "Subject: hi\rFrom: ceo@bank.test\r\nFrom: a@x.test\r\n\r\nbody\r\n", "From: a@x.test\r\nSubject: a\rb\r\n\r\nbody\r\n"]) {
        assert.throws(
          () => readAuthor(Buffer.from(raw), OWN),
          (e: unknown) => e instanceof SmtpReply && e.line === "554 5.6.0 the header section has a bare CR: header lines must end in CRLF (RFC 5322 §2.2)",
          JSON.stringify(raw),
        );
      }
      assert.deepEqual(readAuthor(Buffer.from("From: a@x.test\r\n\r\nbody\rwith a bare CR\r\n"), OWN), { address: "a@x.test", domain: "x.test" }, "the body is not the header");
    });

    // DMARC (mailauth) turns a U-label into A-labels with NFC, lower-casing and Punycode only;
    // UTS-46 mapping (node:url domainToASCII) also folds fullwidth and compatibility forms. A
    // spelling the two read differently would be judged as another domain (no DMARC record:
    // "none") while the ghost is named after the mapped one, so it is refused.
    const uncanonical: [string, string][] = [
      ["fullwidth letters", "ceo@ｖｉｃｔｉｍ.test"],
      ["a fullwidth dot (U+FF0E)", "ceo@victim．test"],
      ["an ideographic full stop (U+3002)", "ceo@victim。test"],
      ["ASCII mixed with fullwidth letters", "ceo@ｖictim.test"],
      ["ASCII mixed with a mathematical bold letter", "ceo@\u{1d42f}ictim.test"],
      ["a ligature (U+FB01)", "ceo@\ufb01nance.test"],
      ["a soft hyphen UTS-46 drops", "ceo@vic\u00adtim.test"],
    ];
    for (const [name, address] of uncanonical) {
      it(`a From domain with ${name} is not canonical: 550 5.7.1`, () => {
        assert.throws(
          () => readAuthor(Buffer.from(`From: "CEO" <${address}>\r\nSubject: x\r\n\r\nbody\r\n`), OWN),
          (e: unknown) => e instanceof SmtpReply && e.responseCode === 550 && e.enhancedStatus === "5.7.1" && /not written in a canonical form/.test(e.text),
        );
      });
    }

    it("canonical spellings keep working: upper-case ASCII, a proper U-label (NFC or not, any case), an A-label", () => {
      const author = (address: string) => readAuthor(Buffer.from(`From: <${address}>\r\n\r\nx`), OWN);
      assert.deepEqual(author("ceo@VICTIM.TEST"), { address: "ceo@victim.test", domain: "victim.test" });
      assert.deepEqual(author("bob@bücher.example"), { address: "bob@xn--bcher-kva.example", domain: "xn--bcher-kva.example" });
      assert.deepEqual(author("bob@bu\u0308cher.example"), { address: "bob@xn--bcher-kva.example", domain: "xn--bcher-kva.example" });
      assert.deepEqual(author("bob@BÜCHER.example"), { address: "bob@xn--bcher-kva.example", domain: "xn--bcher-kva.example" });
      assert.deepEqual(author("bob@xn--bcher-kva.example"), { address: "bob@xn--bcher-kva.example", domain: "xn--bcher-kva.example" });
      assert.deepEqual(author("bob@XN--BCHER-KVA.Example"), { address: "bob@xn--bcher-kva.example", domain: "xn--bcher-kva.example" });
    });

    it("authenticateMessage refuses when DMARC's author domain is not exactly the author's (a fullwidth spelling)", async () => {
      // readAuthor refuses this From; an author read another way must not pass either.
      const raw = message('"CEO" <ceo@ｂａｎｋ.test>');
      await assert.rejects(
        authenticateMessage({ raw, mailFrom: "bounces@mailer.unrelated.test", remoteAddress: "127.0.0.1", heloName: "client.example" }, { address: "ceo@bank.test", domain: "bank.test" }, { lookup: resolver.lookup, hostname: "mx.bridge.test", minKeyBits: 1024, trustedArcSealers: [] }),
        (e: unknown) => e instanceof SmtpReply && e.responseCode === 550 && e.enhancedStatus === "5.7.1",
      );
    });

    it("a U-label From passes the author cross-check (mailauth keeps it in Unicode)", async () => {
      const { verdict } = await judge(message("Bob <bob@bücher.example>"), "bounces@mailer.unrelated.test");
      assert.equal(verdict.verified, false);
    });

    it("reads an ordinary From, with display name, case and IDN", () => {
      assert.deepEqual(readAuthor(Buffer.from('From: "Bob, Jr." <Bob@Example.ORG>\r\n\r\nx'), OWN), { address: "Bob@example.org", domain: "example.org" });
      assert.deepEqual(readAuthor(Buffer.from("from: =?utf-8?q?J=C3=BCrgen?= <j@bücher.example>\r\n\r\nx"), OWN), { address: "j@xn--bcher-kva.example", domain: "xn--bcher-kva.example" });
      assert.deepEqual(readAuthor(Buffer.from("Subject: a\r\n  folded subject\r\nFrom: x@y.example\r\n\r\nBody\r\nFrom: not@a-header.example\r\n"), OWN), { address: "x@y.example", domain: "y.example" });
    });
  });
});
