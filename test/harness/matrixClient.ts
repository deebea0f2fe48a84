/**
 * Minimal Matrix Client-Server API client for tests, over plain `fetch`.
 *
 * Targets the Client-Server API v1.x endpoints under `/_matrix/client/v3`
 * (https://spec.matrix.org/v1.16/client-server-api/). Authentication uses the
 * `Authorization: Bearer` header (spec §"Using access tokens"); application
 * service masquerading adds the `user_id` query parameter
 * (Application Service API §"Identity assertion").
 */

/** Content of an event. Known fields are typed; anything else is `unknown`. */
export interface EventContent {
  body?: string;
  msgtype?: string;
  format?: string;
  formatted_body?: string;
  membership?: string;
  displayname?: string | null;
  name?: string;
  topic?: string;
  "m.relates_to"?: {
    "m.in_reply_to"?: { event_id: string };
    rel_type?: string;
    event_id?: string;
    [key: string]: unknown;
  };
  [key: string]: unknown;
}

/** A room event as returned by /messages or /sync (spec §"ClientEvent"). */
export interface MatrixEvent {
  event_id: string;
  type: string;
  sender: string;
  origin_server_ts: number;
  content: EventContent;
  room_id?: string;
  state_key?: string;
  unsigned?: Record<string, unknown>;
}

/** A stripped state event, as found in `invite_state` (spec §"StrippedStateEvent"). */
export interface StrippedStateEvent {
  type: string;
  state_key: string;
  sender: string;
  content: EventContent;
}

/** A pending invite seen by {@link MatrixTestClient.waitForInvite}. */
export interface PendingInvite {
  /** Room the user is invited to. */
  roomId: string;
  /** User ID of the inviter (sender of the invite membership event), or "" if unknown. */
  inviter: string;
  /** The stripped state the server sent with the invite. */
  inviteState: StrippedStateEvent[];
}

/** Body of `POST /_matrix/client/v3/createRoom` (spec §"Creation"); all fields optional. */
export interface CreateRoomOptions {
  name?: string;
  topic?: string;
  /** User IDs to invite. */
  invite?: string[];
  is_direct?: boolean;
  preset?: "private_chat" | "public_chat" | "trusted_private_chat";
  visibility?: "public" | "private";
  /** Localpart of an alias to create, e.g. "room" for `#room:server`. */
  room_alias_name?: string;
  initial_state?: Array<{ type: string; state_key?: string; content: Record<string, unknown> }>;
  power_level_content_override?: Record<string, unknown>;
  creation_content?: Record<string, unknown>;
  room_version?: string;
}

/** Options for {@link MatrixTestClient.sendText}. */
export interface SendTextOptions {
  /** HTML body; sent as `format: org.matrix.custom.html` + `formatted_body`. */
  html?: string;
  /** Event ID this message replies to (`m.relates_to.m.in_reply_to`, spec §"Rich replies"). */
  replyTo?: string;
  /** Defaults to "m.text". */
  msgtype?: string;
}

/** Subset of the /sync response used by the harness (spec §"GET /sync"). */
export interface SyncResponse {
  next_batch: string;
  rooms?: {
    join?: Record<string, { timeline?: { events?: MatrixEvent[] }; state?: { events?: MatrixEvent[] } }>;
    invite?: Record<string, { invite_state?: { events?: StrippedStateEvent[] } }>;
    leave?: Record<string, { timeline?: { events?: MatrixEvent[] } }>;
  };
  [key: string]: unknown;
}

/** Options of a raw {@link MatrixTestClient.request}. */
export interface RequestOptions {
  /** Extra query parameters (`user_id` for masquerading is added automatically). */
  query?: Record<string, string | number | boolean | string[] | undefined>;
  /** Abort the request after this many ms (default 30000). */
  timeoutMs?: number;
  /** Send no Authorization header (for unauthenticated endpoints). */
  noAuth?: boolean;
}

/**
 * Error for a non-2xx answer from the homeserver. The message reads
 * `METHOD /path -> STATUS ERRCODE: error`. Access tokens never appear in it.
 */
export class MatrixApiError extends Error {
  /** HTTP method, e.g. "PUT". */
  readonly method: string;
  /** Request path including query string (no access token). */
  readonly path: string;
  /** HTTP status code. */
  readonly status: number;
  /** Matrix `errcode` (e.g. "M_FORBIDDEN"), or "" if the body had none. */
  readonly errcode: string;
  /** Parsed JSON body (or `{ raw: text }` if it was not JSON). */
  readonly body: Record<string, unknown>;

  /** Builds the error; see the field docs. */
  constructor(method: string, path: string, status: number, body: Record<string, unknown>) {
    const errcode = typeof body["errcode"] === "string" ? body["errcode"] : "";
    const error = typeof body["error"] === "string" ? body["error"] : JSON.stringify(body).slice(0, 300);
    super(`${method} ${path} -> ${status} ${errcode || "(no errcode)"}: ${error}`);
    this.name = "MatrixApiError";
    this.method = method;
    this.path = path;
    this.status = status;
    this.errcode = errcode;
    this.body = body;
  }
}

/** Options for the {@link MatrixTestClient} constructor. */
export interface MatrixTestClientOptions {
  /** Homeserver base URL, e.g. "http://127.0.0.1:8008" (no trailing path). */
  baseUrl: string;
  /** The user this client acts as. */
  userId: string;
  /** User access token, or the application service `as_token` when `masquerade` is set. */
  accessToken: string;
  /** If true, `accessToken` is an AS token and every request adds `?user_id=<userId>`. */
  masquerade?: boolean;
}

const CLIENT_V3 = "/_matrix/client/v3";
let txnCounter = 0;

/** Percent-encodes one path segment (room IDs, aliases, user IDs, event types). */
function seg(s: string): string {
  return encodeURIComponent(s);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** One-line summary of an event for error messages. */
function describeEvent(ev: MatrixEvent): string {
  const body = typeof ev.content?.body === "string" ? ` body=${JSON.stringify(ev.content.body.slice(0, 80))}` : "";
  const membership = typeof ev.content?.membership === "string" ? ` membership=${ev.content.membership}` : "";
  const sk = ev.state_key !== undefined ? ` state_key=${ev.state_key}` : "";
  return `${ev.event_id} ${ev.type} from ${ev.sender}${sk}${membership}${body}`;
}

/**
 * A test client acting as one Matrix user (or, with `masquerade`, as an
 * application-service user via the AS token). All methods throw
 * {@link MatrixApiError} on non-2xx answers and plain `Error` on network
 * errors / timeouts.
 */
export class MatrixTestClient {
  /** Homeserver base URL. */
  readonly baseUrl: string;
  /** Fully-qualified user ID, e.g. "@alice:localhost". */
  readonly userId: string;
  /** Access token (or AS token when {@link masquerade} is true). */
  readonly accessToken: string;
  /** Whether requests assert identity with `?user_id=` (Application Service API). */
  readonly masquerade: boolean;

  /** See {@link MatrixTestClientOptions}. Does no I/O. */
  constructor(opts: MatrixTestClientOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, "");
    this.userId = opts.userId;
    this.accessToken = opts.accessToken;
    this.masquerade = opts.masquerade ?? false;
  }

  /**
   * A client that acts as `userId` using the application service token
   * `asToken` (identity assertion, `?user_id=`). The user must be in the AS's
   * user namespace and must already exist (see {@link registerAppserviceUser}),
   * except for the AS's own `sender_localpart` user.
   */
  static forAppserviceUser(baseUrl: string, asToken: string, userId: string): MatrixTestClient {
    return new MatrixTestClient({ baseUrl, userId, accessToken: asToken, masquerade: true });
  }

  /**
   * Registers `localpart` through the AS (`POST /register` with
   * `type: m.login.application_service`, spec Application Service API
   * §"Client-Server API Extensions") and returns a masquerading client for it.
   * Treats `M_USER_IN_USE` as success. Throws {@link MatrixApiError} otherwise.
   */
  static async registerAppserviceUser(baseUrl: string, asToken: string, localpart: string): Promise<MatrixTestClient> {
    const tmp = new MatrixTestClient({ baseUrl, userId: "", accessToken: asToken });
    let userId: string;
    try {
      const res = await tmp.request<{ user_id: string }>("POST", "/register", {
        type: "m.login.application_service",
        username: localpart,
        inhibit_login: true,
      });
      userId = res.user_id;
    } catch (err) {
      if (!(err instanceof MatrixApiError && err.errcode === "M_USER_IN_USE")) throw err;
      const who = await tmp.whoami(); // the AS's sender_localpart user
      const server = who.user_id.slice(who.user_id.indexOf(":") + 1);
      userId = `@${localpart}:${server}`;
    }
    return MatrixTestClient.forAppserviceUser(baseUrl, asToken, userId);
  }

  /**
   * Raw request. `path` is relative to `/_matrix/client/v3` unless it starts
   * with `/_` (then it is used as is). Returns the parsed JSON body.
   * Throws {@link MatrixApiError} on non-2xx, `Error` on network failure or
   * after `opts.timeoutMs` (default 30000 ms).
   */
  async request<T = Record<string, unknown>>(
    method: string,
    path: string,
    body?: unknown,
    opts: RequestOptions = {},
  ): Promise<T> {
    const fullPath = path.startsWith("/_") ? path : CLIENT_V3 + path;
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(opts.query ?? {})) {
      if (v === undefined) continue;
      if (Array.isArray(v)) for (const item of v) params.append(k, item);
      else params.set(k, String(v));
    }
    if (this.masquerade && !opts.noAuth) params.set("user_id", this.userId);
    const qs = params.toString();
    const pathWithQuery = qs ? `${fullPath}?${qs}` : fullPath;
    const headers: Record<string, string> = {};
    if (!opts.noAuth) headers["Authorization"] = `Bearer ${this.accessToken}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";

    let res: Response;
    try {
      res = await fetch(this.baseUrl + pathWithQuery, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(opts.timeoutMs ?? 30_000),
      });
    } catch (err) {
      throw new Error(`${method} ${pathWithQuery} failed: ${(err as Error).message}`, { cause: err });
    }
    const text = await res.text();
    let json: Record<string, unknown>;
    try {
      json = text ? (JSON.parse(text) as Record<string, unknown>) : {};
    } catch {
      json = { raw: text.slice(0, 500) };
    }
    if (!res.ok) throw new MatrixApiError(method, pathWithQuery, res.status, json);
    return json as T;
  }

  /** `GET /account/whoami` (spec §"Current account information"). */
  whoami(): Promise<{ user_id: string; device_id?: string; is_guest?: boolean }> {
    return this.request("GET", "/account/whoami");
  }

  /** `POST /createRoom`. Returns the new room ID. */
  async createRoom(opts: CreateRoomOptions = {}): Promise<string> {
    const res = await this.request<{ room_id: string }>("POST", "/createRoom", opts);
    return res.room_id;
  }

  /** `POST /rooms/{roomId}/invite` (spec §"Inviting users"). */
  async invite(roomId: string, userId: string, reason?: string): Promise<void> {
    await this.request("POST", `/rooms/${seg(roomId)}/invite`, { user_id: userId, ...(reason ? { reason } : {}) });
  }

  /** `POST /join/{roomIdOrAlias}` (spec §"Joining rooms"). Returns the joined room ID. */
  async join(roomIdOrAlias: string, opts: { via?: string[] } = {}): Promise<string> {
    const res = await this.request<{ room_id: string }>("POST", `/join/${seg(roomIdOrAlias)}`, {}, {
      query: { via: opts.via },
    });
    return res.room_id;
  }

  /** `POST /rooms/{roomId}/leave` (spec §"Leaving rooms"). */
  async leave(roomId: string, reason?: string): Promise<void> {
    await this.request("POST", `/rooms/${seg(roomId)}/leave`, reason ? { reason } : {});
  }

  /**
   * Sends an `m.room.message` (`msgtype` default `m.text`, spec §"m.text").
   * `opts.html` adds `org.matrix.custom.html` formatting; `opts.replyTo` makes
   * it a rich reply. Returns the event ID.
   */
  sendText(roomId: string, body: string, opts: SendTextOptions = {}): Promise<string> {
    const content: EventContent = { msgtype: opts.msgtype ?? "m.text", body };
    if (opts.html !== undefined) {
      content.format = "org.matrix.custom.html";
      content.formatted_body = opts.html;
    }
    if (opts.replyTo !== undefined) content["m.relates_to"] = { "m.in_reply_to": { event_id: opts.replyTo } };
    return this.sendEvent(roomId, "m.room.message", content);
  }

  /** `PUT /rooms/{roomId}/send/{type}/{txnId}` with a fresh txnId. Returns the event ID. */
  async sendEvent(roomId: string, type: string, content: Record<string, unknown>): Promise<string> {
    const txnId = `meb-${process.pid}-${Date.now()}-${++txnCounter}`;
    const res = await this.request<{ event_id: string }>(
      "PUT",
      `/rooms/${seg(roomId)}/send/${seg(type)}/${seg(txnId)}`,
      content,
    );
    return res.event_id;
  }

  /** `PUT /rooms/{roomId}/state/{type}/{stateKey}`. Returns the event ID. */
  async sendState(roomId: string, type: string, stateKey: string, content: Record<string, unknown>): Promise<string> {
    const res = await this.request<{ event_id: string }>(
      "PUT",
      `/rooms/${seg(roomId)}/state/${seg(type)}/${seg(stateKey)}`,
      content,
    );
    return res.event_id;
  }

  /** `GET /rooms/{roomId}/state/{type}/{stateKey}`: the state event's content. Throws M_NOT_FOUND if unset. */
  getState(roomId: string, type: string, stateKey = ""): Promise<EventContent> {
    return this.request<EventContent>("GET", `/rooms/${seg(roomId)}/state/${seg(type)}/${seg(stateKey)}`);
  }

  /** `GET /rooms/{roomId}/joined_members`: map user ID -> profile in that room. */
  async getJoinedMembers(
    roomId: string,
  ): Promise<Record<string, { display_name?: string | null; avatar_url?: string | null }>> {
    const res = await this.request<{
      joined: Record<string, { display_name?: string | null; avatar_url?: string | null }>;
    }>("GET", `/rooms/${seg(roomId)}/joined_members`);
    return res.joined;
  }

  /** `GET /profile/{userId}` (default: own profile). */
  getProfile(userId: string = this.userId): Promise<{ displayname?: string; avatar_url?: string }> {
    return this.request("GET", `/profile/${seg(userId)}`);
  }

  /** `PUT /profile/{ownUserId}/displayname`. */
  async setDisplayName(displayName: string): Promise<void> {
    await this.request("PUT", `/profile/${seg(this.userId)}/displayname`, { displayname: displayName });
  }

  /** `GET /directory/room/{roomAlias}`: the room ID an alias points to. */
  async resolveAlias(alias: string): Promise<string> {
    const res = await this.request<{ room_id: string }>("GET", `/directory/room/${seg(alias)}`);
    return res.room_id;
  }

  /** `GET /joined_rooms`: IDs of the rooms this user is joined to. */
  async joinedRooms(): Promise<string[]> {
    const res = await this.request<{ joined_rooms: string[] }>("GET", "/joined_rooms");
    return res.joined_rooms;
  }

  /**
   * `GET /rooms/{roomId}/messages` (spec §"Syncing / GET messages").
   * Defaults: `dir=b` (newest first), `limit=100`. Returns the `chunk`.
   */
  async getRoomMessages(
    roomId: string,
    opts: { dir?: "b" | "f"; limit?: number; from?: string } = {},
  ): Promise<MatrixEvent[]> {
    const res = await this.request<{ chunk: MatrixEvent[] }>("GET", `/rooms/${seg(roomId)}/messages`, undefined, {
      query: { dir: opts.dir ?? "b", limit: opts.limit ?? 100, from: opts.from },
    });
    return res.chunk;
  }

  /**
   * `GET /sync` (spec §"Syncing"). `timeoutMs` is the server-side long-poll
   * time (default 0). `filter` is an inline filter object or a filter ID.
   */
  sync(opts: { since?: string; timeoutMs?: number; filter?: string | Record<string, unknown> } = {}): Promise<SyncResponse> {
    const timeout = opts.timeoutMs ?? 0;
    return this.request<SyncResponse>("GET", "/sync", undefined, {
      query: {
        since: opts.since,
        timeout,
        filter: typeof opts.filter === "object" ? JSON.stringify(opts.filter) : opts.filter,
      },
      timeoutMs: timeout + 30_000,
    });
  }

  /**
   * Polls the room's latest 100 events (`/messages`, every 250 ms) until
   * `predicate` matches one; returns the oldest matching event. Request
   * errors (e.g. not joined yet) are retried. After `timeoutMs` (default
   * 30000 ms) throws an Error listing the events it saw and the last error.
   */
  async waitForEvent(
    roomId: string,
    predicate: (ev: MatrixEvent) => boolean,
    timeoutMs = 30_000,
  ): Promise<MatrixEvent> {
    const deadline = Date.now() + timeoutMs;
    let seen: MatrixEvent[] = [];
    let lastError: unknown;
    for (;;) {
      let chunk: MatrixEvent[] | undefined;
      try {
        chunk = await this.getRoomMessages(roomId, { limit: 100 });
        lastError = undefined;
      } catch (err) {
        lastError = err; // e.g. not (yet) joined: retry until the deadline
      }
      if (chunk) {
        seen = chunk.slice().reverse();
        const hit = seen.find(predicate);
        if (hit) return hit;
      }
      if (Date.now() >= deadline) break;
      await sleep(250);
    }
    const list = seen.map((ev) => `  ${describeEvent(ev)}`).join("\n");
    throw new Error(
      `waitForEvent(${roomId}) as ${this.userId}: no matching event within ${timeoutMs} ms.` +
        (lastError ? ` Last error: ${(lastError as Error).message}.` : "") +
        `\nEvents seen (oldest first, ${seen.length}):\n${list || "  (none)"}`,
    );
  }

  /**
   * Waits (via /sync long-polling) for a pending invite for this user and
   * returns its room ID. Pending invites that already exist count. With
   * `predicate`, only invites it accepts count (e.g. by `inviter`). Throws an
   * Error after `timeoutMs` (default 30000 ms) listing the invites seen.
   */
  async waitForInvite(timeoutMs = 30_000, predicate?: (invite: PendingInvite) => boolean): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    const filter = {
      presence: { types: [] },
      account_data: { types: [] },
      room: { timeline: { limit: 1 }, ephemeral: { types: [] }, account_data: { types: [] } },
    };
    const seen: string[] = [];
    let since: string | undefined;
    for (;;) {
      const remaining = deadline - Date.now();
      const res = await this.sync({ since, filter, timeoutMs: since === undefined ? 0 : Math.max(0, Math.min(remaining, 5000)) });
      since = res.next_batch;
      for (const [roomId, room] of Object.entries(res.rooms?.invite ?? {})) {
        const inviteState = room.invite_state?.events ?? [];
        const own = inviteState.find((e) => e.type === "m.room.member" && e.state_key === this.userId);
        const invite: PendingInvite = { roomId, inviter: own?.sender ?? "", inviteState };
        if (!predicate || predicate(invite)) return roomId;
        seen.push(`${roomId} from ${invite.inviter || "?"}`);
      }
      if (Date.now() >= deadline) break;
    }
    throw new Error(
      `waitForInvite as ${this.userId}: no matching invite within ${timeoutMs} ms. ` +
        `Invites seen: ${seen.length ? seen.join(", ") : "(none)"}`,
    );
  }

  /**
   * Polls until `userId`'s membership in `roomId` equals `membership`
   * ("join", "invite", "leave", "ban", "knock"), reading the room state
   * (`/rooms/{roomId}/state/m.room.member/{userId}`, every 250 ms). For the
   * client's own user it falls back to /sync when the state is not readable
   * (e.g. while only invited). Throws after `timeoutMs` (default 30000 ms)
   * with the last membership seen.
   */
  async waitForMembership(roomId: string, userId: string, membership: string, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = "(unknown)";
    let lastError: unknown;
    for (;;) {
      let current: string | undefined;
      try {
        const content = await this.getState(roomId, "m.room.member", userId);
        current = typeof content.membership === "string" ? content.membership : undefined;
        lastError = undefined;
      } catch (err) {
        if (!(err instanceof MatrixApiError)) throw err;
        lastError = err;
        if (err.errcode === "M_NOT_FOUND") current = "leave";
        if (userId === this.userId && err.errcode === "M_FORBIDDEN") current = await this.#ownMembershipFromSync(roomId);
      }
      if (current !== undefined) last = current;
      if (current === membership) return;
      if (Date.now() >= deadline) break;
      await sleep(250);
    }
    throw new Error(
      `waitForMembership(${roomId}, ${userId}, ${membership}) as ${this.userId}: still "${last}" after ${timeoutMs} ms` +
        (lastError ? ` (last error: ${(lastError as Error).message})` : ""),
    );
  }

  /** Own membership in `roomId` according to an initial /sync, or "leave" if the room is not listed. */
  async #ownMembershipFromSync(roomId: string): Promise<string> {
    const res = await this.sync({
      filter: { presence: { types: [] }, account_data: { types: [] }, room: { rooms: [roomId], timeline: { limit: 1 }, include_leave: true } },
    });
    if (res.rooms?.join?.[roomId]) return "join";
    if (res.rooms?.invite?.[roomId]) return "invite";
    return "leave";
  }
}
