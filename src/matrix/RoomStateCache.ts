/**
 * Room state the bridge has read, kept until the room says it changed.
 *
 * Turning one room message into mail reads state: the sender's member event (display name),
 * the room name, whether the room is encrypted, its joined members. Asking the homeserver
 * each time costs one HTTP round trip per read, and a room's messages are handled one after
 * another, so those round trips were most of a message's way to the remote MTA.
 *
 * The appservice sees every event of the rooms it is in (Application Service API, "Pushing
 * events"), state events included, in order: {@link RoomStateCache.noteEvent} forgets what an
 * event replaces. What the bridge's own users change is not pushed back (echo suppression):
 * the gateway calls {@link RoomStateCache.forgetMember} / {@link RoomStateCache.forgetAllState}
 * after its own joins, leaves, invites and name changes.
 *
 * Bounded: at most `maxEntries` state entries and rooms' member lists each, oldest out first.
 */

/** Default bound of {@link RoomStateCache}, per map. */
export const DEFAULT_ROOM_STATE_ENTRIES = 50_000;

function stateKey(roomId: string, type: string, key: string): string {
  return `${roomId}\n${type}\n${key}`;
}

/** A bounded insertion-ordered map: setting a key moves it to the end; over the bound, the first goes. */
class BoundedMap<V> {
  readonly #map = new Map<string, V>();
  readonly #max: number;

  constructor(max: number) {
    this.#max = max;
  }

  get(key: string): V | undefined {
    return this.#map.get(key);
  }

  has(key: string): boolean {
    return this.#map.has(key);
  }

  set(key: string, value: V): void {
    this.#map.delete(key);
    this.#map.set(key, value);
    if (this.#map.size > this.#max) this.#map.delete(this.#map.keys().next().value!);
  }

  delete(key: string): void {
    this.#map.delete(key);
  }

  clear(): void {
    this.#map.clear();
  }
}

/** Cached state events' content (null: known to be unset) and joined-member lists, per room. */
export class RoomStateCache {
  readonly #state: BoundedMap<Record<string, unknown> | null>;
  readonly #members: BoundedMap<readonly string[]>;
  /** Bumped by every forget: a read that was in flight meanwhile is not kept (it may predate the change). */
  #generation = 0;

  /**
   * @param maxEntries bound of each map (state entries; rooms with a member list)
   * @throws RangeError when `maxEntries` is not an integer >= 1
   */
  constructor(maxEntries: number = DEFAULT_ROOM_STATE_ENTRIES) {
    if (!Number.isInteger(maxEntries) || maxEntries < 1) throw new RangeError(`room state cache bound must be an integer >= 1, got ${maxEntries}`);
    this.#state = new BoundedMap(maxEntries);
    this.#members = new BoundedMap(maxEntries);
  }

  /**
   * A state event's content, read through the cache.
   * @param fetch reads it from the homeserver (null when unset); its errors are not cached
   * @returns the content, or null when the state is not set
   */
  async state(roomId: string, type: string, key: string, fetch: () => Promise<Record<string, unknown> | null>): Promise<Record<string, unknown> | null> {
    const k = stateKey(roomId, type, key);
    if (this.#state.has(k)) return this.#state.get(k) ?? null;
    const generation = this.#generation;
    const content = await fetch();
    if (generation === this.#generation) this.#state.set(k, content);
    return content;
  }

  /**
   * A room's joined members, read through the cache.
   * @param fetch reads them from the homeserver; its errors are not cached
   * @returns the user IDs (a copy)
   */
  async members(roomId: string, fetch: () => Promise<string[]>): Promise<string[]> {
    const known = this.#members.get(roomId);
    if (known) return [...known];
    const generation = this.#generation;
    const members = await fetch();
    if (generation === this.#generation) this.#members.set(roomId, [...members]);
    return members;
  }

  /**
   * Forget what a pushed event replaces: a state event (it has a `state_key`) replaces that
   * state entry; a member event also changes the member list. Other events change nothing.
   * @param event an event as pushed to the appservice (Client-Server event format)
   */
  noteEvent(event: { type?: unknown; room_id?: unknown; state_key?: unknown }): void {
    if (typeof event.room_id !== "string" || typeof event.type !== "string" || typeof event.state_key !== "string") return;
    this.#generation++;
    this.#state.delete(stateKey(event.room_id, event.type, event.state_key));
    if (event.type === "m.room.member") this.#members.delete(event.room_id);
  }

  /** Forget `userId`'s member event and the member list of `roomId` (after the bridge's own join, leave, invite). */
  forgetMember(roomId: string, userId: string): void {
    this.#generation++;
    this.#state.delete(stateKey(roomId, "m.room.member", userId));
    this.#members.delete(roomId);
  }

  /** Forget every state entry (a bridge user changed its profile: its member event changed in every room it is in). */
  forgetAllState(): void {
    this.#generation++;
    this.#state.clear();
  }

  /** Forget a whole room's member list (a room the bridge just created). */
  forgetRoom(roomId: string): void {
    this.#generation++;
    this.#members.delete(roomId);
  }
}
