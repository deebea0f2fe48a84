/**
 * The admin API's HTTP vocabulary: the error every refusal is (a status and a Matrix-style
 * `{errcode, error}` body, Client-Server API "Standard error response"), and reading a
 * request's JSON body with a size limit.
 */
import type { IncomingMessage } from "node:http";

/** The error codes the admin API answers with (docs/admin-api.md lists when). */
export type AdminErrcode =
  | "M_MISSING_TOKEN"
  | "M_UNKNOWN_TOKEN"
  | "M_NOT_FOUND"
  | "M_UNRECOGNIZED"
  | "M_NOT_JSON"
  | "M_BAD_JSON"
  | "M_MISSING_PARAM"
  | "M_INVALID_PARAM"
  | "M_TOO_LARGE"
  | "M_CONFLICT"
  | "M_MAIL_REFUSED"
  | "M_UNKNOWN";

/** A refusal: answered with `status` and `{errcode, error}`; `error` is one line fit for an operator. */
export class AdminHttpError extends Error {
  readonly status: number;
  readonly errcode: AdminErrcode;
  constructor(status: number, errcode: AdminErrcode, message: string) {
    super(message);
    this.name = "AdminHttpError";
    this.status = status;
    this.errcode = errcode;
  }
}

/** Largest request body read, in bytes (an injected mail's text and HTML included). */
export const MAX_BODY_BYTES = 10 * 1024 * 1024;

/**
 * Read a request body as JSON.
 * @param limit most bytes read (default {@link MAX_BODY_BYTES})
 * @returns the parsed value; undefined for an empty body
 * @throws AdminHttpError 413 M_TOO_LARGE over the limit; 400 M_NOT_JSON when it does not parse
 */
export async function readJson(req: IncomingMessage, limit = MAX_BODY_BYTES): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new AdminHttpError(413, "M_TOO_LARGE", `the request body is larger than ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return undefined;
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8")) as unknown;
  } catch (err) {
    throw new AdminHttpError(400, "M_NOT_JSON", `the request body is not JSON: ${(err as Error).message}`);
  }
}

/**
 * A JSON object body's field as a string.
 * @throws AdminHttpError 400 M_MISSING_PARAM when absent (and required), M_BAD_JSON when not a string
 */
export function stringField(body: Record<string, unknown>, name: string): string;
export function stringField(body: Record<string, unknown>, name: string, optional: true): string | undefined;
export function stringField(body: Record<string, unknown>, name: string, optional = false): string | undefined {
  const value = body[name];
  if (value === undefined || value === null) {
    if (optional) return undefined;
    throw new AdminHttpError(400, "M_MISSING_PARAM", `the request body needs "${name}"`);
  }
  if (typeof value !== "string") throw new AdminHttpError(400, "M_BAD_JSON", `"${name}" must be a string`);
  return value;
}

/**
 * The body as a JSON object.
 * @throws AdminHttpError 400 M_BAD_JSON when it is not one (or is missing)
 */
export function objectBody(body: unknown): Record<string, unknown> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new AdminHttpError(400, "M_BAD_JSON", "the request body must be a JSON object");
  return body as Record<string, unknown>;
}
