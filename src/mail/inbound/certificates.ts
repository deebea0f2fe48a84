/**
 * The STARTTLS certificate and key of the inbound listener, read from files and re-read when
 * they change, so a renewed certificate (certbot, cert-manager, acme.sh) is used without a
 * restart.
 *
 * Change detection is a stat of both files (device, inode, size, mtime, ctime; symlinks are
 * followed, so a switched `live/` link counts), done by the listener before each STARTTLS
 * handshake. A changed pair is only used once both files parse and the key matches the
 * certificate (node:tls builds a secure context from them); until then the previous pair stays
 * in use, so a renewal caught half-written never breaks TLS.
 */
import { readFile, stat } from "node:fs/promises";
import { createSecureContext } from "node:tls";
import { errorFields, type Logger } from "../../util/logger.ts";

/** A PEM certificate chain and its private key. */
export interface CertificatePair {
  cert: Buffer;
  key: Buffer;
}

/** Result of {@link CertificateFiles.refresh}. */
export type CertificateRefresh =
  /** Nothing changed since the last load (or since the last reported failure). */
  | { status: "unchanged" }
  /** The files changed and the new pair is usable: apply it. */
  | { status: "changed"; pair: CertificatePair }
  /** The files changed but cannot be used (the previous pair stays); reported once per change. */
  | { status: "failed"; error: Error };

/**
 * One certificate file and one key file, with change detection. See the module comment.
 */
export class CertificateFiles {
  readonly certFile: string;
  readonly keyFile: string;
  /** Signature of the files last loaded or last reported as failed. */
  #signature = "";
  #running: Promise<CertificateRefresh> | null = null;

  /**
   * @param certFile PEM certificate (chain) file
   * @param keyFile PEM private key file
   */
  constructor(certFile: string, keyFile: string) {
    this.certFile = certFile;
    this.keyFile = keyFile;
  }

  /**
   * Read and check both files.
   * @returns the pair
   * @throws Error from node:fs (ENOENT, EACCES) or node:tls (bad PEM, key not matching the certificate)
   */
  async load(): Promise<CertificatePair> {
    const signature = await this.#stat();
    const pair = await this.#read();
    this.#signature = signature;
    return pair;
  }

  /**
   * Check whether the files changed and, if so, read and check them. Concurrent calls share
   * one check.
   * @returns see {@link CertificateRefresh}; never rejects (a stat or read error is `failed`)
   */
  refresh(): Promise<CertificateRefresh> {
    this.#running ??= this.#refresh().finally(() => {
      this.#running = null;
    });
    return this.#running;
  }

  async #refresh(): Promise<CertificateRefresh> {
    let signature: string;
    try {
      signature = await this.#stat();
    } catch (err) {
      const sig = `error:${(err as { code?: string }).code ?? String(err)}`;
      if (sig === this.#signature) return { status: "unchanged" };
      this.#signature = sig;
      return { status: "failed", error: err instanceof Error ? err : new Error(String(err)) };
    }
    if (signature === this.#signature) return { status: "unchanged" };
    try {
      const pair = await this.#read();
      this.#signature = signature;
      return { status: "changed", pair };
    } catch (err) {
      this.#signature = signature;
      return { status: "failed", error: err instanceof Error ? err : new Error(String(err)) };
    }
  }

  async #stat(): Promise<string> {
    const parts = await Promise.all(
      [this.certFile, this.keyFile].map(async (f) => {
        const s = await stat(f, { bigint: true });
        return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
      }),
    );
    return parts.join("|");
  }

  async #read(): Promise<CertificatePair> {
    const [cert, key] = await Promise.all([readFile(this.certFile), readFile(this.keyFile)]);
    // Throws for unparsable PEM and for a key that does not belong to the certificate.
    createSecureContext({ cert, key });
    return { cert, key };
  }
}

/**
 * Before a STARTTLS handshake: pick up a renewed certificate pair and hand it to `server`
 * (smtp-server's `updateSecureContext`). Logs the reload, or why the previous pair stays, once
 * per change, with `listener` naming which listener it is. Shared by the inbound (MX) and the
 * submission listener. Never rejects.
 * @param listener `smtp` or `submission`, for the log lines
 */
export async function refreshServerCertificate(files: CertificateFiles, server: { updateSecureContext(options: CertificatePair): void }, log: Logger, listener: "smtp" | "submission"): Promise<void> {
  const result = await files.refresh();
  const fields = { listener, certFile: files.certFile, keyFile: files.keyFile };
  if (result.status === "changed") {
    try {
      server.updateSecureContext(result.pair);
      log.info("smtp tls certificate reloaded", fields);
    } catch (err) {
      log.error("smtp tls certificate reload failed, previous certificate kept", { ...fields, ...errorFields(err) });
    }
  } else if (result.status === "failed") {
    log.warn("smtp tls certificate files unusable, previous certificate kept", { ...fields, ...errorFields(result.error) });
  }
}
