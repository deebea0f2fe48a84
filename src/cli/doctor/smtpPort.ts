/**
 * `doctor` check: the SMTP listener's address (`smtp.bind_address`:`smtp.port`) can be bound,
 * or is held by the running bridge, told by its greeting (RFC 5321 §4.2: `220 <domain> ...`;
 * the bridge's ends in `ESMTP matrix-email-bridge`).
 */
import { connect, createServer } from "node:net";
import { closeServer, connectAddress, tryListen } from "./listen.ts";
import { describeError, fail, ok, warn, type DoctorResult } from "./result.ts";

/** Inputs of {@link checkSmtpPort}. */
export interface SmtpPortInput {
  bindAddress: string;
  port: number;
  /** `smtp.hostname` (the bridge greets with it). */
  hostname: string;
  /** Longest wait for the greeting, in ms. */
  timeoutMs: number;
}

/** The bridge's greeting text after the host name (smtp-server `banner`, src/mail/inbound/SmtpListener.ts). */
const BRIDGE_BANNER = "matrix-email-bridge";

/**
 * Read the first reply line of the SMTP server at `host`:`port`, then say QUIT.
 * @returns the greeting line
 * @throws Error on connection failure, timeout (`timeoutMs`), or a close before a full line
 */
export function readGreeting(host: string, port: number, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    let buffered = "";
    let settled = false;
    const done = (err: Error | null, line?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.removeAllListeners("data");
      if (err) {
        socket.destroy();
        reject(err);
        return;
      }
      // Say goodbye and read on (the 221 and the close are discarded): a socket nobody reads
      // never sees the server's FIN and never closes.
      socket.end("QUIT\r\n");
      socket.resume();
      socket.setTimeout(timeoutMs, () => socket.destroy());
      resolve(line!);
    };
    const timer = setTimeout(() => done(new Error(`no greeting within ${timeoutMs} ms`)), timeoutMs);
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      buffered += chunk;
      const eol = buffered.indexOf("\n");
      if (eol >= 0) done(null, buffered.slice(0, eol).replace(/\r$/, ""));
    });
    socket.on("error", (err) => done(err));
    socket.on("close", () => done(new Error("connection closed before a greeting")));
  });
}

/**
 * @returns `ok` when the address is free (the bridge can listen) or held by the running bridge;
 *   `warn` for port 0 (a random port no sender finds); `fail` when another program holds it,
 *   binding is not allowed (a port below 1024 without the capability), or the address is not
 *   this host's
 */
export async function checkSmtpPort(input: SmtpPortInput): Promise<DoctorResult> {
  const check = "smtp port";
  const where = `${input.bindAddress}:${input.port}`;
  if (input.port === 0) {
    return warn(check, "smtp.port is 0: the listener takes a random port, which no sending MTA finds", "set smtp.port to 25, or to a high port that port 25 is forwarded to");
  }
  const server = createServer();
  const outcome = await tryListen(server, input.port, input.bindAddress);
  if (outcome.bound) {
    await closeServer(server);
    return ok(check, `${where} is free: the bridge can listen there (it is not running)`);
  }
  switch (outcome.code) {
    case "EADDRINUSE": {
      let greeting: string;
      try {
        greeting = await readGreeting(connectAddress(input.bindAddress), input.port, input.timeoutMs);
      } catch (err) {
        return fail(check, `${where} is in use, and no SMTP greeting came from it (${describeError(err)})`, `stop the program holding ${where} (\`ss -ltnp 'sport = :${input.port}'\` shows it) or change smtp.port`);
      }
      if (greeting.startsWith("220 ") && greeting.includes(BRIDGE_BANNER)) return ok(check, `${where} is in use by the running bridge ("${greeting}")`);
      return fail(check, `${where} is in use by another program ("${greeting}")`, `stop that SMTP server (\`ss -ltnp 'sport = :${input.port}'\` shows it) or change smtp.port / smtp.bind_address`);
    }
    case "EACCES":
      return fail(check, `binding ${where} is not allowed for this user (ports below 1024 need privileges)`, "run as root, or `setcap cap_net_bind_service=+ep $(which node)`, or listen on a high port and forward 25 to it");
    case "EADDRNOTAVAIL":
      return fail(check, `${input.bindAddress} is not an address of this host`, "set smtp.bind_address to an address of this host, or 0.0.0.0");
    default:
      return fail(check, `cannot bind ${where}: ${outcome.code}: ${outcome.message}`, "check smtp.bind_address and smtp.port");
  }
}
