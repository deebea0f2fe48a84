/**
 * Renders `config.sample.yaml` from {@link configSchema}: every option, with its
 * description as a comment and its default (or an example for required keys).
 * test/unit/config.test.ts fails when the committed sample differs from this output;
 * regenerate with `npm run generate-sample-config`.
 */
import { stringify } from "yaml";
import { configSchema } from "./schema.ts";

/** Example values for keys that have no default. */
const EXAMPLES: Record<string, unknown> = {
  "homeserver.url": "http://localhost:8008",
  "homeserver.domain": "example.org",
  "appservice.url": "http://localhost:8090",
  "mail.domain": "email.example.org",
  "smtp.hostname": "mx.example.org",
};

/** Commented examples for options whose default is empty. */
const COMMENTED: Record<string, string[]> = {
  "outbound.relay": ["relay:", "  host: smtp.example.net", "  port: 587", "  secure: false", "  username: bridge", "  password: secret"],
  "outbound.static_routes": ["static_routes:", '  example.net: "127.0.0.1:2525"'],
  "dns.nameservers": ["nameservers:", '  - "127.0.0.1:53"'],
  "permissions.admins": ["admins:", '  - "@admin:example.org"'],
  "auth.trusted_arc_sealers": ["trusted_arc_sealers:", "  - lists.example.net"],
};

interface SchemaNode {
  description?: string;
  default?: unknown;
  properties?: Record<string, SchemaNode>;
  required?: string[];
}

function scalar(key: string, value: unknown): string {
  return stringify({ [key]: value }, { lineWidth: 0 }).trimEnd();
}

/** The sample config text. */
export function renderSampleConfig(): string {
  const out: string[] = [
    "# matrix-email-bridge configuration.",
    "# Every option is listed with its default; options marked (required) have no default.",
    "# Relative paths are relative to this file's folder.",
    "",
  ];
  const root = configSchema as SchemaNode;
  for (const [section, node] of Object.entries(root.properties ?? {})) {
    out.push(`# ${node.description ?? section}`);
    out.push(`${section}:`);
    for (const [key, prop] of Object.entries(node.properties ?? {})) {
      const path = `${section}.${key}`;
      const required = node.required?.includes(key) ?? false;
      out.push(`  # ${prop.description ?? key}${required ? " (required)" : ""}`);
      const value = required ? EXAMPLES[path] : prop.default;
      out.push(...scalar(key, value ?? null).split("\n").map((l) => "  " + l));
      for (const line of COMMENTED[path] ?? []) out.push(`  #${line}`);
    }
    out.push("");
  }
  return out.join("\n");
}
