/**
 * Load and validate the YAML config against {@link configSchema}, then run the load steps
 * of crossChecks.ts (paths, normalisation, cross-field checks). Every problem is collected
 * and reported at once in one {@link ConfigError}.
 */
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { Ajv, type ErrorObject } from "ajv";
import { parse as parseYaml, YAMLParseError } from "yaml";
import { LOAD_STEPS, type LoadContext } from "./crossChecks.ts";
import { configSchema, type BridgeConfig } from "./schema.ts";

/** One thing wrong with a config: the dotted path of the key (`smtp.port`; "" for the whole file) and what is wrong with it. */
export interface ConfigProblem {
  key: string;
  problem: string;
}

/**
 * A config that cannot be used. `problems` lists everything wrong with it; the message has one
 * line per problem, each `<file>: <key>: <problem>`. `key` is the first problem's key.
 */
export class ConfigError extends Error {
  readonly key: string;
  readonly file: string;
  readonly problems: readonly ConfigProblem[];
  /**
   * @param file the config file
   * @param problems at least one problem
   */
  constructor(file: string, problems: readonly ConfigProblem[]) {
    super(problems.map((p) => `${file}: ${p.key || "(top level)"}: ${p.problem}`).join("\n") || `${file}: (top level): is invalid`);
    this.name = "ConfigError";
    this.key = problems[0]?.key ?? "";
    this.file = file;
    this.problems = problems;
  }
}

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false });
const validate = ajv.compile<BridgeConfig>(configSchema);

function join(base: string, name: string): string {
  return base ? `${base}.${name}` : name;
}

/** The dotted key path an ajv error is about (for `required`/`additionalProperties`, the key named in it). */
function keyOf(err: ErrorObject): string {
  const base = err.instancePath.replace(/^\//, "").replace(/\//g, ".");
  if (err.propertyName !== undefined) return join(base, err.propertyName);
  if (err.keyword === "required") return join(base, (err.params as { missingProperty: string }).missingProperty);
  if (err.keyword === "additionalProperties") return join(base, (err.params as { additionalProperty: string }).additionalProperty);
  return base;
}

function problemOf(err: ErrorObject): string {
  if (err.propertyName !== undefined) return `is not an allowed name: ${err.message ?? "is invalid"}`;
  switch (err.keyword) {
    case "required":
      return "is required";
    case "additionalProperties":
      return "is not a known option";
    case "enum":
      return `must be one of ${(err.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(", ")}`;
    default:
      return err.message ?? "is invalid";
  }
}

/** Every schema problem of the last `validate` call, one per key and problem. */
function schemaProblems(errors: readonly ErrorObject[]): ConfigProblem[] {
  const seen = new Set<string>();
  const out: ConfigProblem[] = [];
  for (const err of errors) {
    // `propertyNames` repeats the error of the name's own schema, which carries the name.
    if (err.keyword === "propertyNames") continue;
    const p = { key: keyOf(err), problem: problemOf(err) };
    const id = `${p.key}\n${p.problem}`;
    if (seen.has(id)) continue;
    seen.add(id);
    out.push(p);
  }
  return out;
}

/**
 * Validate a parsed config object (defaults are filled in place), resolve file paths against
 * `baseDir` and run the cross-field checks (crossChecks.ts `LOAD_STEPS`).
 * @param raw the parsed YAML document
 * @param file file name used in error messages
 * @param baseDir directory relative paths are resolved against
 * @param env environment the storage key variable (`storage.encryption_key_env`) is read from
 * @returns the validated config, every default filled in
 * @throws ConfigError listing every problem found (schema errors, then the cross-field checks
 *   of the sections that passed the schema), each naming the key and the file
 */
export function validateConfig(raw: unknown, file: string, baseDir: string, env: NodeJS.ProcessEnv = process.env): BridgeConfig {
  const doc = raw ?? {};
  if (typeof doc !== "object" || Array.isArray(doc)) throw new ConfigError(file, [{ key: "", problem: "must be a YAML mapping" }]);
  const problems = validate(doc) ? [] : schemaProblems(validate.errors ?? []);
  if (validate.errors && problems.length === 0) problems.push({ key: "", problem: "is invalid" });
  const failed = new Set(problems.map((p) => p.key.split(".")[0]));
  const cfg = doc as BridgeConfig;
  const ctx: LoadContext = { baseDir, env, report: (key, problem) => problems.push({ key, problem }) };
  for (const step of LOAD_STEPS) {
    if (step.sections.some((s) => failed.has(s))) continue;
    step.run(cfg, ctx);
  }
  if (problems.length > 0) throw new ConfigError(file, problems);
  return cfg;
}

/**
 * Read, parse and validate a YAML config file.
 * @param file path of the config file
 * @throws ConfigError when the file is missing, is not YAML, or fails validation (every problem listed)
 */
export function loadConfig(file: string): BridgeConfig {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(file, [{ key: "", problem: `cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"})` }]);
  }
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` at line ${err.linePos[0].line}` : "";
    throw new ConfigError(file, [{ key: "", problem: `is not valid YAML${where}` }]);
  }
  return validateConfig(raw, file, dirname(resolve(file)));
}
