/**
 * `doctor` check: the DKIM key pair matches, i.e. the public key published in DNS (`p=`) is the
 * public key of `dkim.private_key_file` (RFC 6376 §3.6.1). Otherwise every signature the bridge
 * makes fails verification.
 */
import { dkimTxtRecord, loadDkimSigner } from "../../mail/outbound/dkim.ts";
import { dkimPublicKey } from "./publishedRecords.ts";
import { describeError, fail, ok, warn, type DoctorResult } from "./result.ts";

/** Inputs of {@link checkDkimKey}. */
export interface DkimKeyInput {
  /** `dkim.private_key_file`. */
  privateKeyFile: string;
  /** `mail.domain` (the signature's d=). */
  mailDomain: string;
  /** `dkim.selector`. */
  selector: string;
  /** The DKIM key record found in DNS (./publishedRecords.ts `checkDkimRecord`), or null when none usable was found. */
  published: string | null;
}

/**
 * Load the private key the way the bridge does (src/mail/outbound/dkim.ts `loadDkimSigner`:
 * RSA, at least 1024 bits) and compare its public key with the published `p=`.
 * @returns `ok` when they are the same key; `fail` when the key cannot be used or differs;
 *   `warn` when nothing usable is published to compare with (the `dns dkim` check says why)
 */
export function checkDkimKey(input: DkimKeyInput): DoctorResult {
  const check = "dkim key";
  let ownTxt: string;
  try {
    const signer = loadDkimSigner(input.privateKeyFile, input.mailDomain, input.selector);
    ownTxt = dkimTxtRecord(signer.privateKey);
  } catch (err) {
    return fail(check, describeError(err), "run `matrix-email-bridge dkim-keygen`, then publish the DKIM record `matrix-email-bridge dns-records` prints");
  }
  const name = `${input.selector}._domainkey.${input.mailDomain}`;
  if (input.published === null) {
    return warn(check, `${input.privateKeyFile} is usable, but ${name} publishes no key to compare it with`, `publish the DKIM record \`matrix-email-bridge dns-records\` prints (see dns dkim)`);
  }
  if (dkimPublicKey(input.published) !== dkimPublicKey(ownTxt)) {
    return fail(
      check,
      `the key published at ${name} is not the public key of ${input.privateKeyFile}: every DKIM signature of the bridge fails`,
      "publish the DKIM record `matrix-email-bridge dns-records` prints (or put the private key that belongs to the published one back in dkim.private_key_file)",
    );
  }
  return ok(check, `${name} publishes the public key of ${input.privateKeyFile}`);
}
