import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { dnsRecords, formatZone, splitTxt } from "../../src/mail/outbound/dnsRecords.ts";
import { dkimTxtRecord, generateDkimKey } from "../../src/mail/outbound/dkim.ts";

const dkimTxt = dkimTxtRecord(generateDkimKey().publicKeyPem);

describe("dnsRecords", () => {
  it("lists MX, SPF, DKIM and DMARC for the mail domain", () => {
    const recs = dnsRecords({ mailDomain: "Mail.Example.", mxHost: "mx.mail.example", selector: "meb", dkimPublicTxt: dkimTxt });
    assert.deepEqual(
      recs.map((r) => [r.type, r.name, r.value]),
      [
        ["MX", "mail.example", "10 mx.mail.example"],
        ["TXT", "mail.example", "v=spf1 a:mx.mail.example mx -all"],
        ["TXT", "meb._domainkey.mail.example", dkimTxt],
        ["TXT", "_dmarc.mail.example", "v=DMARC1; p=quarantine; adkim=s; aspf=r"],
      ],
    );
    for (const r of recs) assert.ok(r.note.length > 10, "every record explains itself");
  });

  it("adds the relay host to SPF (a: for names, ip4:/ip6: for literals)", () => {
    const spf = (relayHost: string | null) =>
      dnsRecords({ mailDomain: "mail.example", mxHost: "mx.mail.example", selector: "meb", dkimPublicTxt: dkimTxt, relayHost })[1]?.value;
    assert.equal(spf("smtp.relay.example"), "v=spf1 a:mx.mail.example mx a:smtp.relay.example -all");
    assert.equal(spf("192.0.2.7"), "v=spf1 a:mx.mail.example mx ip4:192.0.2.7 -all");
    assert.equal(spf("2001:db8::7"), "v=spf1 a:mx.mail.example mx ip6:2001:db8::7 -all");
    assert.equal(spf(null), "v=spf1 a:mx.mail.example mx -all");
  });
});

describe("formatZone", () => {
  const recs = dnsRecords({ mailDomain: "mail.example", mxHost: "mx.mail.example", selector: "meb", dkimPublicTxt: dkimTxt });
  const zone = formatZone(recs);
  const lines = zone.trimEnd().split("\n");

  it("prints a comment then a record line per record, names fully qualified", () => {
    assert.equal(lines.length, 8);
    for (let i = 0; i < 8; i += 2) assert.ok(lines[i]?.startsWith("; "), `comment at ${i}`);
    assert.equal(lines[1], "mail.example.\t3600\tIN\tMX\t10 mx.mail.example.");
    assert.equal(lines[3], 'mail.example.\t3600\tIN\tTXT\t"v=spf1 a:mx.mail.example mx -all"');
    assert.equal(lines[7], '_dmarc.mail.example.\t3600\tIN\tTXT\t"v=DMARC1; p=quarantine; adkim=s; aspf=r"');
    assert.ok(zone.endsWith("\n"));
  });

  it("splits the 2048-bit DKIM key into <=255-byte strings that concatenate back (RFC 7208 §3.3)", () => {
    const dkimLine = lines[5] ?? "";
    assert.ok(dkimLine.startsWith("meb._domainkey.mail.example.\t3600\tIN\tTXT\t"));
    const strings = [...dkimLine.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1] ?? "");
    assert.ok(dkimTxt.length > 255);
    assert.ok(strings.length >= 2);
    for (const s of strings) assert.ok(s.length <= 255);
    assert.equal(strings.join(""), dkimTxt);
  });

  it("escapes quotes and backslashes and honours the TTL", () => {
    const z = formatZone([{ type: "TXT", name: "x.example", value: 'a"b\\c', note: "n" }], 300);
    assert.equal(z, '; n\nx.example.\t300\tIN\tTXT\t"a\\"b\\\\c"\n');
  });

  it("splitTxt keeps short values whole and cuts long ones at 255", () => {
    assert.deepEqual(splitTxt("abc"), ["abc"]);
    const parts = splitTxt("x".repeat(600));
    assert.deepEqual(parts.map((p) => p.length), [255, 255, 90]);
  });
});
