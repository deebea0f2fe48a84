/**
 * `doctor` check: the STARTTLS certificate (`smtp.tls_cert_file`/`tls_key_file`) loads with its
 * key (src/mail/inbound/certificates.ts, as the listener loads it), is valid now (RFC 5280
 * §4.1.2.5), and names `smtp.hostname` (RFC 6125 §6: the name senders connect to, the MX host).
 */
import { X509Certificate } from "node:crypto";
import { CertificateFiles } from "../../mail/inbound/certificates.ts";
import { describeError, fail, ok, warn, type DoctorResult } from "./result.ts";

/** Warn this long before the certificate expires, in ms (renewal tools renew 30 days ahead). */
export const EXPIRY_WARNING_MS = 14 * 24 * 3600 * 1000;

/** Inputs of {@link checkCertificate}. */
export interface CertificateInput {
  /** `smtp.tls_cert_file`, null when STARTTLS is off. */
  certFile: string | null;
  /** `smtp.tls_key_file`. */
  keyFile: string | null;
  /** `smtp.hostname`. */
  hostname: string;
  /** The time to judge validity at, epoch ms (default now). */
  now?: number;
}

/**
 * @returns `warn` when STARTTLS is off (senders deliver in plaintext) or the certificate expires
 *   within {@link EXPIRY_WARNING_MS}; `fail` when the pair cannot be loaded, the certificate is
 *   expired or not yet valid, or does not name `smtp.hostname`; else `ok`
 */
export async function checkCertificate(input: CertificateInput): Promise<DoctorResult> {
  const check = "tls certificate";
  if (!input.certFile || !input.keyFile) {
    return warn(check, "smtp.tls_cert_file is not set: STARTTLS is off, senders deliver to the bridge in plaintext", `set smtp.tls_cert_file and smtp.tls_key_file to a certificate for ${input.hostname} (e.g. Let's Encrypt)`);
  }
  const files = new CertificateFiles(input.certFile, input.keyFile);
  let cert: X509Certificate;
  try {
    const pair = await files.load();
    cert = new X509Certificate(pair.cert);
  } catch (err) {
    return fail(check, `${input.certFile} / ${input.keyFile} cannot be used: ${describeError(err)}`, "point smtp.tls_cert_file and smtp.tls_key_file at a PEM certificate (chain) and its private key");
  }
  const now = input.now ?? Date.now();
  const from = cert.validFromDate;
  const to = cert.validToDate;
  const subject = `${input.certFile} (${cert.subject.replace(/\n/g, ", ")}, valid ${from.toISOString()} to ${to.toISOString()})`;
  const renew = `renew the certificate for ${input.hostname} (the bridge picks up the new files without a restart)`;
  if (now > to.getTime()) return fail(check, `${subject} expired`, renew);
  if (now < from.getTime()) return fail(check, `${subject} is not valid yet`, "check the host's clock, or use a certificate valid now");
  if (cert.checkHost(input.hostname) === undefined) {
    return fail(check, `${subject} does not name ${input.hostname} (smtp.hostname)`, `use a certificate whose subjectAltName includes ${input.hostname}`);
  }
  if (to.getTime() - now < EXPIRY_WARNING_MS) return warn(check, `${subject} expires in less than 14 days`, renew);
  return ok(check, `${subject} names ${input.hostname}`);
}
