/**
 * A ghost: the Matrix user that stands for one email address. The one owner of the ghost
 * profile rules:
 *
 * - Each address has two ghosts. The **verified** ghost (`@email_bob=40example.org:hs`) posts
 *   only mail whose sender authenticated (an SPF or DKIM pass aligned with the From domain);
 *   the **unverified** ghost (`@email_bob=40example.org/unverified:hs`) posts everything else.
 *   A ghost's name is a claim: "this came from this address".
 * - Only authenticated mail changes the verified ghost's display name. The unverified ghost's
 *   name is fixed: `<address> (unverified)`; the From display name of unverified mail is never
 *   shown as a name.
 * - Names are cleaned ({@link cleanDisplayName}) and cut to the homeserver's limit; a name that
 *   imitates the bridge bot or an address (an `@`, also fullwidth or small: compared after
 *   NFKC) is replaced by the address.
 */
import type { BridgeStore } from "../store/Store.ts";
import { ghostUserId, parseGhost, unverifiedGhostUserId, type IdContext } from "./ids.ts";
import type { MatrixActions } from "./ports.ts";

/**
 * Longest display name, in code points: Synapse refuses longer ones (`MAX_DISPLAYNAME_LEN`,
 * "Displayname is too long"); the Matrix spec sets no limit of its own.
 */
export const MAX_DISPLAY_NAME = 256;

/**
 * Characters never kept in a display name: C0/C1 controls and DEL, the bidi controls (LRM,
 * RLM, ALM, LRE..RLO, LRI..PDI: they can reverse how a name reads, CVE-2021-42574 "Trojan
 * Source"), zero-width and invisible format characters, line/paragraph separators, BOM.
 */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]/gu;

/**
 * Clean a display name for Matrix: unsafe characters (see above) become spaces, runs of white
 * space become one space, the ends are trimmed, and the result is cut to `max` code points
 * (never splitting a surrogate pair).
 * @param raw the claimed name, e.g. a From display name
 * @param max longest result, in code points (default {@link MAX_DISPLAY_NAME})
 * @returns the cleaned name, or null when nothing printable is left
 */
export function cleanDisplayName(raw: string | null | undefined, max = MAX_DISPLAY_NAME): string | null {
  if (!raw) return null;
  const cleaned = raw.normalize("NFC").replace(UNSAFE, " ").replace(/\s+/gu, " ").trim();
  if (!cleaned) return null;
  const points = [...cleaned];
  return points.length > max ? points.slice(0, max).join("").trimEnd() : cleaned;
}

/**
 * Whether a name would read as an address or a Matrix ID: it has an `@` once compatibility
 * forms are folded (NFKC, UAX #15), so `＠` (U+FF20 FULLWIDTH COMMERCIAL AT), `﹫` (U+FE6B SMALL
 * COMMERCIAL AT) and anything else NFKC maps to `@` count as `@`.
 * @param name a display name (any normalisation form)
 * @returns true when the name has an at sign in any of those spellings
 */
export function nameHasAtSign(name: string): boolean {
  return name.normalize("NFKC").includes("@");
}

/**
 * Whether `name` imitates the bridge bot's name: equal to it after NFKC folding (fullwidth and
 * other compatibility forms, UAX #15), case folding and trimming.
 * @param name a cleaned display name
 * @param botDisplayName the bot's configured display name
 */
function imitatesBot(name: string, botDisplayName: string): boolean {
  const fold = (n: string): string => n.normalize("NFKC").replace(/\s+/gu, " ").trim().toLowerCase();
  return fold(name) === fold(botDisplayName);
}

/** What a ghost needs to reach Matrix and the store. */
export interface GhostContext {
  store: Pick<BridgeStore, "getGhostByAddress" | "upsertGhost">;
  matrix: Pick<MatrixActions, "ensureGhost">;
  ids: IdContext;
  /** The bridge bot's display name: no ghost may take it. */
  botDisplayName: string;
}

/** One ghost of an address: verified or unverified. */
export class Ghost {
  /** Normalised email address. */
  readonly address: string;
  /** Whether this is the verified ghost (authenticated mail only). */
  readonly verified: boolean;
  /** Matrix user ID. */
  readonly userId: string;
  /** Unverified ghosts whose fixed name was set by this process. */
  static readonly #namedUnverified = new Set<string>();

  private constructor(address: string, verified: boolean, userId: string) {
    this.address = address;
    this.verified = verified;
    this.userId = userId;
  }

  /**
   * The ghost of `address`.
   * @param address a normalised address (bridge/ids.ts `normalizeAddress`)
   * @param verified which of its two ghosts
   * @throws InvalidAddressError when the address cannot be a ghost
   */
  static of(address: string, verified: boolean, ids: IdContext): Ghost {
    return new Ghost(address, verified, verified ? ghostUserId(address, ids) : unverifiedGhostUserId(address, ids));
  }

  /**
   * The ghost a user ID stands for.
   * @returns null when `userId` is not a ghost of this bridge
   */
  static fromUserId(userId: string, ids: IdContext): Ghost | null {
    const parsed = parseGhost(userId, ids);
    return parsed ? Ghost.of(parsed.address, parsed.verified, ids) : null;
  }

  /** The fixed display name of an unverified ghost. */
  get unverifiedName(): string {
    return `${this.address} (unverified)`;
  }

  /**
   * The display name this ghost should carry when `claimed` is the name its mail gave.
   * Unverified: always `<address> (unverified)`. Verified: the cleaned claimed name, or the
   * address when the claim is empty, contains `@` in any spelling NFKC folds to it (`＠`, `﹫`:
   * it would read as another address or a Matrix ID, {@link nameHasAtSign}), or is the bridge
   * bot's name (compared after NFKC and case folding).
   */
  displayNameFor(claimed: string | null, botDisplayName: string): string {
    if (!this.verified) return this.unverifiedName;
    const name = cleanDisplayName(claimed);
    if (!name || nameHasAtSign(name) || imitatesBot(name, botDisplayName)) return this.address;
    return name;
  }

  /**
   * Register the ghost on the homeserver if needed and bring its profile up to date.
   * Only a verified ghost's name follows mail: pass the From name of AUTHENTICATED mail as
   * `claimed`, or null to keep the name it has (the address for a new ghost).
   * @throws the homeserver's error when registering or setting the name fails
   */
  async ensureProfile(ctx: GhostContext, claimed: string | null = null): Promise<void> {
    if (!this.verified) {
      // Its name never changes: set once per process (setting it again is harmless).
      await ctx.matrix.ensureGhost(this.userId, this.unverifiedName, Ghost.#namedUnverified.has(this.userId) ? this.unverifiedName : null);
      Ghost.#namedUnverified.add(this.userId);
      return;
    }
    const known = await ctx.store.getGhostByAddress(this.address);
    const wanted = claimed !== null ? this.displayNameFor(claimed, ctx.botDisplayName) : (known?.displayName ?? this.address);
    await ctx.matrix.ensureGhost(this.userId, wanted, known?.displayName ?? null);
    if (!known || known.displayName !== wanted) await ctx.store.upsertGhost({ address: this.address, userId: this.userId, displayName: wanted });
  }

  /** The display name the homeserver should give when it asks about this ghost (appservice user query). */
  async queryName(ctx: Pick<GhostContext, "store">): Promise<string> {
    if (!this.verified) return this.unverifiedName;
    return (await ctx.store.getGhostByAddress(this.address))?.displayName ?? this.address;
  }
}
