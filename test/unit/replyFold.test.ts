/**
 * Folding quotes and signatures off replies (mail/inbound/replyFold.ts): the shapes Gmail,
 * Outlook, Apple Mail and Thunderbird write, in English, German, French and Spanish; what must
 * stay (interleaved replies, indentation, line ends); and email-reply-parser stopped at its
 * deadline on a text that makes it backtrack, the built-in patterns still applying.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { foldReply, stripQuotedReply } from "../../src/mail/inbound/replyFold.ts";
import { configureLogging } from "../../src/util/logger.ts";

if (!process.env.MEB_LOG_LEVEL) configureLogging({ level: "error" });

const QUOTE = "> Shall we meet on Tuesday?\n>\n> Bob\n";

describe("foldReply: the shapes clients write", () => {
  const shapes: [string, string, string][] = [
    ["Gmail, English", `Sounds good.\n\nOn Mon, 2 Nov 2026 at 10:00, Bob Example <bob@example.org> wrote:\n\n${QUOTE}`, "Sounds good."],
    ["Gmail, English, attribution wrapped", `Yes.\n\nOn Mon, Nov 2, 2026 at 10:00 AM Bob Example <bob@example.org>\nwrote:\n\n${QUOTE}`, "Yes."],
    ["Gmail, German, wrapped inside the address", `Passt.\n\nAm Mo., 2. Nov. 2026 um 10:00 Uhr schrieb Bob Example <\nbob@example.org>:\n\n${QUOTE}`, "Passt."],
    ["Gmail, French", `Ça me va.\n\nLe lun. 2 nov. 2026 à 10:00, Bob Example <bob@example.org> a écrit :\n\n${QUOTE}`, "Ça me va."],
    ["Gmail, Spanish, wrapped", `Me parece bien.\n\nEl lun, 2 nov 2026 a las 10:00, Bob Example (<bob@example.org>)\nescribió:\n\n${QUOTE}`, "Me parece bien."],
    ["Apple Mail (iOS), English", `Great!\n\nSent from my iPhone\n\n> On 2 Nov 2026, at 10:00, Bob Example <bob@example.org> wrote:\n>\n${QUOTE}`, "Great!"],
    ["Apple Mail, French", `Parfait.\n\n> Le 2 nov. 2026 à 10:00, Bob Example <bob@example.org> a écrit :\n> \n${QUOTE}`, "Parfait."],
    ["Apple Mail, German, Von meinem iPhone gesendet", `Gut.\n\nVon meinem iPhone gesendet\n\n> Am 02.11.2026 um 10:00 schrieb Bob Example <bob@example.org>:\n>\n${QUOTE}`, "Gut."],
    ["Apple Mail, Spanish, Enviado desde mi iPhone", `Vale.\n\nEnviado desde mi iPhone\n\n> El 2 nov 2026, a las 10:00, Bob Example <bob@example.org> escribió:\n>\n${QUOTE}`, "Vale."],
    ["Thunderbird, German, RFC 3676 signature", `Gerne.\n\nViele Grüße\nBob\n\n-- \nBob Example · Example GmbH\n\nAm 02.11.26 um 10:00 schrieb Bob Example:\n${QUOTE}`, "Gerne.\n\nViele Grüße\nBob"],
    ["Thunderbird, English", `Fine.\n\nOn 02/11/2026 10:00, Bob Example wrote:\n${QUOTE}`, "Fine."],
    ["Thunderbird, French", `D'accord.\n\nLe 02/11/2026 à 10:00, Bob Example a écrit :\n${QUOTE}`, "D'accord."],
    [
      "Outlook, English, underscore rule",
      "Works for me.\n\n________________________________\nFrom: Bob Example <bob@example.org>\nSent: Monday, November 2, 2026 10:00 AM\nTo: team@bridge.test\nSubject: Plan\n\nShall we meet?\n",
      "Works for me.",
    ],
    [
      "Outlook, English, no address in From",
      "Works for me.\n\n________________________________\nFrom: Bob Example\nSent: Monday, November 2, 2026 10:00 AM\nTo: Team\nSubject: Plan\n\nShall we meet?\n",
      "Works for me.",
    ],
    ["Outlook, English, Original Message", "Fine by me.\n\n-----Original Message-----\nFrom: Bob <bob@example.org>\nSent: Monday\n\nold text\n", "Fine by me."],
    [
      "Outlook, German",
      "Einverstanden.\n\n-----Ursprüngliche Nachricht-----\nVon: Bob Example <bob@example.org> \nGesendet: Montag, 2. November 2026 10:00\nAn: team@bridge.test\nBetreff: Plan\n\nTreffen?\n",
      "Einverstanden.",
    ],
    ["Outlook, French", "D'accord.\n\nDe : Bob Example <bob@example.org>\nEnvoyé : lundi 2 novembre 2026 10:00\nÀ : team@bridge.test\nObjet : Plan\n\nRéunion ?\n", "D'accord."],
    [
      "Outlook, Spanish",
      "De acuerdo.\n\n-----Mensaje original-----\nDe: Bob Example <bob@example.org>\nEnviado el: lunes, 2 de noviembre de 2026 10:00\nPara: team@bridge.test\nAsunto: Plan\n\n¿Reunión?\n",
      "De acuerdo.",
    ],
    ["Outlook mobile: Get Outlook for iOS above the rule", "Ok.\n\nGet Outlook for iOS<https://aka.ms/o0ukef>\n________________________________\nFrom: Bob Example <bob@example.org>\nSent: Monday\n\nold\n", "Ok."],
  ];
  for (const [shape, text, kept] of shapes) {
    it(shape, async () => {
      assert.deepEqual(await foldReply(text), { text: kept, folded: true });
    });
  }
});

describe("foldReply: what stays", () => {
  it("interleaved quotes in the middle are kept, only the trailing block goes", async () => {
    const text = "> question 1\nanswer 1\n> question 2\nanswer 2\n> rest\n> of it\n";
    assert.deepEqual(await foldReply(text), { text: "> question 1\nanswer 1\n> question 2\nanswer 2", folded: true });
  });

  it("indentation and CRLF line ends of the kept text are kept", async () => {
    const text = "Code:\r\n    indented\r\n  two\r\n\r\nOn Mon, 2 Nov 2026, Bob <bob@example.org> wrote:\r\n> x\r\n";
    assert.deepEqual(await foldReply(text), { text: "Code:\r\n    indented\r\n  two", folded: true });
  });

  it("text unchanged, folded false: no quote, only blank lines to fold, or all of it quote", async () => {
    for (const t of ["Hello\n\nno quote here\n", "a > b\n", "", "price > 5\nok", "> only\n> quote\n", "Hi\n\n\n"]) {
      assert.deepEqual(await foldReply(t), { text: t, folded: false }, JSON.stringify(t));
    }
  });

  it("a text that makes email-reply-parser backtrack: stopped at the deadline, the built-in patterns still fold", async () => {
    const text = `New text.\n\n${"abc. skrev x\n".repeat(3000)}\n> old\n> older\n`;
    const started = Date.now();
    const out = await foldReply(text, { timeoutMs: 200 });
    assert.ok(Date.now() - started < 5000, "the deadline holds");
    assert.equal(out.folded, true);
    assert.ok(out.text.endsWith("abc. skrev x"), "folded by the built-in patterns: the trailing quote");
    // The next call gets a fresh parser thread.
    assert.deepEqual(await foldReply(`Yes.\n\nOn Mon, 2 Nov 2026, Bob <bob@example.org> wrote:\n${QUOTE}`), { text: "Yes.", folded: true });
  });
});

describe("stripQuotedReply (built-in patterns only, synchronous)", () => {
  it("Outlook separators in more languages", () => {
    for (const sep of ["-----Original Message-----", "-----Ursprüngliche Nachricht-----", "-----Message d'origine-----", "-----Mensaje original-----", "________________________________"]) {
      assert.equal(stripQuotedReply(`Ok.\n\n${sep}\nFrom: Bob <bob@example.org>\nSent: Monday\n\nold\n`), "Ok.", sep);
    }
    assert.equal(stripQuotedReply("Ok.\n\n-----Mensaje original-----\nDe: Bob <bob@example.org>\n\nold\n"), "Ok.");
    assert.equal(stripQuotedReply("Ok.\n\n-----Message d'origine-----\nDe : Bob <bob@example.org>\n\nold\n"), "Ok.");
  });

  it("a rule with no header block under it is not a quote", () => {
    const text = "Notes\n________________________________\nitem one\n";
    assert.equal(stripQuotedReply(text), text);
  });
});
