/**
 * The homeserver requests of the bridge's crypto devices: Client-Server API calls made with
 * the appservice's `as_token`, as one of its users (`?user_id=`, Application Service API ›
 * Identity assertion) and, for key uploads and to-device messages, as one of that user's
 * devices (`?device_id=`: device masquerading, the stable form of MSC3202's parameter, which
 * Synapse reads since it dropped `org.matrix.msc3202.device_id`). Devices are created and deleted through MSC4190 (`PUT` / `DELETE
 * /_matrix/client/v3/devices/{deviceId}` with no login and no user-interactive auth).
 */

/** A failed homeserver request, shaped like matrix-bot-sdk's errors (`statusCode`, `errcode`, `body`) so the gateway's `classifyError` judges it the same way. */
export class E2eeHttpError extends Error {
  override name = "E2eeHttpError";
  readonly statusCode: number;
  readonly errcode: string | undefined;
  readonly body: Record<string, unknown>;
  constructor(method: string, path: string, statusCode: number, body: Record<string, unknown>) {
    const errcode = typeof body.errcode === "string" ? body.errcode : undefined;
    super(`${method} ${path} failed: ${statusCode} ${errcode ?? ""} ${typeof body.error === "string" ? body.error : ""}`.trim());
    this.statusCode = statusCode;
    this.errcode = errcode;
    this.body = body;
  }
}

/** Who a request acts as: a user in the appservice's namespace and optionally one of its devices. */
export interface Actor {
  userId: string;
  deviceId?: string;
}

/** Client-Server API requests as the appservice's users and devices. */
export class HomeserverApi {
  readonly #base: string;
  readonly #asToken: string;

  /**
   * @param homeserverUrl the homeserver's client API base URL
   * @param asToken the registration's `as_token`
   */
  constructor(homeserverUrl: string, asToken: string) {
    this.#base = homeserverUrl.replace(/\/+$/, "");
    this.#asToken = asToken;
  }

  /**
   * One JSON request as `actor`.
   * @param path the path under the homeserver URL, already encoded
   * @returns the response body as text (the crypto machine wants it as a string)
   * @throws E2eeHttpError for an answer other than 2xx; the fetch error when the homeserver
   *   cannot be reached
   */
  async request(method: string, path: string, actor: Actor, body?: unknown): Promise<string> {
    const url = new URL(this.#base + path);
    url.searchParams.set("user_id", actor.userId);
    if (actor.deviceId) url.searchParams.set("device_id", actor.deviceId);
    const res = await fetch(url, {
      method,
      headers: { Authorization: `Bearer ${this.#asToken}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
      ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
    });
    const text = await res.text();
    if (!res.ok) {
      let parsed: Record<string, unknown> = {};
      try {
        const v = JSON.parse(text) as unknown;
        if (typeof v === "object" && v !== null) parsed = v as Record<string, unknown>;
      } catch {
        parsed = { error: text.slice(0, 200) };
      }
      throw new E2eeHttpError(method, path, res.status, parsed);
    }
    return text;
  }

  /**
   * Create (or keep) device `deviceId` of `userId` (MSC4190: `PUT /devices/{deviceId}` creates
   * a missing device for an appservice).
   * @throws E2eeHttpError (404/400 `M_UNRECOGNIZED` where the homeserver or the registration
   *   lacks MSC4190)
   */
  async createDevice(userId: string, deviceId: string, displayName: string): Promise<void> {
    await this.request("PUT", `/_matrix/client/v3/devices/${encodeURIComponent(deviceId)}`, { userId }, { display_name: displayName });
  }

  /**
   * The device IDs of `userId` (`GET /_matrix/client/v3/devices`, as the user).
   * @throws E2eeHttpError
   */
  async listDevices(userId: string): Promise<string[]> {
    const res = JSON.parse(await this.request("GET", "/_matrix/client/v3/devices", { userId })) as { devices?: { device_id?: unknown }[] };
    return (res.devices ?? []).map((d) => d.device_id).filter((id): id is string => typeof id === "string");
  }

  /**
   * Delete device `deviceId` of `userId` with its keys (MSC4190: no user-interactive auth). A
   * device that does not exist is no error.
   * @throws E2eeHttpError for any other refusal
   */
  async deleteDevice(userId: string, deviceId: string): Promise<void> {
    try {
      await this.request("DELETE", `/_matrix/client/v3/devices/${encodeURIComponent(deviceId)}`, { userId }, {});
    } catch (err) {
      if (err instanceof E2eeHttpError && err.statusCode === 404) return;
      throw err;
    }
  }
}
