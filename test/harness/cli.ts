/**
 * Running the real command line (`node src/main.ts …`) from tests, as a user would.
 */
import { spawn } from "node:child_process";

const MAIN = new URL("../../src/main.ts", import.meta.url).pathname;

/** What a CLI run printed and how it ended. */
export interface CliRun {
  /** Exit code; null when a signal ended it. */
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Run `matrix-email-bridge <args>` in a child process without blocking this one (a bridge
 * running in this process can still answer it).
 * @returns the exit code and output; never rejects for a non-zero exit
 * @throws when the process cannot be started
 */
export function runCliAsync(args: string[]): Promise<CliRun> {
  // NODE_TEST_CONTEXT would make the child behave as a test-runner subprocess.
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (s: string) => (stdout += s));
    child.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}
