/**
 * Test harness: a real authoritative DNS server on loopback (test/harness/dnsServer.ts, run
 * as a child process), serving a zone the test gives and can replace at any time.
 *
 * The project's rule: code under test resolves names over the wire, through its real
 * resolver (src/mail/dns.ts, c-ares), against this server. Nothing inside the bridge's
 * process is stubbed.
 *
 * Protocol with the child (line based, UTF-8):
 * - stdin: the first line is the initial zone (JSON, {@link Zone}) unless one was given as
 *   argv; every later line is either a new zone (replaces the old one, answered `ok`) or the
 *   word `sync` (answered `ok`; used to make sure every earlier stdout line was read).
 * - stdout: `listening <port>` once UDP and TCP are bound; `ok` / `error <message>` for each
 *   stdin line after that; `query <json>` ({@link LoggedQuery}) for each question received.
 * The child exits when its stdin closes, so it never outlives the test process.
 */
import { spawn } from "node:child_process";
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import type { Socket } from "node:net";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/**
 * The records of one name. Every list is the record set of that type; names inside data
 * (MX exchange, PTR, CNAME, NS) may carry a trailing dot, which is ignored.
 */
export interface ZoneRecordSet {
  /** IPv4 addresses (dotted quad). */
  A?: string[];
  /** IPv6 addresses (any textual form). */
  AAAA?: string[];
  /** Mail exchangers (RFC 1035 §3.3.9). */
  MX?: { exchange: string; priority: number }[];
  /**
   * TXT records. A string is one record: UTF-8 encoded and, when longer than 255 bytes, split
   * into 255-byte character-strings (as a zone file would have to write it). A string[] is one
   * record whose character-strings are exactly those strings (each at most 255 bytes UTF-8;
   * an empty array is a record with no strings, which RFC 1035 does not allow but the RFC 7208
   * suite uses).
   */
  TXT?: (string | string[])[];
  /** Type SPF (99, RFC 4408 §3.1.1; obsolete since RFC 7208), same forms as {@link TXT}. */
  SPF?: (string | string[])[];
  /** Reverse-zone targets (host names). */
  PTR?: string[];
  /**
   * Canonical name. When a name has a CNAME, every query for it (any type but CNAME) is
   * answered with the CNAME, followed by the answer for the target when the target is in the
   * zone (chased along the chain; a loop stops the chase).
   */
  CNAME?: string[];
  /** Name servers (host names). */
  NS?: string[];
}

/**
 * What the test server serves. Names are case-insensitive and a trailing dot is ignored.
 *
 * Answers: the records of the asked type (TTL 300 s, AA set). A name that is in `records`
 * but has nothing of the asked type (or the type is one the server does not serve), and a
 * name that only exists because a longer name ends in it (an empty non-terminal, RFC 8020),
 * get NOERROR with no answers and an SOA in the authority section (NODATA, RFC 2308 §2.2).
 * Any other name gets NXDOMAIN (also with the SOA).
 */
export interface Zone {
  /** Records by owner name. */
  records: Record<string, ZoneRecordSet>;
  /** Names whose queries (any type, UDP or TCP) get no reply at all, so clients time out. */
  timeout?: string[];
  /**
   * Names whose NODATA answers are replaced by no reply: queries for a type the name has
   * records of are answered, every other query times out. This is the RFC 7208 test suite's
   * bare `TIMEOUT` entry after a name's records.
   */
  timeoutNoData?: string[];
  /** Names whose queries are answered SERVFAIL (rcode 2). */
  servfail?: string[];
}

/** One question the server received, as it logs it. */
export interface LoggedQuery {
  /** How it came: `udp`, or `tcp` (for instance after a truncated UDP answer). */
  transport: "udp" | "tcp";
  /** Record type mnemonic as dns-packet names it (`TXT`, `A`, ...; `UNKNOWN_n` for others). */
  type: string;
  /** The name as asked (case preserved, no trailing dot). */
  name: string;
}

/** A running test DNS server. */
export interface TestDns {
  /** The port it listens on, UDP and TCP, on 127.0.0.1. */
  port: number;
  /** `127.0.0.1:<port>`: a `dns.nameservers` entry. */
  nameserver: string;
  /**
   * Replace the zone. Resolves once the server answers from the new zone.
   * @throws Error with the server's message when the zone is invalid (the old zone stays),
   *   or when the server has exited
   */
  setZone(zone: Zone): Promise<void>;
  /**
   * The questions received since the previous call (or the start), oldest first, and forget
   * them. Waits until the server has logged everything it received before the call.
   * @throws Error when the server has exited
   */
  takeQueries(): Promise<LoggedQuery[]>;
  /** Stop the server (closes its stdin; SIGKILL after 2 s). Idempotent. */
  stop(): Promise<void>;
}

/** Longest wait for `listening <port>`, in ms. */
const START_TIMEOUT_MS = 10_000;
/** How much of the server's stderr is kept for error messages, in characters. */
const STDERR_KEEP = 8_000;

const SERVER_SCRIPT = fileURLToPath(new URL("./dnsServer.ts", import.meta.url));

/**
 * Start a DNS server for `zone` on a free loopback port.
 *
 * The child is unreferenced while no request to it is pending, so a test that forgets
 * `stop()` does not hang its process; it is killed at process exit in any case.
 *
 * @param zone the initial zone (see {@link Zone})
 * @returns the running server
 * @throws Error with the server's stderr when it exits, rejects the zone, or does not print
 *   `listening <port>` within 10 s
 */
export async function startDnsServer(zone: Zone): Promise<TestDns> {
  const child: ChildProcessWithoutNullStreams = spawn(process.execPath, [SERVER_SCRIPT], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (s: string) => {
    stderr = (stderr + s).slice(-STDERR_KEEP);
  });

  const killAtExit = (): void => {
    child.kill("SIGKILL");
  };
  process.on("exit", killAtExit);

  /** Requests waiting for `ok`/`error`, oldest first; the first is the start-up itself. */
  const pending: { resolve: (line: string) => void; reject: (err: Error) => void }[] = [];
  const log: LoggedQuery[] = [];
  let exited: Error | null = null;
  let port = 0;

  // Keep the child referenced only while something waits for it.
  const reference = (): void => {
    const pipes = [child.stdin, child.stdout, child.stderr] as unknown as Socket[];
    if (pending.length > 0) {
      child.ref();
      for (const p of pipes) p.ref();
    } else {
      child.unref();
      for (const p of pipes) p.unref();
    }
  };

  const exitedError = (what: string): Error =>
    new Error(`test DNS server ${what}${stderr ? `; stderr:\n${stderr}` : " (no stderr)"}`);

  child.on("exit", (code, signal) => {
    exited = exitedError(`exited (code ${code}, signal ${signal})`);
    process.off("exit", killAtExit);
    for (const p of pending.splice(0)) p.reject(exited);
    reference();
  });
  child.on("error", (err) => {
    exited = exitedError(`could not be run: ${err.message}`);
    for (const p of pending.splice(0)) p.reject(exited);
    reference();
  });
  // A write to a dead child fails asynchronously; the exit handler reports it.
  child.stdin.on("error", () => undefined);

  createInterface({ input: child.stdout }).on("line", (line) => {
    if (line.startsWith("query ")) {
      log.push(JSON.parse(line.slice("query ".length)) as LoggedQuery);
      return;
    }
    const waiter = pending.shift();
    reference();
    if (!waiter) {
      stderr += `\n(unexpected stdout line: ${line})`;
      return;
    }
    if (line.startsWith("error ")) waiter.reject(new Error(`test DNS server: ${line.slice("error ".length)}`));
    else waiter.resolve(line);
  });

  const request = (line: string): Promise<string> => {
    if (exited) return Promise.reject(exited);
    return new Promise<string>((resolve, reject) => {
      pending.push({ resolve, reject });
      reference();
      child.stdin.write(line + "\n");
    });
  };

  const started = request(JSON.stringify(zone));
  let timer: NodeJS.Timeout | undefined;
  try {
    const line = await Promise.race([
      started,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(exitedError(`did not print "listening <port>" within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      }),
    ]);
    const m = /^listening (\d+)$/.exec(line);
    if (!m) throw exitedError(`printed ${JSON.stringify(line)} instead of "listening <port>"`);
    port = Number(m[1]);
  } catch (err) {
    child.kill("SIGKILL");
    throw err;
  } finally {
    clearTimeout(timer);
  }

  let stopping: Promise<void> | null = null;
  return {
    port,
    nameserver: `127.0.0.1:${port}`,
    async setZone(next) {
      const line = await request(JSON.stringify(next));
      if (line !== "ok") throw new Error(`test DNS server answered ${JSON.stringify(line)} to a zone`);
    },
    async takeQueries() {
      const line = await request("sync");
      if (line !== "ok") throw new Error(`test DNS server answered ${JSON.stringify(line)} to sync`);
      return log.splice(0);
    },
    stop() {
      stopping ??= new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        const kill = setTimeout(() => child.kill("SIGKILL"), 2_000);
        child.once("exit", () => {
          clearTimeout(kill);
          resolve();
        });
        child.stdin.end();
      });
      return stopping;
    },
  };
}

/** Record types {@link zoneFromZoneFile} reads. */
const ZONE_FILE_TYPES = new Set(["A", "AAAA", "MX", "TXT", "SPF", "PTR", "CNAME", "NS"]);

/**
 * Read zone-file lines (RFC 1035 §5.1) as the bridge's `dns-records` command prints them
 * (src/mail/outbound/dnsRecords.ts `formatZone`) into {@link Zone} records.
 *
 * Each record is on one line: `owner. [ttl] [IN] TYPE data`. Owners must be absolute (end in
 * `.`); `;` starts a comment (outside quotes); blank lines are skipped. TXT/SPF data is one or
 * more character-strings, quoted (`\"`, `\\` and `\DDD` escapes) or bare, kept as given (a
 * string[] record). MX data is `<priority> <exchange>`. TTLs are read and dropped (the server
 * answers with TTL 300).
 *
 * @param text the zone text
 * @returns records by lower-cased owner name without trailing dot
 * @throws Error naming the line for a relative owner, an unknown type, a missing or malformed
 *   field, or an unterminated quote
 */
export function zoneFromZoneFile(text: string): Zone["records"] {
  const records: Zone["records"] = {};
  text.split(/\r?\n/).forEach((raw, i) => {
    const where = `zone line ${i + 1} (${JSON.stringify(raw)})`;
    const tokens = tokenizeZoneLine(raw, where);
    if (tokens.length === 0) return;
    const owner = tokens.shift()!;
    if (owner.quoted || !owner.text.endsWith(".")) throw new Error(`${where}: owner must be an absolute name ending in "."`);
    if (tokens[0] && !tokens[0].quoted && /^\d+$/.test(tokens[0].text)) tokens.shift();
    if (tokens[0] && !tokens[0].quoted && tokens[0].text.toUpperCase() === "IN") tokens.shift();
    const typeToken = tokens.shift();
    const type = typeToken?.text.toUpperCase() ?? "";
    if (!typeToken || typeToken.quoted || !ZONE_FILE_TYPES.has(type)) throw new Error(`${where}: unsupported or missing record type`);
    if (tokens.length === 0) throw new Error(`${where}: no record data`);
    const set = (records[normalizeName(owner.text)] ??= {});
    const one = (): string => {
      if (tokens.length !== 1 || tokens[0]!.quoted) throw new Error(`${where}: ${type} takes exactly one bare field`);
      return tokens[0]!.text;
    };
    switch (type) {
      case "A":
      case "AAAA":
        (set[type] ??= []).push(one());
        break;
      case "PTR":
      case "CNAME":
      case "NS":
        (set[type] ??= []).push(normalizeName(one()));
        break;
      case "MX": {
        const [prio, host, ...rest] = tokens;
        if (!prio || !host || rest.length > 0 || !/^\d+$/.test(prio.text) || Number(prio.text) > 65535) {
          throw new Error(`${where}: MX data must be "<priority 0-65535> <exchange>"`);
        }
        (set.MX ??= []).push({ priority: Number(prio.text), exchange: normalizeName(host.text) });
        break;
      }
      case "TXT":
      case "SPF":
        (set[type] ??= []).push(tokens.map((t) => t.text));
        break;
    }
  });
  return records;
}

/**
 * Merge record maps: for a name in several maps, the record lists of each type are
 * concatenated (in argument order). Names are normalized (lower case, no trailing dot).
 * @param parts record maps as in {@link Zone.records}
 * @returns a new record map; the inputs are not modified (never throws; the server checks
 *   the records when the zone is set)
 */
export function mergeZones(...parts: Zone["records"][]): Zone["records"] {
  const out: Zone["records"] = {};
  for (const part of parts) {
    for (const [name, set] of Object.entries(part)) {
      const target = (out[normalizeName(name)] ??= {});
      for (const [type, list] of Object.entries(set) as [keyof ZoneRecordSet, unknown[]][]) {
        (target as Record<string, unknown[]>)[type] = [...((target[type] as unknown[] | undefined) ?? []), ...list];
      }
    }
  }
  return out;
}

/**
 * A name as the server keys it.
 * @param name a domain name, any case, with or without trailing dot
 * @returns the name in lower case without trailing dot (never throws)
 */
export function normalizeName(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

interface ZoneToken {
  text: string;
  quoted: boolean;
}

/** Split one zone-file line into fields; a `;` outside quotes ends the line. */
function tokenizeZoneLine(line: string, where: string): ZoneToken[] {
  const tokens: ZoneToken[] = [];
  let i = 0;
  while (i < line.length) {
    const c = line[i]!;
    if (c === " " || c === "\t") {
      i++;
    } else if (c === ";") {
      break;
    } else if (c === '"') {
      const bytes: number[] = [];
      i++;
      for (;;) {
        if (i >= line.length) throw new Error(`${where}: unterminated quoted string`);
        const d = line[i]!;
        if (d === '"') {
          i++;
          break;
        }
        if (d === "\\") {
          const digits = /^\d{3}/.exec(line.slice(i + 1));
          if (digits) {
            const v = Number(digits[0]);
            if (v > 255) throw new Error(`${where}: escape \\${digits[0]} is over 255`);
            bytes.push(v);
            i += 4;
            continue;
          }
          if (i + 1 >= line.length) throw new Error(`${where}: unterminated quoted string`);
          i++;
        }
        const cp = line.codePointAt(i)!;
        const ch = String.fromCodePoint(cp);
        bytes.push(...Buffer.from(ch, "utf8"));
        i += ch.length;
      }
      tokens.push({ text: Buffer.from(bytes).toString("utf8"), quoted: true });
    } else {
      const m = /^[^\s;"]+/.exec(line.slice(i))!;
      tokens.push({ text: m[0], quoted: false });
      i += m[0].length;
    }
  }
  return tokens;
}
