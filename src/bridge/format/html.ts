/**
 * HTML helpers shared by both directions of formatting.
 */

/** Escape text for HTML (`& < > "`). */
export function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}
