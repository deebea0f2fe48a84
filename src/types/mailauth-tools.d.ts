/**
 * Types for the one mailauth internal the bridge uses: the DMARC identifier alignment check
 * (RFC 7489 §3.1), so that alignment is judged the same way with or without a DMARC record.
 */
declare module "mailauth/lib/tools.js" {
  /**
   * The first entry of `domainList` that aligns with `fromDomain`: identical in strict mode,
   * the same Organizational Domain (Public Suffix List) in relaxed mode; false when none does.
   */
  export function getAlignment<T extends { domain: string }>(fromDomain: string, domainList: (string | T)[], strict: boolean): T | { domain: string } | false;
}
