/**
 * Telling a sender that a mail the bridge accepted (250) cannot be delivered into Matrix:
 * a DSN (RFC 3464 `multipart/report`), from the null reverse-path, DKIM-signed, queued on the
 * outbound queue like any other mail (so it survives restarts and remote MTA outages).
 *
 * Never in answer to a null reverse-path, a mailer-daemon, an `Auto-Submitted` mail, or a report
 * (RFC 3834 §2, RFC 5321 §6.2): those are given up with a log line only. List mail does get one:
 * lists rely on bounces to their envelope sender to drop dead addresses.
 */
import type { BridgeStore, QueuedInbound } from "../store/Store.ts";
import { composeDsn, mayBounce } from "../mail/dsn.ts";
import { signWithDkim, type DkimSigner } from "../mail/outbound/compose.ts";
import { parseMail } from "../mail/inbound/parse.ts";
import { mintMessageId, personalAddress, type IdContext } from "./ids.ts";
import type { Undeliverable } from "./InboundPoster.ts";
import { getLogger } from "../util/logger.ts";

const log = getLogger("bridge/dsn");

/** Options of {@link DsnService}. */
export interface DsnServiceOptions {
  store: Pick<BridgeStore, "enqueueOutbound" | "getRoomMailboxByRoom" | "getPortalByRoom" | "readInboundRaw">;
  ids: IdContext;
  /** Signs the DSN with the bridge's key (`d=` the mail domain), or null for none. */
  dkim: DkimSigner | null;
  /** The MX host name: the DSN's Reporting-MTA. */
  hostname: string;
  /** Wake the outbound queue. */
  onQueued: () => void;
}

/** The header section of a stored message (the part before the first empty line). */
function headerSection(raw: Buffer): Buffer {
  const crlf = raw.indexOf("\r\n\r\n");
  const lf = raw.indexOf("\n\n");
  const end = crlf >= 0 && (lf < 0 || crlf < lf) ? crlf + 2 : lf >= 0 ? lf + 1 : raw.length;
  return raw.subarray(0, end);
}

/** Sends failure DSNs for inbound mail the bridge gives up. */
export class DsnService {
  private readonly opts: DsnServiceOptions;

  constructor(opts: DsnServiceOptions) {
    this.opts = opts;
  }

  /**
   * Queue a failure DSN for `row` to its envelope sender, unless RFC 3834 says not to answer.
   * Idempotent: the DSN is keyed by the row (`dsn:inbound:<id>`), so a retry queues it once.
   * @throws the store's error when it cannot be queued (the caller keeps the row and retries)
   */
  async undeliverable(row: QueuedInbound, why: Undeliverable): Promise<void> {
    // The header section is in the first chunk of a stored mail (RFC 3462: the DSN returns only the headers).
    const stored = await this.opts.store.readInboundRaw(row.id);
    const headers = headerSection(stored?.head ?? Buffer.alloc(0));
    const mail = await parseMail(headers);
    const contentType = /^content-type:\s*([^\r\n;]+)/im.exec(headers.toString("latin1"))?.[1]?.trim() ?? null;
    const ctx = { inbound: row.id, messageId: row.messageId, envelopeFrom: row.envelopeFrom ?? "<>" };
    if (!row.envelopeFrom || !mayBounce(row.envelopeFrom, { autoSubmitted: mail.autoSubmitted, contentType })) {
      log.info("no DSN for an undeliverable mail (null sender, automatic mail or a report)", ctx);
      return;
    }
    const messageId = mintMessageId(this.opts.ids.mailDomain);
    const unsigned = await composeDsn({
      reportingMta: this.opts.hostname,
      fromAddress: `mailer-daemon@${this.opts.ids.mailDomain}`,
      to: row.envelopeFrom,
      arrivalDate: new Date(row.receivedAt),
      recipients: [{ address: await this.finalRecipient(row), status: why.status, diagnostic: `X-Matrix; ${why.diagnostic}` }],
      humanText: [
        `This is the mail system at ${this.opts.hostname}.`,
        "",
        "Your message was accepted, but it could not be delivered into the Matrix room it was",
        `addressed to: ${why.diagnostic}.`,
        "",
        "The headers of your message are attached.",
      ].join("\r\n"),
      originalHeaders: headers,
      messageIdDomain: this.opts.ids.mailDomain,
      messageId,
    });
    const raw = this.opts.dkim ? await signWithDkim(unsigned, this.opts.dkim) : unsigned;
    const { duplicate } = await this.opts.store.enqueueOutbound({
      roomId: "",
      eventId: `dsn:inbound:${row.id}`,
      messageId,
      envelopeFrom: "",
      recipients: [row.envelopeFrom],
      raw,
    });
    if (!duplicate) {
      log.info("DSN queued for an undeliverable mail", { ...ctx, status: why.status });
      this.opts.onQueued();
    }
  }

  /** The bridge mailbox the mail was for (RFC 3464 §2.3.2 Final-Recipient): the room's, or the DM owner's personal one. */
  private async finalRecipient(row: QueuedInbound): Promise<string> {
    const { store, ids } = this.opts;
    const owner = row.dmLocalUserId ?? (row.roomId ? (await store.getPortalByRoom(row.roomId))?.localUserId : null) ?? null;
    const personal = owner ? personalAddress(owner, ids) : null;
    if (personal) return personal;
    const mailbox = row.roomId ? await store.getRoomMailboxByRoom(row.roomId) : null;
    return mailbox ? `${mailbox.localpart}@${ids.mailDomain}` : `postmaster@${ids.mailDomain}`;
  }
}
