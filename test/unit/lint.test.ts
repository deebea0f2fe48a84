/**
 * The layer boundaries of eslint.config.js bite: virtual files in each folder
 * are linted with the real config (ESLint Node API, `lintText` with a
 * `filePath`), and the real src/ tree lints clean.
 */
import { describe, it, before } from "node:test";
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ESLint } from "eslint";

const root = fileURLToPath(new URL("../../", import.meta.url));

let eslint: ESLint;

/** Lint `code` as if it lived at `filePath` (relative to the repository root); errors only. */
async function errors(filePath: string, code: string): Promise<{ ruleId: string | null; message: string }[]> {
  const [result] = await eslint.lintText(code, { filePath });
  assert.ok(result, `no lint result for ${filePath}`);
  return result.messages.filter((m) => m.severity === 2).map(({ ruleId, message }) => ({ ruleId, message }));
}

/** Assert one `no-restricted-imports` error whose message matches `pattern`. */
async function assertBlocked(filePath: string, specifier: string, pattern: RegExp): Promise<void> {
  const found = await errors(filePath, `import { x } from "${specifier}";\nexport const y = x;\n`);
  assert.equal(found.length, 1, `${filePath} importing ${specifier}: ${JSON.stringify(found)}`);
  assert.equal(found[0]?.ruleId, "no-restricted-imports");
  assert.match(found[0]?.message ?? "", pattern);
}

async function assertAllowed(filePath: string, specifier: string): Promise<void> {
  const found = await errors(filePath, `import { x } from "${specifier}";\nexport const y = x;\n`);
  assert.deepEqual(found, [], `${filePath} importing ${specifier}`);
}

describe("eslint.config.js layer boundaries", () => {
  before(() => {
    eslint = new ESLint({ cwd: root });
  });

  it("mail/ must not import matrix/, at any depth", async () => {
    await assertBlocked("src/mail/inbound/x.ts", "../../matrix/MatrixGateway.ts", /mail\/ must not import matrix\//);
    await assertBlocked("src/mail/x.ts", "../matrix/MatrixGateway.ts", /mail\/ must not import matrix\//);
    await assertBlocked("src/mail/outbound/x.ts", "../../bridge/ids.ts", /mail\/ must not import bridge\//);
    await assertBlocked("src/mail/outbound/x.ts", "../../store/Store.ts", /mail\/ must not import store\//);
  });

  it("type-only imports and re-exports are checked too", async () => {
    const typeImport = await errors("src/mail/inbound/x.ts", `import type { X } from "../../matrix/MatrixGateway.ts";\nexport type Y = X;\n`);
    assert.equal(typeImport[0]?.ruleId, "no-restricted-imports");
    const reExport = await errors("src/mail/inbound/x.ts", `export { X } from "../../matrix/MatrixGateway.ts";\n`);
    assert.equal(reExport[0]?.ruleId, "no-restricted-imports");
  });

  it("mail/outbound/OutboundQueue.ts is held to the mail/ rules like every other file", async () => {
    await assertBlocked("src/mail/outbound/OutboundQueue.ts", "../../store/Store.ts", /mail\/ must not import store\//);
    await assertBlocked("src/mail/outbound/OutboundQueue.ts", "../../matrix/crypto.ts", /mail\/ must not import matrix\//);
  });

  it("matrix/ must not import mail/ or store/; from bridge/ only ports.ts", async () => {
    await assertBlocked("src/matrix/x.ts", "../mail/dns.ts", /matrix\/ must not import mail\//);
    await assertBlocked("src/matrix/x.ts", "../store/Store.ts", /matrix\/ must not import store\//);
    await assertAllowed("src/matrix/x.ts", "../bridge/ports.ts");
    await assertBlocked("src/matrix/x.ts", "../bridge/ids.ts", /only bridge\/ports\.ts/);
    await assertBlocked("src/matrix/x.ts", "../bridge/ports.tsx", /only bridge\/ports\.ts/);
  });

  it("store/ must not import mail/, matrix/, bridge/", async () => {
    await assertBlocked("src/store/x.ts", "../bridge/ids.ts", /store\/ must not import bridge\//);
    await assertBlocked("src/store/db/x.ts", "../../mail/dns.ts", /store\/ must not import mail\//);
    await assertBlocked("src/store/x.ts", "../matrix/crypto.ts", /store\/ must not import matrix\//);
    await assertAllowed("src/store/queries/x.ts", "../db/dialect.ts");
  });

  it("util/ imports nothing from src/ but util/ (every other top-level entry of src/ is covered)", async () => {
    const others = readdirSync(join(root, "src")).filter((name) => name !== "util");
    assert.ok(others.length > 0);
    for (const name of others) {
      await assertBlocked("src/util/x.ts", `../${name}${name.endsWith(".ts") ? "" : "/x.ts"}`, /util\/ imports nothing from src\/ but util\//);
    }
    await assertAllowed("src/util/x.ts", "./logger.ts");
  });

  it("config/ must not import matrix/, bridge/, store/; from mail/ only dns.ts", async () => {
    await assertAllowed("src/config/x.ts", "../mail/dns.ts");
    await assertBlocked("src/config/x.ts", "../mail/outbound/dkim.ts", /only mail\/dns\.ts/);
    await assertBlocked("src/config/x.ts", "../matrix/crypto.ts", /config\/ must not import matrix\//);
    await assertBlocked("src/config/x.ts", "../bridge/ids.ts", /config\/ must not import bridge\//);
    await assertBlocked("src/config/x.ts", "../store/Store.ts", /config\/ must not import store\//);
  });

  it("bridge/ may import both sides", async () => {
    await assertAllowed("src/bridge/x.ts", "../matrix/MatrixGateway.ts");
    await assertAllowed("src/bridge/x.ts", "../mail/inbound/SmtpListener.ts");
    await assertAllowed("src/bridge/x.ts", "../store/Store.ts");
  });

  it("a clean file has no errors; console is an error in src/", async () => {
    assert.deepEqual(await errors("src/mail/inbound/x.ts", `import { getLogger } from "../../util/logger.ts";\nimport { x } from "./parse.ts";\nexport const log = getLogger("x");\nexport const y = x;\n`), []);
    const found = await errors("src/bridge/x.ts", `console.log("hi");\n`);
    assert.deepEqual(found.map((m) => m.ruleId), ["no-console"]);
  });

  it("the real src/ tree lints clean", async () => {
    const results = await eslint.lintFiles(["src"]);
    assert.ok(results.length > 10, `only ${results.length} files linted`);
    const problems = results.flatMap((r) => r.messages.filter((m) => m.severity === 2).map((m) => `${r.filePath}:${m.line} ${m.ruleId}: ${m.message}`));
    assert.deepEqual(problems, []);
  });
});
