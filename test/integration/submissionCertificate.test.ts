/**
 * The submission listener (mail/submission/SubmissionListener.ts) picks up a renewed STARTTLS
 * certificate before the next handshake, as the MX listener does (mail/inbound/certificates.ts),
 * and keeps the previous pair while a renewal is half written.
 */
import { describe } from "node:test";
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { configureLogging } from "../../src/util/logger.ts";
import { SubmissionListener, type SubmissionHandler } from "../../src/mail/submission/SubmissionListener.ts";
import { checkCertificateRenewal, makeCert, subjectOfNextSession, testWithOpenssl } from "../harness/smtpListener.ts";

const logLines: string[] = [];
configureLogging({ level: "debug", format: "json", write: (line) => logLines.push(line) });

function logged(msg: string): Record<string, unknown>[] {
  return logLines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === msg);
}

/** A handler that never gets as far as a mail: this test only shakes hands. */
const handler: SubmissionHandler = {
  authenticate: async () => null,
  checkRecipient: async () => Promise.reject(new Error("no recipient expected")),
  deliver: async () => Promise.reject(new Error("no mail expected")),
};

describe("submission: certificate reload", async () => {
  await testWithOpenssl("a certificate replaced on disk is used by the next STARTTLS on the submission port, without a restart", "meb-sub-reload-", async (dir) => {
    const certFile = join(dir, "live-cert.pem");
    const keyFile = join(dir, "live-key.pem");
    const first = await makeCert(dir, "first.bridge.test");
    await writeFile(certFile, await readFile(first.cert));
    await writeFile(keyFile, await readFile(first.key));
    const listener = new SubmissionListener({
      config: {
        bind_address: "127.0.0.1",
        port: 0,
        hostname: "mx.bridge.test",
        tls_cert_file: certFile,
        tls_key_file: keyFile,
        max_auth_failures_per_ip: 5,
        max_message_bytes: 1_000_000,
        max_clients: 10,
        max_recipients: 10,
        max_header_bytes: 65_536,
        max_mime_parts: 100,
        max_mime_depth: 10,
        max_received_headers: 50,
      },
      handler,
      closeTimeoutMs: 500,
    });
    const { port } = await listener.listen();
    const nextSubject = (): Promise<string | undefined> => subjectOfNextSession(port, (ehlo) => assert.ok(ehlo.some((l) => /AUTH PLAIN LOGIN/.test(l)), ehlo.join("\n")));
    try {
      await checkCertificateRenewal(dir, { certFile, keyFile }, nextSubject, () => {
        assert.ok(logged("smtp tls certificate reloaded").some((l) => l.listener === "submission"));
        assert.ok(logged("smtp tls certificate files unusable, previous certificate kept").some((l) => l.listener === "submission"));
      });
    } finally {
      await listener.close();
    }
  });
});
