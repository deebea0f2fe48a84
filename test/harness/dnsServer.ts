/**
 * An authoritative DNS server for tests, run as a child process (`process.execPath
 * test/harness/dnsServer.ts [--port N] [zone-json]`); test/harness/dns.ts starts it and
 * documents the zone shape ({@link Zone}) and the stdin/stdout protocol.
 *
 * - Listens on 127.0.0.1, UDP and TCP on the same port (`--port 0`, the default, picks a free
 *   one), then prints `listening <port>`.
 * - The zone comes from argv or, without one, from the first stdin line; each later stdin line
 *   is a new zone that replaces the old one (`ok`, or `error <message>` keeping the old zone),
 *   or `sync` (`ok`). Every question received is printed as `query <json>` before it is answered.
 * - No EDNS (RFC 6891): OPT records in queries are ignored, so UDP answers are limited to 512
 *   bytes (RFC 1035 §4.2.1); a longer answer is sent truncated (TC, question only) and clients
 *   retry over TCP, where messages carry a 2-byte length prefix (RFC 1035 §4.2.2).
 * - Exits when stdin closes. An invalid initial zone or a port that cannot be bound: message
 *   on stderr, exit code 2.
 */
import { createSocket } from "node:dgram";
import type { Socket as UdpSocket } from "node:dgram";
import { createServer, isIP } from "node:net";
import type { Server, Socket } from "node:net";
import { createInterface } from "node:readline";
import dnsPacket from "dns-packet";
import type { Answer, DecodedPacket, Packet } from "dns-packet";
import type { LoggedQuery, Zone, ZoneRecordSet } from "./dns.ts";

/** TTL of every answer, in seconds. */
const TTL = 300;
/** Largest UDP message without EDNS, in bytes (RFC 1035 §4.2.1). */
const UDP_MAX = 512;
/** Longest CNAME chain chased inside the zone. */
const CNAME_CHAIN_MAX = 8;
const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4 } as const;

/** The zone in the form answers are built from: names normalized, TXT split into byte strings. */
interface LoadedZone {
  records: Map<string, ZoneRecordSet>;
  /** TXT and SPF records as character-strings, by name. */
  txt: Map<string, { TXT: Buffer[][]; SPF: Buffer[][] }>;
  /** Every proper suffix of a name in `records` (empty non-terminals). */
  ancestors: Set<string>;
  timeout: Set<string>;
  timeoutNoData: Set<string>;
  servfail: Set<string>;
}

const RECORD_TYPES = new Set(["A", "AAAA", "MX", "TXT", "SPF", "PTR", "CNAME", "NS"]);

function norm(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

/**
 * Check and index a zone.
 * @throws Error saying what is wrong (unknown type, bad address, bad MX, a character-string
 *   over 255 bytes, a list that is not a list of strings)
 */
function loadZone(zone: Zone): LoadedZone {
  if (!zone || typeof zone !== "object" || !zone.records || typeof zone.records !== "object") {
    throw new Error('zone must be an object with "records"');
  }
  const out: LoadedZone = {
    records: new Map(),
    txt: new Map(),
    ancestors: new Set(),
    timeout: new Set(),
    timeoutNoData: new Set(),
    servfail: new Set(),
  };
  for (const key of ["timeout", "timeoutNoData", "servfail"] as const) {
    const list = zone[key] ?? [];
    if (!Array.isArray(list) || list.some((n) => typeof n !== "string")) throw new Error(`"${key}" must be a list of names`);
    for (const n of list) out[key].add(norm(n));
  }
  for (const [rawName, set] of Object.entries(zone.records)) {
    const name = norm(rawName);
    const where = `records[${JSON.stringify(rawName)}]`;
    if (!set || typeof set !== "object") throw new Error(`${where} must be an object`);
    const merged: ZoneRecordSet = out.records.get(name) ?? {};
    for (const [type, list] of Object.entries(set)) {
      if (!RECORD_TYPES.has(type)) throw new Error(`${where}: unsupported type ${type}`);
      if (!Array.isArray(list)) throw new Error(`${where}.${type} must be a list`);
      for (const v of list as unknown[]) {
        if (type === "A" && isIP(String(v)) !== 4) throw new Error(`${where}.A: not an IPv4 address: ${JSON.stringify(v)}`);
        if (type === "AAAA" && isIP(String(v)) !== 6) throw new Error(`${where}.AAAA: not an IPv6 address: ${JSON.stringify(v)}`);
        if (type === "MX") {
          const mx = v as { exchange?: unknown; priority?: unknown };
          if (typeof mx?.exchange !== "string" || !Number.isInteger(mx.priority) || (mx.priority as number) < 0 || (mx.priority as number) > 65535) {
            throw new Error(`${where}.MX: want {exchange: string, priority: 0-65535}, got ${JSON.stringify(v)}`);
          }
        }
        if (["PTR", "CNAME", "NS"].includes(type) && typeof v !== "string") throw new Error(`${where}.${type}: not a name: ${JSON.stringify(v)}`);
      }
      (merged as Record<string, unknown[]>)[type] = [...(((merged as Record<string, unknown[]>)[type]) ?? []), ...list];
    }
    out.records.set(name, merged);
    out.txt.set(name, {
      TXT: (merged.TXT ?? []).map((r, i) => characterStrings(r, `${where}.TXT[${i}]`)),
      SPF: (merged.SPF ?? []).map((r, i) => characterStrings(r, `${where}.SPF[${i}]`)),
    });
    const labels = name.split(".");
    for (let i = 1; i < labels.length; i++) out.ancestors.add(labels.slice(i).join("."));
  }
  return out;
}

/**
 * A TXT record's character-strings (RFC 1035 §3.3.14): a string is split into 255-byte
 * pieces, a string[] is kept as it is.
 * @throws Error when a given string is over 255 bytes, or the value is not a string or string[]
 */
function characterStrings(record: unknown, where: string): Buffer[] {
  if (typeof record === "string") {
    const bytes = Buffer.from(record, "utf8");
    if (bytes.length === 0) return [bytes];
    const parts: Buffer[] = [];
    for (let i = 0; i < bytes.length; i += 255) parts.push(bytes.subarray(i, i + 255));
    return parts;
  }
  if (Array.isArray(record) && record.every((s) => typeof s === "string")) {
    return record.map((s: string) => {
      const b = Buffer.from(s, "utf8");
      if (b.length > 255) throw new Error(`${where}: character-string of ${b.length} bytes (max 255)`);
      return b;
    });
  }
  throw new Error(`${where}: want a string or a list of strings, got ${JSON.stringify(record)}`);
}

/** RDATA of a TXT-format record without its length prefix (for type SPF, which dns-packet encodes as raw bytes). */
function txtRdata(strings: Buffer[]): Buffer {
  return Buffer.concat(strings.flatMap((s) => [Buffer.from([s.length]), s]));
}

/** The records of `type` at `name` (already normalized) as dns-packet answers. */
function recordsOf(zone: LoadedZone, ownerAsAsked: string, name: string, type: string): Answer[] {
  const set = zone.records.get(name);
  if (!set) return [];
  const base = { name: ownerAsAsked, ttl: TTL, class: "IN" as const };
  switch (type) {
    case "A":
      return (set.A ?? []).map((data) => ({ ...base, type: "A", data }));
    case "AAAA":
      return (set.AAAA ?? []).map((data) => ({ ...base, type: "AAAA", data }));
    case "MX":
      return (set.MX ?? []).map((mx) => ({ ...base, type: "MX", data: { preference: mx.priority, exchange: norm(mx.exchange) } }));
    case "TXT":
      return zone.txt.get(name)!.TXT.map((data) => ({ ...base, type: "TXT", data }));
    case "SPF":
      // dns-packet has no encoder for type 99; its rdata is TXT's (RFC 4408 §3.1.1).
      return zone.txt.get(name)!.SPF.map((s) => ({ ...base, type: "SPF", data: txtRdata(s) }) as unknown as Answer);
    case "PTR":
    case "CNAME":
    case "NS":
      return (set[type] ?? []).map((data) => ({ ...base, type, data: norm(data) }));
    default:
      return [];
  }
}

/** The SOA sent with negative answers: owned by the name's last two labels (or the name itself). */
function soaFor(name: string): Answer {
  const apex = name.split(".").slice(-2).join(".");
  return {
    name: apex,
    type: "SOA",
    class: "IN",
    ttl: TTL,
    data: {
      mname: apex ? `ns.${apex}` : "ns.invalid",
      rname: apex ? `hostmaster.${apex}` : "hostmaster.invalid",
      serial: 1,
      refresh: 3600,
      retry: 600,
      expire: 86400,
      minimum: TTL,
    },
  };
}

/**
 * The reply to one query, or null for no reply (a timeout name).
 * @param query the decoded query
 * @param transport how it came, for the log
 */
function respond(zone: LoadedZone, query: DecodedPacket, transport: "udp" | "tcp"): Packet | null {
  const rd = query.flags! & dnsPacket.RECURSION_DESIRED;
  const reply = (rcode: number, answers: Answer[] = [], authorities: Answer[] = []): Packet => ({
    id: query.id,
    type: "response",
    flags: dnsPacket.AUTHORITATIVE_ANSWER | rd | rcode,
    questions: query.questions,
    answers,
    authorities,
  });
  const opcode = (query.flags! >> 11) & 0xf;
  const question = query.questions?.[0];
  if (query.type !== "query") return null;
  if (opcode !== 0) return reply(RCODE.NOTIMP);
  if (!question || query.questions!.length !== 1) return reply(RCODE.FORMERR);

  const asked = question.name.replace(/\.$/, "");
  const entry: LoggedQuery = { transport, type: question.type, name: asked };
  process.stdout.write(`query ${JSON.stringify(entry)}\n`);

  const name = norm(asked);
  if (zone.timeout.has(name)) return null;
  if (zone.servfail.has(name)) return reply(RCODE.SERVFAIL);

  const answers: Answer[] = [];
  let owner = asked;
  let current = name;
  const seen = new Set<string>();
  for (let hop = 0; hop <= CNAME_CHAIN_MAX; hop++) {
    const set = zone.records.get(current);
    if (!set) {
      if (hop > 0) break; // CNAME to a name outside the zone: the chain is the answer
      if (zone.ancestors.has(current)) return reply(RCODE.NOERROR, [], [soaFor(current)]);
      return reply(RCODE.NXDOMAIN, [], [soaFor(current)]);
    }
    seen.add(current);
    const target = set.CNAME?.[0];
    if (target !== undefined && question.type !== "CNAME") {
      answers.push(...recordsOf(zone, owner, current, "CNAME"));
      owner = norm(target);
      current = norm(target);
      if (seen.has(current)) break; // a loop: answer with the chain so far
      continue;
    }
    answers.push(...recordsOf(zone, owner, current, question.type));
    break;
  }
  if (answers.length === 0) {
    if (zone.timeoutNoData.has(name)) return null;
    return reply(RCODE.NOERROR, [], [soaFor(name)]);
  }
  return reply(RCODE.NOERROR, answers);
}

let zone: LoadedZone | null = null;

/** Answer a UDP datagram; truncate answers over 512 bytes. */
function onUdp(socket: UdpSocket, msg: Buffer, rinfo: { address: string; port: number }): void {
  let query: DecodedPacket;
  try {
    query = dnsPacket.decode(msg);
  } catch (err) {
    process.stderr.write(`dnsServer: undecodable UDP query from ${rinfo.address}:${rinfo.port}: ${(err as Error).message}\n`);
    return;
  }
  const packet = respond(zone!, query, "udp");
  if (!packet) return;
  let out = dnsPacket.encode(packet);
  if (out.length > UDP_MAX) {
    out = dnsPacket.encode({ ...packet, flags: packet.flags! | dnsPacket.TRUNCATED_RESPONSE, answers: [], authorities: [] });
  }
  socket.send(out, rinfo.port, rinfo.address);
}

/** Answer length-prefixed queries on one TCP connection, as many as it sends. */
function onTcp(conn: Socket): void {
  let buffered = Buffer.alloc(0);
  conn.on("error", () => conn.destroy());
  conn.on("data", (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 2) {
      const len = buffered.readUInt16BE(0);
      if (buffered.length < 2 + len) return;
      const frame = buffered.subarray(0, 2 + len);
      buffered = buffered.subarray(2 + len);
      let query: DecodedPacket;
      try {
        query = dnsPacket.streamDecode(frame) as DecodedPacket;
      } catch (err) {
        process.stderr.write(`dnsServer: undecodable TCP query: ${(err as Error).message}\n`);
        conn.destroy();
        return;
      }
      const packet = respond(zone!, query, "tcp");
      if (packet) conn.write(dnsPacket.streamEncode(packet));
    }
  });
}

/** Bind UDP and TCP on the same port; for port 0, retry until both get the same free port. */
async function listen(port: number): Promise<{ udp: UdpSocket; tcp: Server; port: number }> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const udp = createSocket("udp4");
    await new Promise<void>((resolve, reject) => {
      udp.once("error", reject);
      udp.bind(port, "127.0.0.1", () => resolve());
    });
    const bound = udp.address().port;
    const tcp = createServer(onTcp);
    try {
      await new Promise<void>((resolve, reject) => {
        tcp.once("error", reject);
        tcp.listen(bound, "127.0.0.1", () => resolve());
      });
    } catch (err) {
      udp.close();
      if (port === 0 && (err as NodeJS.ErrnoException).code === "EADDRINUSE") continue;
      throw err;
    }
    udp.on("message", (msg, rinfo) => onUdp(udp, msg, rinfo));
    udp.on("error", (err) => process.stderr.write(`dnsServer: UDP error: ${err.message}\n`));
    return { udp, tcp, port: bound };
  }
  throw new Error("no port free for both UDP and TCP after 20 attempts");
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  let port = 0;
  const portAt = args.indexOf("--port");
  if (portAt >= 0) {
    port = Number(args[portAt + 1]);
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port: want 0-65535, got ${args[portAt + 1]}`);
    args.splice(portAt, 2);
  }
  const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  let initial = args[0];
  if (initial === undefined) {
    const first = await lines.next();
    if (first.done) throw new Error("stdin closed before the initial zone");
    initial = first.value;
  }
  zone = loadZone(JSON.parse(initial) as Zone);
  const { udp, tcp, port: bound } = await listen(port);
  process.stdout.write(`listening ${bound}\n`);

  for (;;) {
    const next = await lines.next();
    if (next.done) break;
    const line = next.value.trim();
    if (line === "") continue;
    if (line === "sync") {
      process.stdout.write("ok\n");
      continue;
    }
    try {
      zone = loadZone(JSON.parse(line) as Zone);
      process.stdout.write("ok\n");
    } catch (err) {
      process.stdout.write(`error ${(err as Error).message.replace(/\n/g, " ")}\n`);
    }
  }
  udp.close();
  tcp.close();
  process.exit(0);
}

main().catch((err: unknown) => {
  process.stderr.write(`dnsServer: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(2);
});
