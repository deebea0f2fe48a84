/**
 * `dkim-keygen`: make the DKIM private key named in the config.
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import type { BridgeConfig } from "../config/schema.ts";
import { generateDkimKey } from "../mail/outbound/dkim.ts";

/**
 * Write a new RSA-2048 key to `dkim.private_key_file` (mode 0600).
 * @param force overwrite an existing key (the published DNS record must then change too)
 * @returns the file path
 * @throws Error when the file exists and `force` is not set
 */
export function dkimKeygen(config: BridgeConfig, force: boolean): string {
  const file = config.dkim.private_key_file;
  if (existsSync(file) && !force) throw new Error(`${file} already exists; pass --force to replace it (and republish the DKIM record)`);
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, generateDkimKey().privateKeyPem, { mode: 0o600 });
  return file;
}
