/**
 * Notices the bridge posts into portals (delivery failures, delays, refusals, why a message was
 * not sent): one owner for who speaks them. In a DM portal the bot is not a member, so the
 * remote party's ghost (verified or unverified, as the portal was made) posts them; anywhere
 * else the bridge bot does.
 */
import type { BridgeStore } from "../store/Store.ts";
import type { IdContext } from "./ids.ts";
import { portalOf } from "./Portal.ts";
import type { MatrixActions } from "./ports.ts";

/** Options of {@link NoticeService}. */
export interface NoticeServiceOptions {
  store: Pick<BridgeStore, "getPortalByRoom">;
  matrix: Pick<MatrixActions, "sendEvent" | "botUserId">;
  ids: IdContext;
}

/** Posts `m.notice` events into portals. */
export class NoticeService {
  private readonly opts: NoticeServiceOptions;

  constructor(opts: NoticeServiceOptions) {
    this.opts = opts;
  }

  /**
   * Post a notice, optionally as a reply (Client-Server API, "Rich replies").
   * @param txnId makes a retried notice post once (Client-Server API, "Transaction identifiers")
   * @returns the notice's event ID
   * @throws the homeserver's error: callers that must not lose the notice retry it
   */
  async post(roomId: string, text: string, replyTo?: string, txnId?: string): Promise<string> {
    const portal = await this.opts.store.getPortalByRoom(roomId);
    const sender = portal ? portalOf(portal).reader(this.opts.ids) : this.opts.matrix.botUserId;
    const content: Record<string, unknown> = { msgtype: "m.notice", body: text };
    if (replyTo) content["m.relates_to"] = { "m.in_reply_to": { event_id: replyTo } };
    return this.opts.matrix.sendEvent(sender, roomId, "m.room.message", content, txnId);
  }
}
