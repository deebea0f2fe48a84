/**
 * The bridge's one structured logger.
 *
 * Every log line is a constant message plus a context object (message id,
 * room id, address, SMTP session id, ...). Never interpolate data into the
 * message and never log bodies, tokens, passwords or DKIM keys.
 *
 * Output goes to stderr, either as one JSON object per line (`format: json`)
 * or as a readable line (`format: pretty`, the default).
 */

/** Log severities, lowest first. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** Output format of log lines. */
export type LogFormat = "pretty" | "json";

/** Context fields attached to a log line; values are rendered with JSON. */
export type LogContext = Record<string, unknown>;

const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

interface LoggerSettings {
  level: LogLevel;
  format: LogFormat;
  /** Where lines go; replaced in tests to capture output. */
  write: (line: string) => void;
}

const settings: LoggerSettings = {
  level: (process.env.MEB_LOG_LEVEL as LogLevel | undefined) ?? "info",
  format: "pretty",
  write: (line) => process.stderr.write(line + "\n"),
};

/**
 * Configure all loggers at once (called by `start` from the `logging` config section).
 * @param opts level and format; omitted fields keep their value.
 */
export function configureLogging(opts: Partial<Pick<LoggerSettings, "level" | "format" | "write">>): void {
  Object.assign(settings, opts);
}

/** Turn an unknown thrown value into loggable fields (message and code, stack only at debug). */
export function errorFields(err: unknown): LogContext {
  if (err instanceof Error) {
    const out: LogContext = { error: err.message };
    const code = (err as { code?: unknown }).code;
    if (code !== undefined) out.code = code;
    const responseCode = (err as { responseCode?: unknown }).responseCode;
    if (responseCode !== undefined) out.responseCode = responseCode;
    if (settings.level === "debug" && err.stack) out.stack = err.stack;
    return out;
  }
  return { error: String(err) };
}

/**
 * A named logger with fixed context. Create one per module with {@link getLogger},
 * and a child per unit of work (SMTP session, Matrix event) with {@link Logger.child}.
 */
export class Logger {
  readonly module: string;
  readonly context: LogContext;

  constructor(module: string, context: LogContext = {}) {
    this.module = module;
    this.context = context;
  }

  /** A logger that adds `context` to every line, e.g. `{ session: "abc", roomId }`. */
  child(context: LogContext): Logger {
    return new Logger(this.module, { ...this.context, ...context });
  }

  debug(msg: string, ctx?: LogContext): void {
    this.log("debug", msg, ctx);
  }
  info(msg: string, ctx?: LogContext): void {
    this.log("info", msg, ctx);
  }
  warn(msg: string, ctx?: LogContext): void {
    this.log("warn", msg, ctx);
  }
  error(msg: string, ctx?: LogContext): void {
    this.log("error", msg, ctx);
  }

  /** Write one line at `level` if the configured level lets it through. */
  log(level: LogLevel, msg: string, ctx?: LogContext): void {
    if (LEVELS[level] < LEVELS[settings.level]) return;
    const fields = { ...this.context, ...ctx };
    const ts = new Date().toISOString();
    if (settings.format === "json") {
      settings.write(JSON.stringify({ ts, level, module: this.module, msg, ...fields }));
      return;
    }
    const rest = Object.entries(fields)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k}=${typeof v === "string" ? JSON.stringify(v) : safeJson(v)}`)
      .join(" ");
    settings.write(`${ts} ${level.toUpperCase().padEnd(5)} [${this.module}] ${msg}${rest ? " " + rest : ""}`);
  }
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

/** A logger for one module, e.g. `getLogger("mail/inbound")`. */
export function getLogger(module: string, context?: LogContext): Logger {
  return new Logger(module, context);
}
