/**
 * The limits the inbound SMTP listener enforces, as small self-contained parts the listener
 * wires together (see `SmtpListener.ts`):
 *
 * - {@link LIMIT_DEFAULTS}: the default of every `smtp.*` limit (the schema repeats them;
 *   test/unit/limits.test.ts checks both agree);
 * - {@link clientKey}: which connections and messages count as one client (an IPv4 address,
 *   or an IPv6 /64);
 * - {@link ConnectionLimiter}: concurrent connections, in total and per client;
 * - {@link RateLimiter}: events per key per time window (messages per client and per sender
 *   domain), with bounded memory;
 * - {@link MessageInspector}: the checks on the message bytes while DATA streams in (header
 *   section size, Received-header hop count, MIME part count and nesting depth).
 *
 * The replies for crossed limits are {@link SmtpReply} values from `rejections.ts`.
 */
import type { Transform } from "node:stream";
import { Splitter } from "@zone-eu/mailsplit";
import type { SplitterChunk } from "@zone-eu/mailsplit";
import type { SmtpConfig } from "../../config/schema.ts";
import { reverseName } from "../dns.ts";
import { Rejections } from "./rejections.ts";
import type { SmtpReply } from "./rejections.ts";

/** The `smtp.*` keys that have a default here (all of them optional for {@link SmtpListener}). */
export type SmtpLimitKey =
  | "max_connections_per_ip"
  | "max_recipients"
  | "rate_window_ms"
  | "max_messages_per_ip"
  | "max_messages_per_sender_domain"
  | "max_header_bytes"
  | "max_mime_parts"
  | "max_mime_depth"
  | "max_received_headers"
  | "command_timeout_ms"
  | "data_timeout_ms"
  | "dnsbl_zones"
  | "require_tls";

/**
 * Defaults of the listener's limits, as a homeserver admin would expect from a mature MTA
 * (Postfix's values where it has one). The config schema (`src/config/schema.ts`, `smtp`)
 * carries the same numbers as its defaults.
 */
export const LIMIT_DEFAULTS: Readonly<Pick<SmtpConfig, SmtpLimitKey>> = Object.freeze({
  /** Concurrent connections per client (Postfix `smtpd_client_connection_count_limit` is 50). */
  max_connections_per_ip: 20,
  /** RCPT TO per message; RFC 5321 §4.5.3.1.8 requires at least 100. */
  max_recipients: 100,
  /** Window of the message rate limits, in ms (Postfix `anvil_rate_time_unit`: 60 s). */
  rate_window_ms: 60_000,
  /** MAIL FROM per client per window; 0 turns it off. */
  max_messages_per_ip: 120,
  /** MAIL FROM per sender domain per window; 0 turns it off. */
  max_messages_per_sender_domain: 300,
  /** Header section size, in bytes (Postfix `header_size_limit` is 102400). */
  max_header_bytes: 65_536,
  /** MIME entities per message, the message itself included. */
  max_mime_parts: 500,
  /** MIME nesting levels below the message (Postfix `mime_nesting_limit` is 100). */
  max_mime_depth: 20,
  /** Received headers (Postfix `hopcount_limit`: 50). */
  max_received_headers: 50,
  /** Longest wait for one command line, in ms (RFC 5321 §4.5.3.2.7: at least 5 minutes). */
  command_timeout_ms: 300_000,
  /** Longest DATA phase, from 354 to the final dot, in ms (RFC 5321 §4.5.3.2.6: 10 minutes). */
  data_timeout_ms: 600_000,
  /** DNS blocklist zones asked at connect; empty: none. */
  dnsbl_zones: [],
  /** Refuse MAIL before STARTTLS (RFC 3207 §4 says a public MX must not). */
  require_tls: false,
});

/**
 * The key under which a client's connections and messages are counted: the IPv4 address,
 * or the /64 prefix of an IPv6 address (one subscriber usually holds a whole /64, RFC 6177),
 * written `xxxx:xxxx:xxxx:xxxx::/64`. IPv4-mapped IPv6 addresses count as their IPv4 address.
 *
 * @param ip the client address as smtp-server reports it
 * @returns the key; `ip` itself when it is not an IP address (never throws)
 */
export function clientKey(ip: string): string {
  let name: string;
  try {
    name = reverseName(ip);
  } catch {
    return ip;
  }
  if (name.endsWith(".in-addr.arpa")) return name.slice(0, -".in-addr.arpa".length).split(".").reverse().join(".");
  const hex = name.slice(0, -".ip6.arpa".length).split(".").reverse().join("");
  return `${hex.slice(0, 4)}:${hex.slice(4, 8)}:${hex.slice(8, 12)}:${hex.slice(12, 16)}::/64`;
}

/** Why {@link ConnectionLimiter.tryAcquire} refused a connection. */
export type ConnectionRefusal = "total" | "client";

/**
 * Counts open connections, in total and per client key, against two limits.
 * Not time based: every successful {@link tryAcquire} must be paired with one {@link release}.
 */
export class ConnectionLimiter {
  readonly #maxTotal: number;
  readonly #maxPerClient: number;
  readonly #perClient = new Map<string, number>();
  #total = 0;

  /**
   * @param maxTotal most open connections (`smtp.max_clients`)
   * @param maxPerClient most open connections per client key (`smtp.max_connections_per_ip`)
   * @throws RangeError when a limit is not a positive integer
   */
  constructor(maxTotal: number, maxPerClient: number) {
    for (const [name, v] of [["maxTotal", maxTotal], ["maxPerClient", maxPerClient]] as const) {
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, got ${v}`);
    }
    this.#maxTotal = maxTotal;
    this.#maxPerClient = maxPerClient;
  }

  /**
   * Take a slot for `key`.
   * @returns null when taken; `"total"` when all slots are in use, `"client"` when `key` has
   *   all of its own (nothing is taken then)
   */
  tryAcquire(key: string): ConnectionRefusal | null {
    if (this.#total >= this.#maxTotal) return "total";
    const n = this.#perClient.get(key) ?? 0;
    if (n >= this.#maxPerClient) return "client";
    this.#perClient.set(key, n + 1);
    this.#total++;
    return null;
  }

  /** Give back a slot taken for `key`; a key without slots is ignored. */
  release(key: string): void {
    const n = this.#perClient.get(key);
    if (n === undefined) return;
    if (n <= 1) this.#perClient.delete(key);
    else this.#perClient.set(key, n - 1);
    this.#total--;
  }

  /** Open connections in total. */
  get total(): number {
    return this.#total;
  }

  /** Open connections of `key`. */
  count(key: string): number {
    return this.#perClient.get(key) ?? 0;
  }
}

/** Options of {@link RateLimiter}. */
export interface RateLimiterOptions {
  /** Most events per key per window; 0 admits everything (the limit is off). */
  limit: number;
  /** Window length, in ms. */
  windowMs: number;
  /** Most keys kept; past it the least recently started keys are forgotten. Default 100000. */
  maxKeys?: number;
  /** Clock, epoch ms (tests). */
  now?: () => number;
}

interface RateEntry {
  /** Index of the window `current` counts: floor(time / windowMs). */
  window: number;
  current: number;
  previous: number;
}

/**
 * Events per key per time window, as a sliding-window counter: the count of the current
 * fixed window plus the previous window's count weighted by how much of it still overlaps
 * the sliding window. That bounds a burst across a window edge to about the limit, unlike a
 * plain fixed window (which lets 2× through), with two numbers per key.
 *
 * Every {@link hit} counts, admitted or not: a client that keeps hammering while over the
 * limit stays over it (as Postfix's anvil counts requests "regardless of whether or not
 * Postfix actually accepts" them).
 *
 * Memory is bounded: keys idle for two windows are pruned (at most once per window, on a
 * hit), and at most `maxKeys` keys are kept.
 */
export class RateLimiter {
  readonly #limit: number;
  readonly #windowMs: number;
  readonly #maxKeys: number;
  readonly #now: () => number;
  readonly #entries = new Map<string, RateEntry>();
  #lastPrune = -1;

  /**
   * @param opts see {@link RateLimiterOptions}
   * @throws RangeError when `limit` is negative or not an integer, `windowMs` is not positive,
   *   or `maxKeys` is below 1
   */
  constructor(opts: RateLimiterOptions) {
    if (!Number.isInteger(opts.limit) || opts.limit < 0) throw new RangeError(`limit must be a non-negative integer, got ${opts.limit}`);
    if (!(opts.windowMs > 0)) throw new RangeError(`windowMs must be positive, got ${opts.windowMs}`);
    const maxKeys = opts.maxKeys ?? 100_000;
    if (!Number.isInteger(maxKeys) || maxKeys < 1) throw new RangeError(`maxKeys must be a positive integer, got ${maxKeys}`);
    this.#limit = opts.limit;
    this.#windowMs = opts.windowMs;
    this.#maxKeys = maxKeys;
    this.#now = opts.now ?? Date.now;
  }

  /**
   * Count one event for `key`.
   * @returns true when the event is within the limit, false when it is over (it still counts)
   */
  hit(key: string): boolean {
    if (this.#limit === 0) return true;
    const now = this.#now();
    const window = Math.floor(now / this.#windowMs);
    this.#prune(window);
    let e = this.#entries.get(key);
    if (!e) {
      while (this.#entries.size >= this.#maxKeys) {
        const oldest = this.#entries.keys().next().value;
        if (oldest === undefined) break;
        this.#entries.delete(oldest);
      }
      e = { window, current: 0, previous: 0 };
      this.#entries.set(key, e);
    } else if (e.window !== window) {
      e.previous = e.window === window - 1 ? e.current : 0;
      e.current = 0;
      e.window = window;
      // Keep the map in order of window start, so eviction takes the stalest key.
      this.#entries.delete(key);
      this.#entries.set(key, e);
    }
    e.current++;
    const overlap = 1 - (now - window * this.#windowMs) / this.#windowMs;
    return e.previous * overlap + e.current <= this.#limit;
  }

  /** Keys currently kept. */
  get size(): number {
    return this.#entries.size;
  }

  /** Forget keys whose last event is two windows old; runs at most once per window. */
  #prune(window: number): void {
    if (window === this.#lastPrune) return;
    this.#lastPrune = window;
    for (const [key, e] of this.#entries) {
      if (e.window < window - 1) this.#entries.delete(key);
    }
  }
}

/** The limits {@link MessageInspector} checks. */
export interface MessageLimits {
  /** Largest header section (bytes before the first empty line), in bytes. */
  maxHeaderBytes: number;
  /** Most `Received:` header fields in the message's own header section. */
  maxReceivedHeaders: number;
  /** Most MIME entities, the message itself included. */
  maxMimeParts: number;
  /** Deepest MIME nesting: levels of entities below the message (the message is level 0). */
  maxMimeDepth: number;
}

/** What {@link MessageInspector} measured, for logs. */
export interface MessageStats {
  /** Header section size so far, in bytes (capped a little over the limit). */
  headerBytes: number;
  /** Received header fields counted (once the header section is complete). */
  receivedHeaders: number;
  /** MIME entities seen. */
  mimeParts: number;
  /** Deepest nesting level seen. */
  mimeDepth: number;
}

const LF = 0x0a;
const CR = 0x0d;

/**
 * Streams a message's bytes (as DATA delivers them, dot-unstuffed) through the checks of
 * {@link MessageLimits}, without keeping a copy of the message:
 *
 * - header section size: the bytes up to the first empty line (RFC 5322 §2.1; a bare-LF
 *   empty line counts too); over → `552 5.3.4` ({@link Rejections.headerTooBig});
 * - hop count: `Received:` fields in that header section (RFC 5321 §6.3 loop detection);
 *   more than the limit → `554 5.4.6` ({@link Rejections.loopDetected});
 * - MIME structure, counted with mailsplit's streaming splitter (the one mailparser uses,
 *   so the parts counted are the parts the parser will see): more entities than the limit →
 *   `552 5.6.0`; an entity nested deeper → `554 5.6.0`. A part's own header section over the
 *   header limit also gives `552 5.3.4`.
 *
 * The first limit crossed decides; after it nothing more is examined (writes become no-ops),
 * so the caller can keep draining the SMTP stream cheaply.
 *
 * From the same split it keeps the message's {@link skeleton}: the message with the contents of
 * its binary leaf parts left out, for a parse at DATA time that needs every header and text but
 * no attachment's bytes.
 */
export class MessageInspector {
  readonly #limits: MessageLimits;
  #violation: SmtpReply | null = null;
  #splitter: Splitter | null;
  #splitterDone: Promise<void>;
  #splitterError: Error | null = null;
  // header section scan
  #headerDone = false;
  #headerChunks: Buffer[] = [];
  #headerBytes = 0;
  #atLineStart = true;
  #crAtLineStart = false;
  #received = 0;
  // the skeleton: the split message without binary parts' contents
  #skeleton: Buffer[] = [];
  #skeletonComplete = false;
  // MIME structure
  #parts = 0;
  #maxDepthSeen = 0;
  readonly #depth = new WeakMap<object, number>();

  /**
   * @param limits see {@link MessageLimits}
   * @throws RangeError when a limit is not a positive integer
   */
  constructor(limits: MessageLimits) {
    for (const [name, v] of Object.entries(limits)) {
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, got ${String(v)}`);
    }
    this.#limits = limits;
    const splitter = new Splitter({
      // The root's header section is measured by the scan below; this bounds parts' headers.
      // +4: mailsplit counts the empty line that ends the section.
      maxHeadSize: limits.maxHeaderBytes + 4,
      // Our own count stops the splitter first; this is only its safety net.
      maxChildNodes: limits.maxMimeParts + 10,
    });
    this.#splitter = splitter;
    // mailsplit's typings declare only "data"; the other events are Transform's.
    const stream = splitter as unknown as Transform;
    this.#splitterDone = new Promise<void>((resolve) => {
      splitter.on("data", (chunk: SplitterChunk) => {
        if (chunk.type === "node") {
          this.#onNode(chunk);
          this.#skeleton.push(chunk.getHeaders());
        } else if (chunk.type === "data" || (chunk.type === "body" && !isBinaryLeaf(chunk.node))) {
          this.#skeleton.push(chunk.value);
        }
      });
      stream.once("error", (err: Error & { code?: string }) => {
        if (err.code === "EMAXLEN" && /head/i.test(err.message)) this.#fail(Rejections.headerTooBig(limits.maxHeaderBytes));
        else this.#splitterError = err;
        resolve();
      });
      stream.once("end", () => {
        this.#skeletonComplete = true;
        resolve();
      });
      stream.once("close", () => resolve());
    });
  }

  /** The reply for the first limit crossed so far, or null. */
  get violation(): SmtpReply | null {
    return this.#violation;
  }

  /**
   * An error of the MIME splitter other than a crossed limit (MIME structure is then no longer
   * counted; the message is not refused for it here, the parser decides later). Null if none.
   */
  get splitterError(): Error | null {
    return this.#splitterError;
  }

  /**
   * After {@link finish}: the message as split, with the content of every binary leaf part
   * (a type other than text/*, message/* and multipart/*: images, applications, audio, …) left
   * out and its header section kept. Parsing it gives the same headers, texts and list of
   * attachments (names, types, Content-IDs; sizes 0) as parsing the message, without decoding
   * any attachment. Null when the splitter did not finish (a limit, a splitter error, abort).
   */
  get skeleton(): Buffer | null {
    return this.#skeletonComplete && !this.#violation && !this.#splitterError ? Buffer.concat(this.#skeleton) : null;
  }

  /** What was measured so far. */
  get stats(): MessageStats {
    return { headerBytes: this.#headerBytes, receivedHeaders: this.#received, mimeParts: this.#parts, mimeDepth: this.#maxDepthSeen };
  }

  /**
   * Examine the next bytes of the message. A no-op once a limit was crossed or after
   * {@link abort}.
   * @param chunk message bytes, in order
   */
  write(chunk: Buffer): void {
    if (this.#violation || chunk.length === 0) return;
    if (!this.#headerDone) this.#scanHeader(chunk);
    if (this.#violation) return;
    const splitter = this.#splitter;
    if (splitter && !this.#splitterError && !splitter.destroyed) splitter.write(chunk);
  }

  /**
   * The message is complete: finish the checks.
   * @returns the reply for the first limit crossed, or null when the message is within all
   *   limits. Never rejects.
   */
  async finish(): Promise<SmtpReply | null> {
    if (!this.#violation && !this.#headerDone) this.#endHeader();
    const splitter = this.#splitter;
    if (splitter && !splitter.destroyed && !this.#violation && !this.#splitterError) splitter.end();
    await this.#splitterDone;
    this.#stopSplitter();
    return this.#violation;
  }

  /** Stop examining (the message will not be used): releases the splitter. */
  abort(): void {
    this.#stopSplitter();
  }

  #fail(reply: SmtpReply): void {
    if (this.#violation) return;
    this.#violation = reply;
    this.#headerChunks = [];
    this.#skeleton = [];
    this.#stopSplitter();
  }

  #stopSplitter(): void {
    const splitter = this.#splitter;
    this.#splitter = null;
    if (splitter && !splitter.destroyed) splitter.destroy();
  }

  /** Find the empty line that ends the header section; measure and keep the section (up to the limit). */
  #scanHeader(chunk: Buffer): void {
    let end = -1;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i];
      if (this.#atLineStart) {
        if (b === LF) {
          // An empty line: LF or CR LF at the start of a line.
          end = i;
          break;
        }
        if (b === CR && !this.#crAtLineStart) {
          this.#crAtLineStart = true;
          continue;
        }
        this.#atLineStart = false;
        this.#crAtLineStart = false;
      }
      if (b === LF) this.#atLineStart = true;
    }
    const upto = end >= 0 ? end : chunk.length;
    this.#headerBytes += upto;
    // A CR at the start of the line so far belongs to the empty line (or may, if undecided).
    const pendingCr = this.#crAtLineStart ? 1 : 0;
    if (end >= 0) this.#headerBytes -= pendingCr;
    if (this.#headerBytes - (end >= 0 ? 0 : pendingCr) > this.#limits.maxHeaderBytes) {
      this.#fail(Rejections.headerTooBig(this.#limits.maxHeaderBytes));
      return;
    }
    if (upto > 0) this.#headerChunks.push(chunk.subarray(0, upto));
    if (end >= 0) this.#endHeader();
  }

  /** The header section is complete (or the message ended without a body): count Received fields. */
  #endHeader(): void {
    this.#headerDone = true;
    const header = Buffer.concat(this.#headerChunks);
    this.#headerChunks = [];
    // Field names are ASCII (RFC 5322 §2.2); latin1 keeps one char per byte. Folded
    // continuation lines start with white space, so only field starts match.
    const matches = header.toString("latin1").match(/(?:^|\n)received[ \t]*:/gi);
    this.#received = matches ? matches.length : 0;
    if (this.#received > this.#limits.maxReceivedHeaders) this.#fail(Rejections.loopDetected(this.#limits.maxReceivedHeaders));
  }

  #onNode(node: Extract<SplitterChunk, { type: "node" }>): void {
    if (this.#violation) return;
    this.#parts++;
    const parent = node.parentNode;
    const depth = parent ? (this.#depth.get(parent) ?? this.#walkDepth(parent)) + 1 : 0;
    this.#depth.set(node, depth);
    if (depth > this.#maxDepthSeen) this.#maxDepthSeen = depth;
    if (depth > this.#limits.maxMimeDepth) this.#fail(Rejections.mimeTooDeep(this.#limits.maxMimeDepth));
    else if (this.#parts > this.#limits.maxMimeParts) this.#fail(Rejections.tooManyMimeParts(this.#limits.maxMimeParts));
  }

  /** Depth of a node not seen as a chunk (walks up; bounded by the depth limit). */
  #walkDepth(node: { parentNode: unknown }): number {
    let depth = 0;
    let p = node.parentNode as { parentNode: unknown } | false;
    while (p && depth <= this.#limits.maxMimeDepth + 1) {
      depth++;
      p = p.parentNode as { parentNode: unknown } | false;
    }
    return depth;
  }
}

/**
 * Whether a split node is a leaf whose content is binary: not multipart, not a message
 * (message/rfc822 and the like are split further or are small reports), not text/* (a node
 * without a Content-Type is text/plain, RFC 2045 §5.2).
 */
function isBinaryLeaf(node: { multipart?: unknown; contentType?: unknown }): boolean {
  if (node.multipart) return false;
  const type = typeof node.contentType === "string" ? node.contentType : "";
  const main = type.slice(0, type.indexOf("/"));
  return type !== "" && main !== "text" && main !== "message" && main !== "multipart";
}
