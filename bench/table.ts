/**
 * The final table of `npm run bench`: one row per figure, with the reference measured in the
 * same run, the ratio and the target. Printed on stdout; notes (why a row was not run, what
 * went wrong) are listed under it.
 */

/** One line of the final table. */
export interface TableRow {
  /** Which part measured it: ingest, inbound, outbound, memory. */
  part: string;
  /** What the figure is. */
  figure: string;
  /** The figure, with its unit ("not run" / "failed" when missing). */
  value: string;
  /** The reference measured in the same run, or "-". */
  reference: string;
  /** value / reference (or the ratio the target is about), or "-". */
  ratio: string;
  /** The goal (figures only: nothing checks it). */
  target: string;
  /** Why the row is missing or incomplete; listed under the table. */
  note?: string;
}

/**
 * Render the rows as a plain-text table with a header, a rule, and numbered notes.
 * @param rows table rows in order
 * @returns the text, ending with a newline
 */
export function formatTable(rows: readonly TableRow[]): string {
  const header = ["part", "figure", "value", "reference (same run)", "ratio", "target"];
  const notes: string[] = [];
  const lines: string[][] = [header];
  for (const r of rows) {
    let value = r.value;
    if (r.note) {
      notes.push(r.note);
      value += ` [${notes.length}]`;
    }
    lines.push([r.part, r.figure, value, r.reference, r.ratio, r.target]);
  }
  const widths = header.map((_, c) => Math.max(...lines.map((l) => l[c]!.length)));
  const out: string[] = [];
  for (const [i, l] of lines.entries()) {
    out.push(l.map((cell, c) => cell.padEnd(widths[c]!)).join("  ").trimEnd());
    if (i === 0) out.push(widths.map((w) => "-".repeat(w)).join("  "));
  }
  for (const [i, n] of notes.entries()) out.push(`[${i + 1}] ${n}`);
  return out.join("\n") + "\n";
}
