/**
 * `doctor`: check a deployment and print the fix for each problem. Every check is a small
 * module under ./doctor/ returning a {@link DoctorResult}; they run independently (one that
 * fails or cannot run never stops the others) and are printed in a fixed order, one line each:
 *
 *   ok    dns mx: bridge.example MX 10 mx.bridge.example; ...
 *   fail  dns spf: ...
 *         fix: publish ...
 */
import { readFileSync } from "node:fs";
import type { BridgeConfig } from "../config/schema.ts";
import { DnsResolver } from "../mail/dns.ts";
import { dkimTxtRecord } from "../mail/outbound/dkim.ts";
import { dnsRecords } from "../mail/outbound/dnsRecords.ts";
import { configureLogging, errorFields, getLogger } from "../util/logger.ts";
import { checkCertificate } from "./doctor/certificate.ts";
import { checkConfig } from "./doctor/configCheck.ts";
import { checkCrypto } from "./doctor/crypto.ts";
import { checkDkimKey } from "./doctor/dkimKey.ts";
import { checkHomeserver } from "./doctor/homeserver.ts";
import { checkDkimRecord, checkDmarc, checkMx, checkSpf, type ExpectedRecords } from "./doctor/publishedRecords.ts";
import { describeError, fail, normName, type DoctorResult } from "./doctor/result.ts";
import { checkReverseDns } from "./doctor/reverseDns.ts";
import { checkSmtpPort } from "./doctor/smtpPort.ts";

export type { DoctorResult, DoctorStatus } from "./doctor/result.ts";

const log = getLogger("cli/doctor");

/** Options of {@link runDoctor}. */
export interface DoctorOptions {
  /** Longest wait for the homeserver's first answer (`/versions`), in ms (default 10 000). */
  connectTimeoutMs?: number;
  /** Longest wait for the appservice ping, in ms (default 70 000: Synapse's own call to the appservice, inside it, gives up after 60 s). */
  pingTimeoutMs?: number;
  /** Longest wait for an SMTP greeting on a taken port, in ms (default 5000). */
  greetingTimeoutMs?: number;
  /** The time certificates are judged at, epoch ms (default now). */
  now?: number;
}

/** Run one check; an unexpected error becomes a `fail` naming it (and is logged once, with its stack). */
async function guarded(check: string, run: () => Promise<DoctorResult | DoctorResult[]> | DoctorResult): Promise<DoctorResult[]> {
  try {
    const r = await run();
    return Array.isArray(r) ? r : [r];
  } catch (err) {
    log.error("doctor check could not run", { check, ...errorFields(err) });
    return [fail(check, `the check could not run: ${describeError(err)}`, "see the log line above; report it if it is a bug")];
  }
}

/**
 * What `dns-records` prints for this config (src/main.ts), for comparison. The DKIM value is
 * the key file's public key, or empty when the file cannot be read (the `dkim key` check says so).
 */
export function expectedRecords(cfg: BridgeConfig): ExpectedRecords {
  let dkimTxt = "";
  try {
    dkimTxt = dkimTxtRecord(readFileSync(cfg.dkim.private_key_file, "utf8"));
  } catch (err) {
    log.debug("DKIM key not readable; the dkim key check reports it", { file: cfg.dkim.private_key_file, ...errorFields(err) });
  }
  return {
    mailDomain: normName(cfg.mail.domain),
    mxHost: normName(cfg.smtp.hostname),
    records: dnsRecords({
      mailDomain: cfg.mail.domain,
      mxHost: cfg.smtp.hostname,
      selector: cfg.dkim.selector,
      dkimPublicTxt: dkimTxt,
      relayHost: cfg.outbound.mode === "relay" ? (cfg.outbound.relay?.host ?? null) : null,
    }),
  };
}

/**
 * Run every check of a deployment.
 * @param file the config file
 * @returns the results in report order; the first is always the `config` check (when it
 *   fails, only the checks that need no config follow)
 */
export async function runDoctor(file: string, opts: DoctorOptions = {}): Promise<DoctorResult[]> {
  const { result: configResult, config: cfg } = checkConfig(file);
  if (!cfg) return [configResult, ...(await guarded("e2e crypto", () => checkCrypto(null)))];
  // The bridge's one resolver, configured as `start` configures it (src/bridge/Bridge.ts).
  const resolver = new DnsResolver({
    nameservers: cfg.dns.nameservers,
    timeoutMs: cfg.dns.timeout_ms,
    tries: cfg.dns.tries,
    cacheEntries: cfg.dns.cache_entries,
    cacheTtlMs: cfg.dns.cache_ttl_ms,
  });
  const exp = expectedRecords(cfg);
  const groups = await Promise.all([
    guarded("homeserver", () => checkHomeserver(cfg, { connectTimeoutMs: opts.connectTimeoutMs ?? 10_000, timeoutMs: opts.pingTimeoutMs ?? 70_000 })),
    guarded("smtp port", () =>
      checkSmtpPort({ bindAddress: cfg.smtp.bind_address, port: cfg.smtp.port, hostname: cfg.smtp.hostname, timeoutMs: opts.greetingTimeoutMs ?? 5000 }),
    ),
    guarded("dns mx", () => checkMx(resolver, exp)),
    guarded("dns spf", () => checkSpf(resolver, exp)),
    guarded("dns dkim", async () => {
      const { result, published } = await checkDkimRecord(resolver, exp);
      const key = checkDkimKey({ privateKeyFile: cfg.dkim.private_key_file, mailDomain: exp.mailDomain, selector: cfg.dkim.selector, published });
      return [result, key];
    }),
    guarded("dns dmarc", () => checkDmarc(resolver, exp)),
    guarded("reverse dns", () =>
      checkReverseDns({
        resolver,
        mode: cfg.outbound.mode,
        relayHost: cfg.outbound.relay?.host ?? null,
        heloName: cfg.outbound.helo_name ?? cfg.smtp.hostname,
        sourceAddress: null,
      }),
    ),
    guarded("tls certificate", () =>
      checkCertificate({ certFile: cfg.smtp.tls_cert_file, keyFile: cfg.smtp.tls_key_file, hostname: cfg.smtp.hostname, ...(opts.now !== undefined ? { now: opts.now } : {}) }),
    ),
    guarded("e2e crypto", () => checkCrypto(cfg.encryption.enabled, cfg.appservice.registration_file)),
  ]);
  return [configResult, ...groups.flat()];
}

/** One result as report lines: `<status padded to 4>  <check>: <found>`, then `      fix: <fix>` for warn/fail. */
export function formatResult(r: DoctorResult): string {
  const line = `${r.status.padEnd(4)}  ${r.check}: ${r.found}`;
  return r.fix && r.status !== "ok" ? `${line}\n      fix: ${r.fix}` : line;
}

/**
 * The `doctor` command: run the checks, print the report to `out`. Log lines below `error` are
 * off (unless MEB_LOG_LEVEL says otherwise): the report carries what they would say.
 * @returns the exit code (src/main.ts conventions): 0 when nothing failed, 2 when the config
 *   cannot be used, 1 when any other check failed
 */
export async function doctorCommand(file: string, out: (text: string) => void, opts: DoctorOptions = {}): Promise<number> {
  // The report says it all: log lines (e.g. the crypto probe's warning) only for errors, unless asked for.
  if (!process.env.MEB_LOG_LEVEL) configureLogging({ level: "error" });
  const results = await runDoctor(file, opts);
  out(results.map(formatResult).join("\n") + "\n");
  if (results[0]?.status === "fail") return 2;
  return results.some((r) => r.status === "fail") ? 1 : 0;
}
