import { test } from "node:test";
import assert from "node:assert/strict";
import { sanitizeHtml, MATRIX_ALLOWED_TAGS } from "../../src/bridge/format/sanitize.ts";
import { htmlToPlain } from "../../src/mail/inbound/htmlText.ts";

test("every Matrix-permitted tag survives", () => {
  for (const tag of MATRIX_ALLOWED_TAGS) {
    if (tag === "img" || tag === "br" || tag === "hr") continue;
    // Table parts are only valid inside a table; check them in context below.
    if (["table", "thead", "tbody", "tr", "th", "td", "caption", "li", "summary"].includes(tag)) continue;
    assert.equal(sanitizeHtml(`<${tag}>x</${tag}>`), `<${tag}>x</${tag}>`, tag);
  }
  assert.equal(sanitizeHtml("a<br>b<hr>"), "a<br />b<hr />");
  const table = "<table><caption>c</caption><thead><tr><th>h</th></tr></thead><tbody><tr><td>d</td></tr></tbody></table>";
  assert.equal(sanitizeHtml(table), table);
  assert.equal(sanitizeHtml("<ul><li>a</li></ul>"), "<ul><li>a</li></ul>");
  assert.equal(sanitizeHtml("<details><summary>s</summary>body</details>"), "<details><summary>s</summary>body</details>");
});

test("script, style, head and comments are removed with their content", () => {
  const out = sanitizeHtml(
    "<html><head><title>T</title><style>p{color:red}</style><script>x()</script></head>" +
      "<body><!-- secret --><p>keep</p><script>alert(1)</script><style>.a{}</style></body></html>",
  );
  assert.equal(out, "<p>keep</p>");
});

test("tags outside the subset are dropped, their text kept", () => {
  assert.equal(sanitizeHtml("<center><section>text</section></center>"), "text");
  assert.equal(sanitizeHtml('<form action="x"><input value="v">t</form>'), "t");
  assert.equal(sanitizeHtml("<iframe src='https://x/'></iframe><object>o</object>"), "o");
});

test("links: only http, https, ftp, mailto, magnet keep their href", () => {
  for (const href of ["https://a.example/x?y=1", "http://a.example/", "ftp://a.example/f", "mailto:bob@example.org", "magnet:?xt=urn:btih:abc"]) {
    assert.equal(sanitizeHtml(`<a href="${href}">l</a>`), `<a href="${href.replace(/&/g, "&amp;")}">l</a>`, href);
  }
  for (const href of ["javascript:alert(1)", "JaVaScRiPt:alert(1)", " javascript:x", "java&#x09;script:x", "data:text/html,<b>x", "vbscript:x", "/relative", "//protocol-relative.example/", "file:///etc/passwd", "#frag"]) {
    assert.equal(sanitizeHtml(`<a href="${href}">l</a>`), "<a>l</a>", href);
  }
});

test("link target is forced to _blank, other attributes dropped", () => {
  assert.equal(
    sanitizeHtml('<a href="https://x.example/" target="_top" onclick="e()" style="color:red" rel="x">l</a>'),
    '<a href="https://x.example/" target="_blank">l</a>',
  );
});

test("images: only mxc:// sources, others removed entirely", () => {
  assert.equal(
    sanitizeHtml('<img src="mxc://server.example/MediaId" width="64" height="32" alt="a" title="t" onerror="x()" style="s">'),
    '<img src="mxc://server.example/MediaId" width="64" height="32" alt="a" title="t" />',
  );
  for (const src of ["https://tracker.example/p.gif", "http://x/y.png", "data:image/png;base64,AAAA", "cid:part1@mail", "//x/y", "mxc://", "javascript:x"]) {
    assert.equal(sanitizeHtml(`a<img src="${src}" alt="pic">b`), "ab", src);
  }
  assert.equal(sanitizeHtml('a<img alt="no src">b'), "ab");
  assert.equal(sanitizeHtml('<img src="mxc://s.example/id" width="100%">'), '<img src="mxc://s.example/id" />');
});

test("ol start, code language class, colours", () => {
  assert.equal(sanitizeHtml('<ol start="5" type="a"><li>x</li></ol>'), '<ol start="5"><li>x</li></ol>');
  assert.equal(sanitizeHtml('<ol start="x"><li>x</li></ol>'), "<ol><li>x</li></ol>");
  assert.equal(sanitizeHtml('<code class="language-ts other">c</code>'), '<code class="language-ts">c</code>');
  assert.equal(sanitizeHtml('<code class="evil">c</code>'), "<code>c</code>");
  assert.equal(
    sanitizeHtml('<font color="#FF0000" data-mx-color="#00ff00" data-mx-bg-color="red" face="Arial">f</font>'),
    '<font data-mx-color="#00ff00" color="#FF0000">f</font>',
  );
  assert.equal(
    sanitizeHtml('<span data-mx-bg-color="#000000" style="x" class="c" data-other="1">s</span>'),
    '<span data-mx-bg-color="#000000">s</span>',
  );
  assert.equal(sanitizeHtml('<p style="color:red" class="x" align="center">p</p>'), "<p>p</p>");
});

test("text is escaped, no tag smuggling", () => {
  assert.equal(sanitizeHtml("<p>1 &lt; 2 &amp; <b>3</b></p>"), "<p>1 &lt; 2 &amp; <b>3</b></p>");
  // The inner <script> is removed with its content; what is left is inert text.
  assert.equal(sanitizeHtml("<<script>script>alert(1)<</script>/script>"), "&lt;/script&gt;");
  assert.equal(sanitizeHtml('<p title="x" onmouseover="alert(1)">t</p><a href="https://x.example/" title="&quot;><script>">l</a>'), '<p>t</p><a href="https://x.example/">l</a>');
  assert.ok(!sanitizeHtml('<svg><a xlink:href="javascript:x">s</a></svg>').includes("javascript"));
});

test("htmlToPlain: blocks, lists, good links, no script/style/head", () => {
  const text = htmlToPlain(
    "<html><head><title>T</title><style>p{}</style></head><body><h1>Title</h1><p>Para <a href='https://x.example/'>link</a> and <a href='javascript:x'>bad</a>.</p>" +
      "<ul><li>one</li><li>two</li></ul><script>alert(1)</script><img src='https://t.example/p.gif' alt='pixel'></body></html>",
  );
  assert.equal(text, "Title\n\nPara link [https://x.example/] and bad.\n\n * one\n * two");
});

test("htmlToPlain: long lines are not wrapped, mailto shown as the address", () => {
  const long = "word ".repeat(60).trim();
  assert.equal(htmlToPlain(`<p>${long}</p>`), long);
  assert.equal(htmlToPlain('<a href="mailto:bob@example.org">Bob</a>'), "Bob [bob@example.org]");
  assert.equal(htmlToPlain(""), "");
});
