/**
 * Addressing: the bridge's mail domains, aliases and room mailboxes, with the rules that keep
 * them apart. The bot commands (`commands/addresses.ts`, `mailbox on|off`) and the admin HTTP
 * API change addresses only through this class; the inbound router reads them from the store.
 *
 * The model (docs/user-guide.md "Addresses"):
 * - `mail.domain` is the primary domain (not stored, never removed); more domains are stored
 *   (`mail_domains`, migration 10). Room mailboxes (`team@`) and personal mailboxes (`alice@`)
 *   exist on every one of them; outbound mail always comes from the primary domain.
 * - an alias is `local@domain` (or `*@domain`, the domain's catch-all) with one or more targets:
 *   rooms with a room mailbox, or local users (their personal mailbox). One address, several
 *   targets: the mail goes to each (1:N).
 * - `name+tag@` (RFC 5233 subaddressing) reaches `name`'s mailbox or alias, the tag shown.
 *
 * Who may change what is the caller's business (room power level, admin token); this class
 * checks that the change itself is sound.
 */
import { domainToASCII } from "node:url";
import { MailboxTakenError, type BridgeStore, type MailAliasRow, type MailboxPolicy, type RoomMailboxRow } from "../store/Store.ts";
import { RESERVED_LOCALPARTS, isBridgeUser, mailboxUserId, usableLocalpart, type IdContext } from "./ids.ts";
import { portalOf } from "./Portal.ts";
import type { MatrixActions } from "./ports.ts";
import { getLogger } from "../util/logger.ts";

const log = getLogger("bridge/addressing");

export { RESERVED_LOCALPARTS, usableLocalpart } from "./ids.ts";

/**
 * Whether a local user's personal address is given out to a room mailbox or an alias (a user
 * registered after it was): mail from that user would speak for the room or the alias's
 * owners, and replies would go there. A personal address is then not used to send.
 * @param address the user's personal address (`ids.ts` personalAddress), on the primary domain
 * @throws the store's error
 */
export async function personalAddressTaken(store: Pick<BridgeStore, "getRoomMailboxByLocalpart" | "listMailAliases">, address: string): Promise<boolean> {
  const localpart = address.slice(0, address.lastIndexOf("@"));
  return (await store.getRoomMailboxByLocalpart(localpart)) !== null || (await store.listMailAliases({ address })).length > 0;
}

/** Most targets one alias may have: bounds the work one RCPT TO can cause. */
export const MAX_ALIAS_TARGETS = 50;

/** How long {@link Addressing.isLocalDomain} trusts its list of domains, in ms (changes made through this instance apply at once). */
const DOMAIN_CACHE_MS = 30_000;

/** A mail domain of the bridge. */
export interface MailDomain {
  /** Lower-case domain name (IDNs as A-labels). */
  domain: string;
  /** True for `mail.domain`: it cannot be removed, and outbound mail comes from it. */
  primary: boolean;
  /** Who added it; null for the primary domain. */
  createdBy: string | null;
  /** When it was added (epoch ms); null for the primary domain. */
  createdAt: number | null;
}

/** One target of an alias: `address` delivers to `target` (a room ID or a local user ID). */
export type MailAlias = MailAliasRow;

/** A room mailbox as listed: its address on the primary domain. */
export interface RoomMailboxEntry {
  address: string;
  roomId: string;
  policy: MailboxPolicy;
}

/**
 * A refused change, with a message fit to show the user who asked. `code`: `invalid` (the
 * input is unusable), `conflict` (the address is taken or reserved), `not_found`.
 */
export class AddressingError extends Error {
  readonly code: "invalid" | "conflict" | "not_found";
  constructor(code: "invalid" | "conflict" | "not_found", message: string) {
    super(message);
    this.name = "AddressingError";
    this.code = code;
  }
}

/** Options of {@link Addressing}. */
export interface AddressingOptions {
  store: BridgeStore;
  matrix: Pick<MatrixActions, "botUserId" | "userExists" | "joinedRooms" | "isEncrypted" | "bridgesEncryptedRooms">;
  ids: IdContext;
  /** Whether a Matrix user may use the bridge (`permissions.allowed_users`): only they can be alias targets. */
  mayBridge: (userId: string) => boolean;
}

/** The bridge's mail domains, aliases and room mailboxes. */
export class Addressing {
  private readonly opts: AddressingOptions;
  /** The stored domains and when that list expires (epoch ms); null: read it again. */
  private domains: { names: Set<string>; until: number } | null = null;

  constructor(opts: AddressingOptions) {
    this.opts = opts;
  }

  /** The primary mail domain (`mail.domain`). */
  get primaryDomain(): string {
    return this.opts.ids.mailDomain;
  }

  /** Every mail domain, the primary first, then the others by name. */
  async listDomains(): Promise<MailDomain[]> {
    const stored = await this.opts.store.listMailDomains();
    return [
      { domain: this.primaryDomain, primary: true, createdBy: null, createdAt: null },
      ...stored.map((d) => ({ domain: d.domain, primary: false, createdBy: d.createdBy, createdAt: d.createdAt })),
    ];
  }

  /**
   * Add a mail domain. Mail arrives once the domain's MX record names this bridge's SMTP host
   * (`smtp.hostname`); outbound mail still comes from the primary domain.
   * @param by who adds it (a Matrix user ID, or what the admin API names)
   * @returns the new domain
   * @throws AddressingError `invalid` for a name that is no domain, `conflict` when it is one of ours already
   */
  async addDomain(domain: string, by: string): Promise<MailDomain> {
    const name = normalizeDomain(domain);
    if (name === this.primaryDomain || !(await this.opts.store.addMailDomain(name, by))) {
      throw new AddressingError("conflict", `${name} is already a mail domain of this bridge`);
    }
    this.domains = null;
    log.info("mail domain added", { domain: name, by });
    const row = (await this.opts.store.listMailDomains()).find((d) => d.domain === name);
    return { domain: name, primary: false, createdBy: by, createdAt: row?.createdAt ?? Date.now() };
  }

  /**
   * Remove a mail domain and every alias on it.
   * @returns false when it was not one of ours
   * @throws AddressingError `invalid` for the primary domain or a name that is no domain
   */
  async removeDomain(domain: string): Promise<boolean> {
    const name = normalizeDomain(domain);
    if (name === this.primaryDomain) throw new AddressingError("invalid", `${name} is the bridge's primary mail domain (mail.domain) and cannot be removed`);
    const removed = await this.opts.store.removeMailDomain(name);
    this.domains = null;
    if (removed) log.info("mail domain removed", { domain: name });
    return removed;
  }

  /**
   * Whether mail for `domain` is ours to take (the SMTP listener's relay check, RFC 5321 §3.6.2).
   * Answers from a list kept for 30 s; changes made through this instance apply at once.
   * @param domain lower-case, IDNs as A-labels
   * @throws the store's error when the list cannot be read (the listener answers 451)
   */
  async isLocalDomain(domain: string): Promise<boolean> {
    if (domain === this.primaryDomain) return true;
    const now = Date.now();
    if (!this.domains || this.domains.until <= now) {
      const names = new Set((await this.opts.store.listMailDomains()).map((d) => d.domain));
      this.domains = { names, until: now + DOMAIN_CACHE_MS };
    }
    return this.domains.names.has(domain);
  }

  /** Aliases, by address then target; `filter` narrows them to a domain and/or a target. */
  async listAliases(filter: { domain?: string; target?: string } = {}): Promise<MailAlias[]> {
    return this.opts.store.listMailAliases({
      ...(filter.domain !== undefined ? { domain: normalizeDomain(filter.domain) } : {}),
      ...(filter.target !== undefined ? { target: filter.target } : {}),
    });
  }

  /**
   * Make `address` deliver to `target` too. The address is on one of our domains, its localpart
   * usable (or `*`: the domain's catch-all), not reserved, and not the address of a room mailbox
   * or of an existing user's personal mailbox (those exist on every domain already). The target
   * is a room with a room mailbox that the bot is in, or a local user allowed to bridge.
   * @param by who adds it
   * @returns the new alias row
   * @throws AddressingError `invalid` or `conflict` (the message says why); the store's or the
   *   homeserver's error when they cannot be asked
   */
  async addAlias(address: string, target: string, by: string): Promise<MailAlias> {
    const { localpart, domain, full } = this.parseAddress(address);
    if (!(await this.knownDomain(domain))) throw new AddressingError("invalid", `${domain} is not a mail domain of this bridge`);
    if (localpart !== "*") await this.checkFreeLocalpart(localpart, full);
    await this.checkTarget(target);
    const existing = await this.opts.store.listMailAliases({ address: full });
    if (existing.some((a) => a.target === target)) throw new AddressingError("conflict", `${full} already delivers to ${target}`);
    if (existing.length >= MAX_ALIAS_TARGETS) throw new AddressingError("invalid", `${full} has ${existing.length} targets already, the most an alias may have`);
    const row = await this.opts.store.addMailAlias(full, target, by);
    log.info("alias added", { address: full, target, by });
    return row;
  }

  /**
   * Remove `address`'s target `target`, or all its targets when `target` is omitted.
   * @returns how many targets were removed (0: there was no such alias)
   * @throws AddressingError `invalid` for an address that cannot be one
   */
  async removeAlias(address: string, target?: string): Promise<number> {
    const { full } = this.parseAddress(address);
    const removed = await this.opts.store.removeMailAliases(target === undefined ? { address: full } : { address: full, target });
    if (removed > 0) log.info("alias removed", { address: full, target, removed });
    return removed;
  }

  /** Every room mailbox with its address on the primary domain, by localpart. */
  async listMailboxes(): Promise<RoomMailboxEntry[]> {
    return (await this.opts.store.listRoomMailboxes()).map((m) => ({ address: `${m.localpart}@${this.primaryDomain}`, roomId: m.roomId, policy: m.policy }));
  }

  /**
   * Give a room the mailbox `localpart` (on every mail domain), replacing its previous one, and
   * make the room a mailbox portal. The room must be unencrypted (the bridge cannot post into
   * encrypted rooms) and have the bot in it; the localpart must be usable, not reserved, not
   * an alias, and not an existing user's personal mailbox.
   * @param by the Matrix user (or admin API caller) who turns it on
   * @returns the mailbox
   * @throws AddressingError `invalid` or `conflict` (also when another room has it); the store's
   *   or the homeserver's error when they cannot be asked
   */
  async setRoomMailbox(roomId: string, localpart: string, by: string): Promise<RoomMailboxRow> {
    const name = localpart.toLowerCase();
    const { store, matrix } = this.opts;
    if (!(await matrix.joinedRooms(matrix.botUserId)).includes(roomId)) throw new AddressingError("invalid", `the bridge bot is not in ${roomId}`);
    const encrypted = await matrix.isEncrypted(roomId);
    if (encrypted && !matrix.bridgesEncryptedRooms()) throw new AddressingError("invalid", "this room is end-to-end encrypted, and this homeserver does not give the bridge what it needs to post into encrypted rooms (docs/encryption.md)");
    const current = await store.getRoomMailboxByRoom(roomId);
    if (current?.localpart !== name) await this.checkFreeLocalpart(name, `${name}@${this.primaryDomain}`, roomId);
    let row: RoomMailboxRow;
    try {
      row = await store.setRoomMailbox(name, roomId, by);
    } catch (err) {
      if (err instanceof MailboxTakenError) throw new AddressingError("conflict", `${name}@${this.primaryDomain} already belongs to another room`);
      throw err;
    }
    const portal = await store.getPortalByRoom(roomId);
    await store.upsertPortal({ roomId, kind: "mailbox", localUserId: null, remoteAddress: null, subject: portal?.subject ?? null, encrypted, remoteVerified: true });
    log.info("room mailbox set", { roomId, localpart: name, by });
    return row;
  }

  /**
   * Remove a room's mailbox and every alias that delivers to the room; the room becomes a
   * group portal (its email participants still get its messages).
   * @returns false when the room had no mailbox (its aliases, if any, are removed all the same)
   */
  async removeRoomMailbox(roomId: string): Promise<boolean> {
    const { store } = this.opts;
    const removed = await store.removeRoomMailbox(roomId);
    const aliases = await store.removeMailAliases({ target: roomId });
    const row = await store.getPortalByRoom(roomId);
    const portal = row ? portalOf(row) : null;
    if (portal?.kind === "mailbox") await store.upsertPortal(portal.withoutMailbox());
    if (removed || aliases > 0) log.info("room mailbox removed", { roomId, aliases });
    return removed;
  }

  /**
   * Read an address as given by a user: `name` (on the primary domain) or `name@domain`,
   * lower-cased; `*@domain` is a catch-all.
   * @throws AddressingError `invalid` when it cannot be an address
   */
  parseAddress(input: string): { localpart: string; domain: string; full: string } {
    const s = input.trim().toLowerCase();
    const at = s.lastIndexOf("@");
    const localpart = at < 0 ? s : s.slice(0, at);
    const domain = at < 0 ? this.primaryDomain : normalizeDomain(s.slice(at + 1));
    if (localpart !== "*" && !usableLocalpart(localpart)) {
      throw new AddressingError("invalid", `"${localpart}" is not a usable address name: use 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit`);
    }
    return { localpart, domain, full: `${localpart}@${domain}` };
  }

  /** Whether `domain` is ours, read from the store (not the cache: a change must see the truth). */
  private async knownDomain(domain: string): Promise<boolean> {
    return domain === this.primaryDomain || (await this.opts.store.listMailDomains()).some((d) => d.domain === domain);
  }

  /**
   * That `localpart` may become a room mailbox (of `roomId`) or an alias (`full`).
   * @throws AddressingError `invalid` or `conflict`
   */
  private async checkFreeLocalpart(localpart: string, full: string, roomId?: string): Promise<void> {
    const { store, matrix, ids } = this.opts;
    if (!usableLocalpart(localpart)) {
      throw new AddressingError("invalid", `"${localpart}" is not a usable address name: use 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit`);
    }
    if (RESERVED_LOCALPARTS.has(localpart) || localpart === ids.botLocalpart || localpart.startsWith(ids.ghostPrefix)) {
      throw new AddressingError("conflict", `"${localpart}" is reserved`);
    }
    const room = await store.getRoomMailboxByLocalpart(localpart);
    if (room && room.roomId !== roomId) throw new AddressingError("conflict", `${full} is the address of a room mailbox (${localpart}@${this.primaryDomain})`);
    const owner = mailboxUserId(localpart, ids);
    if (owner && (await matrix.userExists(owner))) throw new AddressingError("conflict", `"${localpart}" is the personal address of ${owner}`);
    if (roomId !== undefined) {
      // A room mailbox exists on every domain: an alias with its name on any domain would be hidden by it.
      const alias = (await store.listMailAliases()).find((a) => a.address.slice(0, a.address.lastIndexOf("@")) === localpart);
      if (alias) throw new AddressingError("conflict", `${alias.address} is an alias already`);
    }
  }

  /**
   * That `target` can receive an alias's mail.
   * @throws AddressingError `invalid`
   */
  private async checkTarget(target: string): Promise<void> {
    const { store, matrix, ids } = this.opts;
    if (target.startsWith("!")) {
      if (!(await store.getRoomMailboxByRoom(target))) throw new AddressingError("invalid", `${target} has no room mailbox; turn it on first (\`!email mailbox on\`)`);
      if (!(await matrix.joinedRooms(matrix.botUserId)).includes(target)) throw new AddressingError("invalid", `the bridge bot is not in ${target}`);
      return;
    }
    const m = /^@([^:]+):(.+)$/.exec(target);
    if (!m || m[2] !== ids.serverName || isBridgeUser(target, ids) || mailboxUserId(m[1]!, ids) !== target) {
      throw new AddressingError("invalid", `an alias target is a room ID (!…) or a user of ${ids.serverName} (@name:${ids.serverName}), not ${JSON.stringify(target)}`);
    }
    if (!this.opts.mayBridge(target)) throw new AddressingError("invalid", `${target} is not allowed to use this bridge`);
    if (!(await matrix.userExists(target))) throw new AddressingError("invalid", `${target} does not exist`);
  }
}

/**
 * A domain name as the bridge keeps it: lower-case, IDNs as A-labels, no trailing dot.
 * @throws AddressingError `invalid` when it is no domain name with at least two labels
 */
export function normalizeDomain(domain: string): string {
  const ascii = domainToASCII(domain.trim().toLowerCase().replace(/\.$/, ""));
  if (!ascii || !/^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$/.test(ascii) || ascii.length > 253) {
    throw new AddressingError("invalid", `${JSON.stringify(domain)} is not a domain name`);
  }
  return ascii;
}
