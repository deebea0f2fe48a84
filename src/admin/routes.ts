/**
 * The admin API's routes (docs/admin-api.yaml describes each): what every route reads, which
 * shared function it calls (the queue actions of bridge/queueOps.ts that the `queue` command
 * also uses, the `Addressing` class the bot commands also use, the store's message log, the
 * injection of inject.ts), and the JSON it answers with (snake_case keys, times as ISO 8601).
 */
import type { Addressing, MailAlias, MailDomain, RoomMailboxEntry } from "../bridge/Addressing.ts";
import { AddressingError } from "../bridge/Addressing.ts";
import * as queue from "../bridge/queueOps.ts";
import { QUEUE_STATES, QueueOpError, type OutboundItem, type QueueDirection } from "../bridge/queueOps.ts";
import { bareMessageId } from "../bridge/ids.ts";
import type { BridgeStore, InboundRow, InboundState, MessageRow, OutboundState } from "../store/Store.ts";
import { AdminHttpError, objectBody, stringField } from "./http.ts";
import { injectMail, type InjectDeps } from "./inject.ts";

/** Who the admin API says made a change (`createdBy` of domains, aliases, mailboxes; log lines). */
export const ADMIN_ACTOR = "admin api";

/** Rows a list answers with when the request gives no `limit`. */
export const DEFAULT_LIMIT = 50;
/** Largest `limit` a list takes. */
export const MAX_LIMIT = 1000;

/** What the routes work on: the running bridge's parts. */
export interface AdminDeps {
  store: BridgeStore;
  addressing: Pick<Addressing, "listDomains" | "addDomain" | "removeDomain" | "listAliases" | "addAlias" | "removeAlias" | "listMailboxes" | "setRoomMailbox" | "removeRoomMailbox">;
  inject: InjectDeps;
  /** Wake the queue worker of a direction after an item was made due (retry): it is tried at once. */
  kick(direction: QueueDirection): void;
}

/** One request, as a route sees it. */
export interface RouteRequest {
  /** The path's parameters, percent-decoded. */
  params: Record<string, string>;
  query: URLSearchParams;
  /** The JSON body (undefined when empty); read only by routes that take one. */
  body(): Promise<unknown>;
  /** The HTTP client's IP address. */
  clientAddress: string;
}

/** A route's answer: a JSON body, or raw bytes of a content type. */
export type RouteResponse =
  | { status: number; json: unknown; action?: AdminAction }
  | { status: number; bytes: Buffer; contentType: string };

/** A change made through the API, logged once by the server (who: {@link ADMIN_ACTOR}). */
export interface AdminAction {
  /** What, e.g. `queue.retry`, `alias.add`. */
  what: string;
  /** The ids it touched. */
  ids: Record<string, unknown>;
}

/** A route: method, path pattern (`{name}` is one path segment), handler. */
export interface Route {
  method: "GET" | "POST" | "PUT" | "DELETE";
  path: string;
  handle(deps: AdminDeps, req: RouteRequest): Promise<RouteResponse>;
}

/** Every route of the API, under `/admin/v1`. */
export const ROUTES: readonly Route[] = [
  // ---- mail domains ----
  {
    method: "GET",
    path: "/admin/v1/domains",
    handle: async (deps) => ({ status: 200, json: { domains: (await deps.addressing.listDomains()).map(domainJson) } }),
  },
  {
    method: "POST",
    path: "/admin/v1/domains",
    handle: async (deps, req) => {
      const domain = stringField(objectBody(await req.body()), "domain");
      const added = await deps.addressing.addDomain(domain, ADMIN_ACTOR);
      return { status: 201, json: domainJson(added), action: { what: "domain.add", ids: { domain: added.domain } } };
    },
  },
  {
    method: "DELETE",
    path: "/admin/v1/domains/{domain}",
    handle: async (deps, req) => {
      const domain = req.params.domain!;
      if (!(await deps.addressing.removeDomain(domain))) throw new AdminHttpError(404, "M_NOT_FOUND", `${domain} is not a mail domain of this bridge`);
      return { status: 200, json: { removed: domain }, action: { what: "domain.remove", ids: { domain } } };
    },
  },
  // ---- room mailboxes ----
  {
    method: "GET",
    path: "/admin/v1/mailboxes",
    handle: async (deps) => ({ status: 200, json: { mailboxes: (await deps.addressing.listMailboxes()).map(mailboxJson) } }),
  },
  {
    method: "PUT",
    path: "/admin/v1/mailboxes/{room_id}",
    handle: async (deps, req) => {
      const roomId = roomIdParam(req.params.room_id!);
      const localpart = stringField(objectBody(await req.body()), "localpart");
      const row = await deps.addressing.setRoomMailbox(roomId, localpart, ADMIN_ACTOR);
      const entry = (await deps.addressing.listMailboxes()).find((m) => m.roomId === roomId);
      return {
        status: 200,
        json: entry ? mailboxJson(entry) : { address: null, room_id: row.roomId, policy: row.policy },
        action: { what: "mailbox.set", ids: { roomId, localpart: row.localpart } },
      };
    },
  },
  {
    method: "DELETE",
    path: "/admin/v1/mailboxes/{room_id}",
    handle: async (deps, req) => {
      const roomId = roomIdParam(req.params.room_id!);
      if (!(await deps.addressing.removeRoomMailbox(roomId))) throw new AdminHttpError(404, "M_NOT_FOUND", `${roomId} has no room mailbox`);
      return { status: 200, json: { removed: roomId }, action: { what: "mailbox.remove", ids: { roomId } } };
    },
  },
  // ---- aliases ----
  {
    method: "GET",
    path: "/admin/v1/aliases",
    handle: async (deps, req) => {
      const domain = req.query.get("domain");
      const target = req.query.get("target");
      const aliases = await deps.addressing.listAliases({ ...(domain ? { domain } : {}), ...(target ? { target } : {}) });
      return { status: 200, json: { aliases: aliases.map(aliasJson) } };
    },
  },
  {
    method: "POST",
    path: "/admin/v1/aliases",
    handle: async (deps, req) => {
      const body = objectBody(await req.body());
      const alias = await deps.addressing.addAlias(stringField(body, "address"), stringField(body, "target"), ADMIN_ACTOR);
      return { status: 201, json: aliasJson(alias), action: { what: "alias.add", ids: { address: alias.address, target: alias.target } } };
    },
  },
  {
    method: "DELETE",
    path: "/admin/v1/aliases/{address}",
    handle: async (deps, req) => {
      const address = req.params.address!;
      const target = req.query.get("target") ?? undefined;
      const removed = await deps.addressing.removeAlias(address, target);
      if (removed === 0) throw new AdminHttpError(404, "M_NOT_FOUND", target === undefined ? `${address} is not an alias` : `${address} does not deliver to ${target}`);
      return { status: 200, json: { removed }, action: { what: "alias.remove", ids: { address, target } } };
    },
  },
  // ---- message log ----
  {
    method: "GET",
    path: "/admin/v1/messages",
    handle: async (deps, req) => {
      const limit = limitParam(req.query);
      const given = (["message_id", "address", "room_id"] as const).filter((k) => req.query.has(k));
      if (given.length !== 1) {
        throw new AdminHttpError(400, given.length === 0 ? "M_MISSING_PARAM" : "M_INVALID_PARAM", "give exactly one of message_id, address, room_id");
      }
      const value = req.query.get(given[0]!)!.trim();
      if (value === "") throw new AdminHttpError(400, "M_INVALID_PARAM", `${given[0]} is empty`);
      let rows: MessageRow[];
      if (given[0] === "message_id") rows = (await deps.store.getMessagesByMessageId(bareMessageId(value) ?? value)).reverse().slice(0, limit);
      else if (given[0] === "address") rows = await deps.store.listMessagesByAddress(lowerDomain(value), limit);
      else rows = await deps.store.listMessagesInRoom(value, limit);
      return { status: 200, json: { messages: rows.map(messageJson) } };
    },
  },
  // ---- queues ----
  {
    method: "GET",
    path: "/admin/v1/queue/{direction}",
    handle: async (deps, req) => {
      const dir = directionParam(req.params.direction!);
      const limit = limitParam(req.query);
      const state = req.query.get("state");
      if (state !== null && !QUEUE_STATES[dir].includes(state)) {
        throw new AdminHttpError(400, "M_INVALID_PARAM", `unknown ${dir} state "${state}" (${QUEUE_STATES[dir].join(", ")})`);
      }
      if (dir === "inbound") return { status: 200, json: { items: (await queue.listInboundQueue(deps.store, state as InboundState | null, limit)).map(inboundJson) } };
      return { status: 200, json: { items: (await queue.listOutboundQueue(deps.store, state as OutboundState | null, limit)).map(outboundJson) } };
    },
  },
  {
    method: "GET",
    path: "/admin/v1/queue/{direction}/{id}",
    handle: async (deps, req) => {
      const dir = directionParam(req.params.direction!);
      const id = idParam(req.params.id!);
      const json = dir === "inbound" ? inboundJson(await queue.getInboundItem(deps.store, id)) : outboundJson(await queue.getOutboundItem(deps.store, id));
      return { status: 200, json };
    },
  },
  {
    method: "GET",
    path: "/admin/v1/queue/{direction}/{id}/raw",
    handle: async (deps, req) => {
      const dir = directionParam(req.params.direction!);
      const id = idParam(req.params.id!);
      const row = dir === "inbound" ? await queue.getInboundItem(deps.store, id) : (await queue.getOutboundItem(deps.store, id)).mail;
      if (row.rawPurgedAt !== null) throw new AdminHttpError(410, "M_NOT_FOUND", `the message of ${dir} mail ${id} was purged at ${iso(row.rawPurgedAt)} (storage.raw_retention_days)`);
      return { status: 200, bytes: row.raw, contentType: "message/rfc822" };
    },
  },
  {
    method: "POST",
    path: "/admin/v1/queue/{direction}/{id}/retry",
    handle: async (deps, req) => {
      const dir = directionParam(req.params.direction!);
      const id = idParam(req.params.id!);
      let json: unknown;
      if (dir === "inbound") {
        await queue.retryInbound(deps.store, id);
        json = inboundJson(await queue.getInboundItem(deps.store, id));
      } else {
        await queue.retryOutbound(deps.store, id);
        json = outboundJson(await queue.getOutboundItem(deps.store, id));
      }
      deps.kick(dir);
      return { status: 200, json, action: { what: "queue.retry", ids: { direction: dir, id } } };
    },
  },
  {
    method: "DELETE",
    path: "/admin/v1/queue/{direction}/{id}",
    handle: async (deps, req) => {
      const dir = directionParam(req.params.direction!);
      const id = idParam(req.params.id!);
      const row = dir === "inbound" ? await queue.dropInbound(deps.store, id) : await queue.dropOutbound(deps.store, id);
      return { status: 200, json: { deleted: id, direction: dir, state: row.state }, action: { what: "queue.drop", ids: { direction: dir, id, state: row.state } } };
    },
  },
  // ---- injection ----
  {
    method: "POST",
    path: "/admin/v1/inject",
    handle: async (deps, req) => {
      const result = await injectMail(deps.inject, await req.body(), req.clientAddress);
      return {
        status: 202,
        json: {
          message_id: result.messageId,
          inbound: result.inbound.map((r) => ({ id: r.id, room_id: r.roomId, dm_user_id: r.dmLocalUserId, duplicate: r.duplicate })),
        },
        action: { what: "inject", ids: { messageId: result.messageId, inbound: result.inbound.map((r) => r.id) } },
      };
    },
  },
];

/**
 * Turn the errors of the shared functions into HTTP answers: AddressingError `invalid` → 400,
 * `conflict` → 409, `not_found` → 404; QueueOpError `not_found` → 404, `conflict` → 409.
 * @returns the AdminHttpError, or null for an error that is not a refusal (a fault: 500)
 */
export function refusalOf(err: unknown): AdminHttpError | null {
  if (err instanceof AdminHttpError) return err;
  if (err instanceof AddressingError) {
    if (err.code === "invalid") return new AdminHttpError(400, "M_INVALID_PARAM", err.message);
    if (err.code === "conflict") return new AdminHttpError(409, "M_CONFLICT", err.message);
    return new AdminHttpError(404, "M_NOT_FOUND", err.message);
  }
  if (err instanceof QueueOpError) return err.code === "not_found" ? new AdminHttpError(404, "M_NOT_FOUND", err.message) : new AdminHttpError(409, "M_CONFLICT", err.message);
  return null;
}

// ---- parameters ----

function directionParam(value: string): QueueDirection {
  if (value === "inbound" || value === "outbound") return value;
  throw new AdminHttpError(404, "M_UNRECOGNIZED", `there is no queue "${value}" (inbound, outbound)`);
}

function idParam(value: string): number {
  if (!/^[1-9][0-9]{0,14}$/.test(value)) throw new AdminHttpError(400, "M_INVALID_PARAM", `the ID must be a positive whole number, not "${value}"`);
  return Number(value);
}

function limitParam(query: URLSearchParams): number {
  const text = query.get("limit");
  if (text === null) return DEFAULT_LIMIT;
  if (!/^[1-9][0-9]{0,5}$/.test(text) || Number(text) > MAX_LIMIT) throw new AdminHttpError(400, "M_INVALID_PARAM", `limit must be a whole number from 1 to ${MAX_LIMIT}, not "${text}"`);
  return Number(text);
}

function roomIdParam(value: string): string {
  // Room versions before 12 have `!opaque:server.name`, version 12 `!opaque` (Matrix spec, "Room IDs").
  if (!/^![\x21-\x7e]+$/.test(value)) throw new AdminHttpError(400, "M_INVALID_PARAM", `${JSON.stringify(value)} is not a room ID (!opaque or !opaque:server.name)`);
  return value;
}

/** An address as the store keeps it: the domain lower-cased (ids.ts normalises the same way). */
function lowerDomain(address: string): string {
  const at = address.lastIndexOf("@");
  return at < 0 ? address : `${address.slice(0, at)}@${address.slice(at + 1).toLowerCase()}`;
}

// ---- JSON shapes (docs/admin-api.yaml, components/schemas) ----

function iso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

function domainJson(d: MailDomain): unknown {
  return { domain: d.domain, primary: d.primary, created_by: d.createdBy, created_at: iso(d.createdAt) };
}

function mailboxJson(m: RoomMailboxEntry): unknown {
  return { address: m.address, room_id: m.roomId, policy: m.policy };
}

function aliasJson(a: MailAlias): unknown {
  return { address: a.address, target: a.target, created_by: a.createdBy, created_at: iso(a.createdAt) };
}

function messageJson(m: MessageRow): unknown {
  return {
    message_id: m.messageId,
    room_id: m.roomId,
    event_id: m.eventId,
    direction: m.direction,
    sender: m.sender,
    subject: m.subject,
    participants: m.participants,
    references: m.references,
    via_list: m.viaList,
    created_at: iso(m.createdAt),
  };
}

function inboundJson(r: InboundRow): unknown {
  return {
    id: r.id,
    kind: r.kind,
    state: r.state,
    attempts: r.attempts,
    received_at: iso(r.receivedAt),
    next_attempt_at: r.state === "pending" ? iso(r.nextAttemptAt) : null,
    last_error: r.lastError,
    message_id: r.messageId,
    sender: r.sender,
    sender_verified: r.senderVerified,
    sender_name: r.senderName,
    envelope_from: r.envelopeFrom,
    room_id: r.roomId,
    dm_user_id: r.dmLocalUserId,
    reply_to_event_id: r.replyToEventId,
    event_id: r.eventId,
    participants: r.participants,
    auth: r.auth,
    spam: r.spam ? { action: r.spam.action, score: r.spam.score, required_score: r.spam.requiredScore } : null,
    size_bytes: r.raw.length,
    raw_purged_at: iso(r.rawPurgedAt),
  };
}

function outboundJson({ mail: r, recipients }: OutboundItem): unknown {
  const waiting = r.state === "queued" || r.state === "deferred";
  return {
    id: r.id,
    state: r.state,
    attempts: r.attempts,
    created_at: iso(r.createdAt),
    next_attempt_at: waiting ? iso(r.nextAttemptAt) : null,
    last_error: r.lastError,
    message_id: r.messageId,
    room_id: r.roomId || null,
    event_id: r.eventId,
    envelope_from: r.envelopeFrom,
    still_to_deliver: r.recipients,
    recipients: recipients.map((p) => ({
      address: p.address,
      state: p.state,
      attempts: p.attempts,
      last_code: p.lastCode,
      last_reply: p.lastReply,
      next_attempt_at: iso(p.nextAttemptAt),
      reported: p.reported,
    })),
    delay_warned_at: iso(r.delayWarnedAt),
    size_bytes: r.raw.length,
    raw_purged_at: iso(r.rawPurgedAt),
  };
}
