/**
 * The shape every `doctor` check returns, and the helpers the checks share.
 */
import { isNegativeDnsAnswer, isTemporaryDnsError } from "../../mail/dns.ts";

/** How a check came out: `ok`, `warn` (works, but should be changed), `fail` (broken, or the check could not run). */
export type DoctorStatus = "ok" | "warn" | "fail";

/** One line of the `doctor` report: `<status>  <check>: <found>`, then `fix: <fix>` for warn/fail. */
export interface DoctorResult {
  status: DoctorStatus;
  /** Short name of what was checked, e.g. `dns mx`. */
  check: string;
  /** What was found, one line. */
  found: string;
  /** What the operator should do; set for `warn` and `fail`. */
  fix?: string;
}

/** An `ok` result. */
export function ok(check: string, found: string): DoctorResult {
  return { status: "ok", check, found };
}

/** A `warn` result with its fix. */
export function warn(check: string, found: string, fix: string): DoctorResult {
  return { status: "warn", check, found, fix };
}

/** A `fail` result with its fix. */
export function fail(check: string, found: string, fix: string): DoctorResult {
  return { status: "fail", check, found, fix };
}

/**
 * A short description of an error for a `found` text: the node error code (ETIMEOUT,
 * ECONNREFUSED, ...) and the message, never a stack trace.
 */
export function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const code = (err as { code?: unknown }).code;
  const message = err.message.split("\n")[0] ?? err.message;
  return typeof code === "string" && !message.includes(code) ? `${code}: ${message}` : message;
}

/**
 * The `fail` result for a DNS lookup that did not get a definite answer (timeout, SERVFAIL,
 * refused), or for any other lookup error.
 * @param check the check's name
 * @param what what was looked up, e.g. `TXT _dmarc.mail.example`
 * @param err the resolver's error (src/mail/dns.ts)
 * @param servers the servers the resolver asked (`DnsResolver.servers`)
 */
export function dnsFailure(check: string, what: string, err: unknown, servers: readonly string[]): DoctorResult {
  const found = `cannot look up ${what}: ${describeError(err)} (asked ${servers.join(", ") || "the system's resolvers"})`;
  if (isTemporaryDnsError(err)) {
    return fail(check, found, "make sure the DNS servers in dns.nameservers answer (the bridge asks only them), then run doctor again");
  }
  return fail(check, found, "check the name, and that dns.nameservers answers for it");
}

/** Whether `err` is a definite "no such name / no such record" DNS answer (see src/mail/dns.ts). */
export function isNoRecord(err: unknown): boolean {
  return isNegativeDnsAnswer(err);
}

/** A domain name lower-cased without its trailing dot, for comparisons. */
export function normName(name: string): string {
  return name.trim().toLowerCase().replace(/\.$/, "");
}
