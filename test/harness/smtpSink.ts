/**
 * A remote MTA for tests: a real smtp-server on 127.0.0.1 that accepts every
 * recipient (unless told to refuse one) and keeps what it receives.
 */
import { SMTPServer } from "smtp-server";

/** One received mail. */
export interface SinkMail {
  mailFrom: string | null;
  rcptTo: string[];
  /** The message as received, byte for byte. */
  raw: Buffer;
  /** When the message ended and the sink answered 250 (epoch ms, `Date.now()`). */
  receivedAt: number;
  /** Number (1, 2, ...) of the TCP connection that carried this transaction, in accept order. */
  connection: number;
}

/** TCP connections the sink has seen. */
export interface SinkConnections {
  /** Connections accepted so far. */
  accepted: number;
  /** Connections open now. */
  open: number;
  /** Most connections that were open at the same time. */
  maxOpen: number;
}

/** A running sink. */
export interface SmtpSink {
  port: number;
  mails: SinkMail[];
  /**
   * RCPT TO replies to give instead of 250, by address (lower case): e.g.
   * `{ code: 550, message: "5.1.1 no such user" }` or `{ code: 451, message: "4.3.0 try later" }`.
   */
  refuse: Map<string, { code: number; message: string }>;
  /** Replies to give to the next MAIL FROM commands instead of 250, one per command, in order (a 421 also closes the connection). */
  refuseMailFrom: { code: number; message: string }[];
  /** Connection counters, updated as clients connect and disconnect. */
  connections: SinkConnections;
  /** Close every open client connection at once, without a reply (as a crash or an idle cut-off would); returns how many. */
  dropConnections(): number;
  /** Wait (polling every 50 ms) for a mail matching `predicate`; throws after `timeoutMs` listing what came. */
  waitForMail(predicate: (m: SinkMail) => boolean, timeoutMs?: number): Promise<SinkMail>;
  stop(): Promise<void>;
}

/**
 * Start a sink on 127.0.0.1, on `port` (default: a free port; a fixed one to restart a stopped sink).
 * `closeTimeoutMs`: how long `stop()` lets open connections finish before it answers them 421 and
 * closes them (smtp-server's `closeTimeout`, default 30 s).
 */
export async function startSmtpSink(port = 0, opts: { closeTimeoutMs?: number } = {}): Promise<SmtpSink> {
  const mails: SinkMail[] = [];
  const refuse = new Map<string, { code: number; message: string }>();
  const refuseMailFrom: { code: number; message: string }[] = [];
  const connections: SinkConnections = { accepted: 0, open: 0, maxOpen: 0 };
  /** smtp-server session id → connection number. */
  const connectionOf = new Map<string, number>();
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ["AUTH"],
    logger: false,
    ...(opts.closeTimeoutMs !== undefined ? { closeTimeout: opts.closeTimeoutMs } : {}),
    onConnect(session, callback) {
      connections.accepted++;
      connections.open++;
      connections.maxOpen = Math.max(connections.maxOpen, connections.open);
      connectionOf.set(session.id, connections.accepted);
      callback();
    },
    onClose(session) {
      if (!connectionOf.delete(session.id)) return;
      connections.open--;
    },
    onMailFrom(_address, _session, callback) {
      const rule = refuseMailFrom.shift();
      if (!rule) return callback();
      callback(Object.assign(new Error(rule.message), { responseCode: rule.code }));
    },
    onRcptTo(address, _session, callback) {
      const rule = refuse.get(address.address.toLowerCase());
      if (!rule) return callback();
      callback(Object.assign(new Error(rule.message), { responseCode: rule.code }));
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        const from = session.envelope.mailFrom;
        mails.push({
          mailFrom: from ? from.address : null,
          rcptTo: session.envelope.rcptTo.map((r) => r.address),
          raw: Buffer.concat(chunks),
          receivedAt: Date.now(),
          connection: connectionOf.get(session.id) ?? 0,
        });
        callback();
      });
    },
  });
  await new Promise<void>((resolve, reject) => {
    server.server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve());
  });
  const boundPort = (server.server.address() as { port: number }).port;
  return {
    port: boundPort,
    mails,
    refuse,
    refuseMailFrom,
    connections,
    dropConnections() {
      const open = [...(server.connections as Set<{ _socket?: { destroy(): void } }>)];
      // smtp-server keeps the (TLS, after STARTTLS) socket of a connection in `_socket`.
      for (const c of open) c._socket?.destroy();
      return open.length;
    },
    async waitForMail(predicate, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = mails.find(predicate);
        if (hit) return hit;
        if (Date.now() > deadline) {
          throw new Error(`no matching mail within ${timeoutMs} ms; got ${mails.length}: ${mails.map((m) => `${m.mailFrom} -> ${m.rcptTo.join(",")}`).join("; ")}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
