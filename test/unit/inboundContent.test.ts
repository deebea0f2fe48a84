/**
 * Received mail → Matrix content: HTML nesting flattened to the spec's 100 levels, deceptive
 * links shown with their real target, attachment names without control and bidi characters,
 * and replies in room mailboxes as thread messages (bridge/threads.ts, on an in-memory store).
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { MAX_HTML_NESTING, isDeceptiveLink, revealDeceptiveLinks, sanitizeHtml, sanitizeMailHtml } from "../../src/bridge/format/sanitize.ts";
import { cleanFilename } from "../../src/bridge/InboundPoster.ts";
import { storedReferences, threadRelation, threadRoot, type ThreadStore } from "../../src/bridge/threads.ts";
import type { MessageRow } from "../../src/store/Store.ts";
import { depth } from "../harness/html.ts";


/** The text of HTML, tags removed. */
function textOf(html: string): string {
  return html.replace(/<[^>]*>/gu, "");
}

describe("HTML nesting", () => {
  it("150 nested div/blockquote come out at most 100 deep, with all their text", () => {
    const words = Array.from({ length: 150 }, (_, i) => `w${i}`);
    const html = words.map((w, i) => `${i % 2 ? "<blockquote>" : "<div>"}${w} `).join("") + "deepest" + words.map((_, i) => (i % 2 ? "</blockquote>" : "</div>")).reverse().join("");
    const out = sanitizeMailHtml(html);
    assert.ok(depth(out) <= MAX_HTML_NESTING, `depth ${depth(out)}`);
    assert.equal(depth(out), MAX_HTML_NESTING, "flattened only below the limit");
    const text = textOf(out);
    for (const w of words) assert.ok(text.includes(`${w} `), w);
    assert.ok(text.endsWith("deepest"));
  });

  it("unclosed tags and discarded wrappers count too: the output never exceeds the limit", () => {
    const out = sanitizeHtml("<center><section>".repeat(80) + "<div>".repeat(80) + "x");
    assert.ok(depth(out) <= MAX_HTML_NESTING);
    assert.equal(textOf(out), "x");
  });

  it("shallow HTML is untouched", () => {
    const html = "<div><blockquote><p><b>a</b></p></blockquote></div>";
    assert.equal(sanitizeMailHtml(html), html);
  });
});

describe("deceptive links", () => {
  it("text that names another URL or domain than the href", () => {
    assert.equal(isDeceptiveLink("https://evil.example", "https://bank.example"), true);
    assert.equal(isDeceptiveLink("https://bank.example", "https://evil.example"), true);
    assert.equal(isDeceptiveLink("bank.example", "https://evil.example/login"), true);
    assert.equal(isDeceptiveLink("www.bank.example/login", "https://evil.example/"), true);
    assert.equal(isDeceptiveLink("192.0.2.1", "https://evil.example/"), true);
    assert.equal(isDeceptiveLink("support@bank.example", "mailto:thief@evil.example"), true);
    assert.equal(isDeceptiveLink("pаypal.example", "https://paypal.example/"), true, "Cyrillic а in the text");
    assert.equal(isDeceptiveLink("bank.example", "https://bank.example@evil.example/"), true, "user info hides the host");
    assert.equal(isDeceptiveLink("bank\u200b.example", "https://evil.example"), true, "zero-width characters do not hide the text");
  });

  it("harmless: text that is no URL, or the href but for scheme, trailing slash, case, IDN spelling", () => {
    for (const text of ["click here", "Log in", "v1.2", "e.g.", ""]) assert.equal(isDeceptiveLink(text, "https://evil.example/"), false, text);
    assert.equal(isDeceptiveLink("https://bank.example", "https://bank.example/"), false);
    assert.equal(isDeceptiveLink("bank.example", "https://bank.example"), false);
    assert.equal(isDeceptiveLink("http://Bank.Example/Login/", "https://bank.example/login"), false);
    assert.equal(isDeceptiveLink("www.bank.example", "http://www.bank.example/"), false);
    assert.equal(isDeceptiveLink("bücher.example", "https://xn--bcher-kva.example/"), false);
    assert.equal(isDeceptiveLink("bob@example.org", "mailto:bob@example.org?subject=hi"), false);
    assert.equal(isDeceptiveLink("mailto:bob@example.org", "mailto:BOB@example.org"), false);
  });

  it("the real target is shown after a deceptive link, in both directions; harmless links stay as they are", () => {
    assert.equal(
      sanitizeMailHtml('<p><a href="https://bank.example">https://evil.example</a></p>'),
      '<p><a href="https://bank.example">https://evil.example</a> (https://bank.example)</p>',
    );
    assert.equal(
      sanitizeMailHtml('<a href="https://evil.example/x?a=1&amp;b=&quot;2&quot;" target="_top"><b>bank</b>.example</a>'),
      '<a href="https://evil.example/x?a=1&amp;b=&quot;2&quot;" target="_blank"><b>bank</b>.example</a> (https://evil.example/x?a=1&amp;b=&quot;2&quot;)',
    );
    for (const html of ['<a href="https://x.example/">click here</a>', '<a href="https://bank.example/">bank.example</a>', '<a href="mailto:bob@example.org">bob@example.org</a>', "<a>bank.example</a>"]) {
      assert.equal(sanitizeMailHtml(html), html, html);
    }
    // A link whose href was dropped (javascript:) has no target to show or to deceive with.
    assert.equal(sanitizeMailHtml('<a href="javascript:x()">bank.example</a>'), "<a>bank.example</a>");
  });

  it("reveals inside nested markup and leaves the rest byte for byte", () => {
    const html = '<ul><li>1 &lt; 2 <a href="https://a.example/">a.example</a></li><li><a href="https://b.example/">c.example</a>!</li></ul>';
    assert.equal(revealDeceptiveLinks(html), html.replace("c.example</a>", "c.example</a> (https://b.example/)"));
  });
});

describe("attachment filenames", () => {
  it("lose C0/C1 controls and bidi overrides/isolates/marks", () => {
    assert.equal(cleanFilename("invoice\u202Etxt.exe", 0), "invoicetxt.exe");
    assert.equal(cleanFilename("\u2066a\u2067b\u2068c\u2069d\u202A\u202B\u202C\u202D\u200E\u200F\u061C.pdf", 0), "abcd.pdf");
    assert.equal(cleanFilename("re\u0000port\u0007\r\n\u001b[31m.txt\u007f\u0085\u009b", 0), "report[31m.txt");
    assert.equal(cleanFilename("  Übersicht 2024 – 日本語.pdf ", 0), "Übersicht 2024 – 日本語.pdf", "printable names are kept");
    const long = cleanFilename(`${"ä".repeat(5000)}.pdf`, 0);
    assert.equal([...long].length, 200, "a name of any length is cut to 200 characters");
    assert.ok(long.endsWith("….pdf"), long.slice(-10));
    assert.equal([...cleanFilename("x".repeat(300), 0)].length, 200);
  });

  it("an empty result, or no name, becomes attachment-N", () => {
    assert.equal(cleanFilename("\u202E\u0000 ", 2), "attachment-3");
    assert.equal(cleanFilename(null, 0), "attachment-1");
    assert.equal(cleanFilename("../../.ssh/authorized_keys", 0), "authorized_keys", "a path keeps its last segment (RFC 2183 §2.3)");
    assert.equal(cleanFilename("C:\\Windows\\System32\\evil.dll", 0), "evil.dll");
    assert.equal(cleanFilename("report.pdf/ ", 0), "report.pdf", "a trailing separator leaves the segment before it");
    assert.equal(cleanFilename("..", 1), "attachment-2");
    assert.equal(cleanFilename("/../.", 0), "attachment-1");
    assert.equal(cleanFilename(".profile", 0), ".profile", "a dot file's name is kept");
    assert.equal(cleanFilename(undefined, 4), "attachment-5");
  });
});

describe("threads in room mailboxes", () => {
  const ROOM = "!mb:hs.test";
  /** An in-memory ThreadStore over `rows` (insertion order = createdAt order). */
  function storeOf(rows: MessageRow[]): ThreadStore {
    return {
      async getMessagesByMessageId(id) {
        return rows.filter((m) => m.messageId === id).sort((a, b) => a.createdAt - b.createdAt);
      },
      async latestMessageInThread(roomId, root) {
        const hits = rows.filter((m) => m.roomId === roomId && (m.messageId === root || m.references.includes(root)));
        return hits.sort((a, b) => b.createdAt - a.createdAt)[0] ?? null;
      },
    };
  }
  let clock = 0;
  const row = (eventId: string, messageId: string, references: string[], roomId = ROOM): MessageRow => ({
    roomId,
    eventId,
    messageId,
    references,
    direction: "inbound",
    sender: "bob@example.org",
    subject: null,
    participants: [],
    viaList: false,
    createdAt: ++clock,
  });

  it("a reply to the first mail: rooted at it, falling back to it", async () => {
    const a = row("$a", "a@x", []);
    const rel = await threadRelation(storeOf([a]), ROOM, "$a", a, { inReplyTo: "a@x", references: ["a@x"] });
    assert.deepEqual(rel, { rel_type: "m.thread", event_id: "$a", is_falling_back: true, "m.in_reply_to": { event_id: "$a" } });
  });

  it("a reply to the latest thread message: same root, falling back to the latest", async () => {
    const a = row("$a", "a@x", []);
    const b = row("$b", "b@x", ["a@x"]);
    const rel = await threadRelation(storeOf([a, b]), ROOM, "$b", b, { inReplyTo: "b@x", references: ["a@x", "b@x"] });
    assert.deepEqual(rel, { rel_type: "m.thread", event_id: "$a", is_falling_back: true, "m.in_reply_to": { event_id: "$b" } });
  });

  it("a reply to the root when the thread has moved on: m.in_reply_to is the latest message", async () => {
    const a = row("$a", "a@x", []);
    const b = row("$b", "b@x", ["a@x"]);
    const rel = await threadRelation(storeOf([a, b]), ROOM, "$a", a, { inReplyTo: "a@x", references: ["a@x"] });
    assert.deepEqual(rel, { rel_type: "m.thread", event_id: "$a", is_falling_back: true, "m.in_reply_to": { event_id: "$b" } });
  });

  it("a reply to an earlier thread message is a genuine reply in the thread", async () => {
    const a = row("$a", "a@x", []);
    const b = row("$b", "b@x", ["a@x"]);
    const c = row("$c", "c@x", ["a@x", "b@x"]);
    const rel = await threadRelation(storeOf([a, b, c]), ROOM, "$b", b, { inReplyTo: "b@x", references: ["a@x", "b@x"] });
    assert.deepEqual(rel, { rel_type: "m.thread", event_id: "$a", is_falling_back: false, "m.in_reply_to": { event_id: "$b" } });
  });

  it("trimmed References (or only In-Reply-To) still reach the root through the stored chain; other rooms do not count", async () => {
    const elsewhere = row("$z", "z@x", [], "!other:hs.test");
    const a = row("$a", "a@x", ["z@x"]);
    const b = row("$b", "b@x", ["z@x", "a@x"]);
    const c = row("$c", "c@x", storedReferences([], b)); // In-Reply-To only: stored with b's chain
    assert.deepEqual(c.references, ["z@x", "a@x", "b@x"]);
    const store = storeOf([elsewhere, a, b, c]);
    assert.equal((await threadRoot(store, ROOM, c, []))?.eventId, "$a");
    const rel = await threadRelation(store, ROOM, "$c", c, { inReplyTo: "c@x", references: [] });
    assert.equal(rel.event_id, "$a");
    assert.deepEqual(rel["m.in_reply_to"], { event_id: "$c" });
  });

  it("an unmapped parent is its own root", async () => {
    const rel = await threadRelation(storeOf([]), ROOM, "$p", null, { inReplyTo: "p@x", references: [] });
    assert.deepEqual(rel, { rel_type: "m.thread", event_id: "$p", is_falling_back: true, "m.in_reply_to": { event_id: "$p" } });
  });

  it("a hostile References header is looked up a bounded number of times", async () => {
    const a = row("$a", "a@x", []);
    let lookups = 0;
    const base = storeOf([a]);
    const store: ThreadStore = { ...base, getMessagesByMessageId: (id) => (lookups++, base.getMessagesByMessageId(id)) };
    const refs = Array.from({ length: 5000 }, (_, i) => `junk${i}@x`);
    assert.equal((await threadRoot(store, ROOM, a, refs))?.eventId, "$a");
    assert.ok(lookups <= 64, `${lookups} lookups`);
  });

  it("storedReferences keeps a mail's own chain", () => {
    assert.deepEqual(storedReferences(["a@x"], row("$b", "b@x", ["q@x"])), ["a@x"]);
    assert.deepEqual(storedReferences([], null), []);
  });
});
