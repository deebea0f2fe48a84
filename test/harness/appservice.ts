/**
 * Test harness for the appservice listener (src/matrix/MatrixGateway.ts) without a
 * homeserver: a registration file for the bridge, and a MatrixGateway on a free loopback
 * port whose `listen()` starts only the HTTP listener (the homeserver URL is never contacted).
 *
 * Used by test/integration/appserviceAuth.test.ts and test/integration/appserviceTransactions.test.ts.
 */
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { MatrixGateway, type MatrixGatewayOptions } from "../../src/matrix/MatrixGateway.ts";
import { freePort } from "./ports.ts";

/**
 * Write `registration.yaml` into `dir`: appservice `email-bridge`, the given `hsToken`, a
 * random as_token, bot `@emailbot`, exclusive ghosts `@email_*:bridge.test`, no rate limit.
 * @returns the file's path
 * @throws the file system error when the file cannot be written
 */
export async function writeRegistration(dir: string, hsToken: string): Promise<string> {
  const registrationFile = join(dir, "registration.yaml");
  await writeFile(
    registrationFile,
    [
      "id: email-bridge",
      "url: http://127.0.0.1:1",
      `as_token: ${randomBytes(32).toString("hex")}`,
      `hs_token: ${hsToken}`,
      "sender_localpart: emailbot",
      "rate_limited: false",
      "namespaces:",
      "  users:",
      "    - exclusive: true",
      '      regex: "@email_.+:bridge\\\\.test"',
      "  aliases: []",
      "  rooms: []",
      "",
    ].join("\n"),
  );
  return registrationFile;
}

/** What a test gives {@link createTestGateway}: the registration, journal and sink, and any other option to replace a default. */
export type TestGatewayOptions = Pick<MatrixGatewayOptions, "registrationFile" | "journal" | "sink"> & Partial<MatrixGatewayOptions>;

/**
 * Create a MatrixGateway for server `bridge.test`, bound to 127.0.0.1 on a port that was
 * free a moment ago, with a homeserver URL on another free port (never contacted by
 * `listen()`); `opts` replace any default. Does not listen: the caller calls
 * `gateway.listen()` (so it can inspect the journal first) and `gateway.stop()`.
 * @returns the gateway and the port its listener will bind
 * @throws what {@link MatrixGateway.create} throws (e.g. an unreadable registration file),
 *   or an Error when no port could be allocated
 */
export async function createTestGateway(opts: TestGatewayOptions): Promise<{ gateway: MatrixGateway; port: number }> {
  const port = await freePort();
  const gateway = await MatrixGateway.create({
    homeserverUrl: `http://127.0.0.1:${await freePort()}`, // never contacted by listen()
    serverName: "bridge.test",
    botDisplayName: "Email bridge",
    bindAddress: "127.0.0.1",
    port,
    ...opts,
  });
  return { gateway, port };
}
