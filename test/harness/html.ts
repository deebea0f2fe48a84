/**
 * HTML measurements for tests.
 */
import assert from "node:assert/strict";

/** Deepest element nesting of HTML such as `formatted_body` (void and self-closed tags do not nest). */
export function depth(html: string): number {
  let d = 0;
  let max = 0;
  for (const [, close, name, selfClose] of html.matchAll(/<(\/?)([a-z0-9]+)\b[^>]*?(\/?)>/giu)) {
    if (selfClose || ["br", "hr", "img"].includes(name!.toLowerCase())) continue;
    if (close) d--;
    else max = Math.max(max, ++d);
  }
  assert.equal(d, 0, "balanced");
  return max;
}
