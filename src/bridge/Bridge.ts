/**
 * Composition root: builds the store, the Matrix side, the inbound SMTP listener
 * and the outbound queue from a validated config, and wires them together.
 * No event logic lives here.
 */
import type { BridgeConfig } from "../config/schema.ts";
import type { BridgeStore } from "../store/Store.ts";
import { openStore } from "../store/open.ts";
import { loadRawCipher } from "../store/rawCipher.ts";
import { RawRetention } from "../store/retention.ts";
import { MatrixGateway } from "../matrix/MatrixGateway.ts";
import { readStoreKey } from "../matrix/e2ee/E2ee.ts";
import { DEVICE_REPLACED_NOTICE, MISSING_KEYS_NOTICE } from "./notices.ts";
import { SmtpListener } from "../mail/inbound/SmtpListener.ts";
import { OutboundQueue } from "../mail/outbound/OutboundQueue.ts";
import { deliverMail } from "../mail/outbound/deliver.ts";
import { poolOptionsFromConfig, SmtpPool } from "../mail/outbound/pool.ts";
import type { MxResolver } from "../mail/outbound/routes.ts";
import { loadDkimSigner } from "../mail/outbound/dkim.ts";
import { InboundRouter } from "./InboundRouter.ts";
import { ParseThread } from "../mail/inbound/parseThread.ts";
import { checkWithRspamd } from "../mail/inbound/rspamd.ts";
import { InboundPoster } from "./InboundPoster.ts";
import { ParsedMailCache } from "./ParsedMailCache.ts";
import { DsnService } from "./DsnService.ts";
import { NoticeService } from "./NoticeService.ts";
import { Subscriptions } from "./Subscriptions.ts";
import { Contacts } from "./Contacts.ts";
import { Addressing } from "./Addressing.ts";
import { OutboundHandler } from "./OutboundHandler.ts";
import { OneClickUnsubscribe, unsubscribeKey } from "./unsubscribeLinks.ts";
import { MediaLinks } from "./mediaLinks.ts";
import { Submission, isSubmissionEvent, submissionListenerConfig } from "./Submission.ts";
import { MatrixHandler, type MatrixEvent } from "./MatrixHandler.ts";
import { makeAccessCheck } from "./access.ts";
import { InvalidAddressError, normalizeAddress, type IdContext } from "./ids.ts";
import { Ghost } from "./Ghost.ts";
import { DnsResolver } from "../mail/dns.ts";
import { configureLogging, getLogger } from "../util/logger.ts";
import { BridgeMetrics } from "../util/metrics.ts";
import { startOperationsListener } from "./health.ts";
import { loadAdminToken } from "../admin/auth.ts";

const log = getLogger("bridge");

/** Things tests (or embedders) may replace. */
export interface BridgeOverrides {
  /** Use this store instead of opening the configured one (it is closed on stop). */
  store?: BridgeStore;
}

/** A running bridge. */
export interface RunningBridge {
  config: BridgeConfig;
  store: BridgeStore;
  /** Port the SMTP listener is bound to (config port, or the real port when 0). */
  smtpPort: number;
  /** Port the submission listener is bound to, or null when `submission.enabled` is off. */
  submissionPort: number | null;
  inbound: InboundPoster;
  outbound: OutboundQueue;
  /** The bridge's metrics (served on `/metrics` when `metrics.enabled`). */
  metrics: BridgeMetrics;
  /** Port of the metrics listener (the real one when `metrics.port` is 0), or null when `metrics.enabled` is off. */
  metricsPort: number | null;
  /** Mail domains, aliases and room mailboxes (the admin API and tests change them through it). */
  addressing: Addressing;
  /** Port of the admin API listener (the real one when `admin_api.port` is 0), or null when `admin_api.enabled` is off. */
  adminPort: number | null;
  /** Stop everything, in order: SMTP, Matrix, workers, outbound SMTP connections, metrics listener, store. */
  stop(): Promise<void>;
}

/** The identifier context of a config. */
export function idContext(config: BridgeConfig): IdContext {
  return {
    ghostPrefix: config.appservice.ghost_prefix,
    serverName: config.homeserver.domain,
    mailDomain: config.mail.domain.toLowerCase(),
    botLocalpart: config.appservice.bot_localpart,
    caseSensitiveLocalparts: config.mail.case_sensitive_localparts,
  };
}

/**
 * Start the bridge.
 * @throws Error when the DKIM key, a stored-mail key (`storage`, RawKeyError), the store or the
 *   homeserver is unusable (logged by the caller)
 */
export async function startBridge(config: BridgeConfig, overrides: BridgeOverrides = {}): Promise<RunningBridge> {
  configureLogging({ level: config.logging.level, format: config.logging.format });
  const ids = idContext(config);
  const mayBridge = makeAccessCheck(config.permissions.allowed_users, ids.serverName);
  const dkim = loadDkimSigner(config.dkim.private_key_file, ids.mailDomain, config.dkim.selector);
  // Stored mail is encrypted at rest when `storage` names a key (RawKeyError when a key is unusable).
  const cipher = loadRawCipher(config.storage);
  const store = overrides.store ?? (await openStore({
      url: config.database.url,
      sqliteFile: config.database.sqlite_file,
      cipher,
      timeouts: { connectMs: config.database.connect_timeout_ms, queryMs: config.database.query_timeout_ms },
    }));
  const storage = config.storage;
  const retention =
    storage.raw_retention_days === null
      ? null
      : new RawRetention({ store, retentionDays: storage.raw_retention_days, intervalMs: storage.purge_interval_ms, batchSize: storage.purge_batch_size });
  // The one resolver: every lookup (SPF, DKIM, DMARC, ARC, MX, PTR, DNSBL) goes through it.
  const dns = new DnsResolver({
    nameservers: config.dns.nameservers,
    timeoutMs: config.dns.timeout_ms,
    tries: config.dns.tries,
    cacheEntries: config.dns.cache_entries,
    cacheTtlMs: config.dns.cache_ttl_ms,
  });
  const resolver: MxResolver = (domain) => dns.resolveMx(domain);

  // The gateway's event sink needs the handler, and the handler needs the gateway: the sink
  // refuses events until the handler exists (they stay in the journal and are retried).
  let handler: MatrixHandler | null = null;
  // One-click unsubscribe links (RFC 8058), only with a public URL; made once the subscriptions exist.
  const publicUrl = config.appservice.public_url;
  let oneClick: OneClickUnsubscribe | null = null;
  // Links to files too large to attach, served on the same listener (./mediaLinks.ts); made once the gateway (its as_token) exists.
  let mediaLinks: MediaLinks | null = null;
  const matrix = await MatrixGateway.create({
    homeserverUrl: config.homeserver.url,
    serverName: ids.serverName,
    registrationFile: config.appservice.registration_file,
    botDisplayName: config.appservice.bot_displayname,
    bindAddress: config.appservice.bind_address,
    port: config.appservice.port,
    ...(publicUrl !== null
      ? {
          unsubscribe: {
            verify: (token: string) => oneClick?.verify(token) ?? false,
            unsubscribe: async (token: string) => {
              if (!oneClick) throw new Error("one-click unsubscribe before the bridge is set up");
              return oneClick.unsubscribe(token);
            },
          },
          media: {
            resolve: (token: string, name: string) => mediaLinks?.read(token, name)?.mxc ?? null,
            open: (mxc: string) => matrix.openContent(mxc),
          },
        }
      : {}),
    // Transactions are journaled in the store before their 200 (migration 4).
    journal: store,
    // End-to-end-encrypted rooms: devices and their crypto state in the store (migration 12; docs/encryption.md).
    e2ee: {
      enabled: config.encryption.enabled,
      deviceId: config.encryption.device_id,
      storeKey: readStoreKey(config.encryption.store_key_file, config.encryption.store_key_env),
      state: store,
      ghostsInMemory: config.encryption.ghost_devices_in_memory,
      notices: { missingKeys: MISSING_KEYS_NOTICE, deviceReplaced: DEVICE_REPLACED_NOTICE },
    },
    sink: {
      onMatrixEvent: async (event) => {
        // Thrown, not skipped: the event stays in the journal and is retried.
        if (!handler) throw new Error("Matrix event before the Matrix handler exists");
        await handler.onEvent(event as unknown as MatrixEvent);
      },
      onUserQuery: async (userId) => {
        const ghost = Ghost.fromUserId(userId, ids);
        return ghost ? { displayName: await ghost.queryName({ store }) } : null;
      },
      // Only verified ghosts: an address's own ghost, the one that speaks for it.
      thirdPartyUserId: (address) => {
        try {
          return Ghost.of(normalizeAddress(address, { caseSensitiveLocalparts: ids.caseSensitiveLocalparts }), true, ids).userId;
        } catch (err) {
          if (err instanceof InvalidAddressError) return null;
          throw err;
        }
      },
      thirdPartyAddress: (userId) => {
        const ghost = Ghost.fromUserId(userId, ids);
        return ghost?.verified ? ghost.address : null;
      },
      isPortalRoom: async (roomId) => (await store.getPortalByRoom(roomId)) !== null,
    },
  });

  const notices = new NoticeService({ store, matrix, ids });
  // Mail local users submit from mail clients (submission port); router and queue are made below.
  const submission = new Submission({
    store,
    matrix,
    ids,
    mayBridge,
    dkim,
    resolveMailbox: (address) => router.resolveMailbox(address),
    notices,
    onQueued: () => queue.kick(),
    limits: { mailsPerHour: config.outbound.max_mails_per_user_per_hour, newRecipientsPerDay: config.outbound.max_new_recipients_per_user_per_day },
  });
  /** The notices of the outbound queue go into the mail's room, as replies to its event. */
  const outboundNotice = async (roomId: string, text: string, eventId: string, envelopeFrom: string): Promise<void> => {
    // Submitted mail has no Matrix event: its portal (or the sender's DM with the bot) hears it.
    if (isSubmissionEvent(eventId)) return submission.notice(roomId, envelopeFrom, text);
    // A DSN the bridge sent has no room: a bounce of a bounce is dropped (RFC 5321 §6.2).
    if (!roomId) {
      log.warn("a DSN the bridge sent could not be delivered", { eventId, text });
      return;
    }
    await notices.post(roomId, text, eventId);
  };
  const utcMinute = (ms: number): string => new Date(ms).toISOString().replace("T", " ").slice(0, 16) + " UTC";
  // prom-client's process metrics (an event-loop delay histogram, a GC observer) only when
  // /metrics is served: with metrics off nobody reads them.
  const metrics = new BridgeMetrics({ queueSizes: () => store.queueCounts(), processMetrics: config.metrics.enabled });
  // Outbound SMTP connections, reused across deliveries; closed on stop, after the queue.
  const smtpPool = new SmtpPool(poolOptionsFromConfig(config.outbound));
  const queue = new OutboundQueue({
    store,
    deliver: (raw, envelope) =>
      deliverMail(raw, envelope, {
        outbound: config.outbound,
        heloName: config.outbound.helo_name ?? config.smtp.hostname,
        resolver,
        addressResolver: (host, rrtype) => dns.resolve(host, rrtype),
        pool: smtpPool,
      }),
    maxRetryHours: config.outbound.max_retry_hours,
    delayWarningHours: config.outbound.delay_warning_hours,
    concurrency: config.outbound.concurrency,
    onRecipientResult: (outcome) => metrics.outboundDelivery(outcome),
    // With a public URL, each recipient gets a copy with its own one-click link (RFC 8058).
    ...(publicUrl !== null
      ? {
          copyFor: (mail: { roomId: string; eventId: string; raw: Buffer }, address: string) => {
            if (!oneClick) throw new Error("outbound delivery before the bridge is set up");
            return oneClick.copyFor(mail, address);
          },
        }
      : {}),
    onRecipientsFailed: async (mail, failures) => {
      const lines = failures.map((f) => `• ${f.address}: ${f.reply}`).join("\n");
      await outboundNotice(mail.roomId, `⚠️ This message could not be delivered by email to:\n${lines}`, mail.eventId, mail.envelopeFrom);
    },
    onDelayed: async (mail, recipients, giveUpAt) => {
      const until = utcMinute(giveUpAt);
      const lines = recipients.map((r) => `⏳ Delivery to ${r.address} is delayed: ${r.reply}; still trying until ${until}`).join("\n");
      await outboundNotice(mail.roomId, lines, mail.eventId, mail.envelopeFrom);
    },
  });
  if (publicUrl !== null) mediaLinks = new MediaLinks({ asToken: matrix.appserviceToken, publicUrl, days: config.outbound.media_link_days });
  const outboundHandler = new OutboundHandler({
    store,
    matrix,
    ids,
    dkim,
    onQueued: () => queue.kick(),
    limits: { mailsPerHour: config.outbound.max_mails_per_user_per_hour, newRecipientsPerDay: config.outbound.max_new_recipients_per_user_per_day },
    maxAttachmentBytes: config.outbound.max_attachment_bytes,
    mediaLinks,
    mailNotices: config.outbound.mail_notices,
    batchDelayMs: config.outbound.batch_delay_ms,
  });
  const botDisplayName = config.appservice.bot_displayname;
  const contacts = new Contacts({ store, matrix });
  const addressing = new Addressing({ store, matrix, ids, mayBridge });
  handler = new MatrixHandler({ store, matrix, ids, mayBridge, outbound: outboundHandler, botDisplayName, notices, contacts, addressing });
  const subscriptions = new Subscriptions({
    store,
    ids,
    dkim,
    onQueued: () => queue.kick(),
    // The address's ghost leaves (a DM or group portal shows who still gets mail), and the room hears why.
    onOptedOut: async (roomId, address) => {
      const ghost = Ghost.of(address, true, ids).userId;
      if ((await matrix.joinedMembers(roomId)).includes(ghost)) await matrix.leave(roomId, ghost, "unsubscribed from this room's mail");
      await notices.post(roomId, `📭 ${address} unsubscribed from this room's mail. The bridge sends them nothing more from this room.`);
    },
  });
  if (publicUrl !== null) oneClick = new OneClickUnsubscribe({ key: unsubscribeKey(matrix.appserviceToken), publicUrl, dkim, store, subscriptions });
  const dsn = new DsnService({ store, ids, dkim, hostname: config.smtp.hostname, onQueued: () => queue.kick() });
  // Parse once: the router's DATA-time parse of each committed row, taken by the poster.
  const parsed = new ParsedMailCache();
  // Parsing received mail: a large message in a worker thread with a deadline (mail/inbound/parseThread.ts).
  const parseThread = new ParseThread({ timeoutMs: config.smtp.parse_timeout_ms });
  const poster = new InboundPoster({
    parse: (raw) => parseThread.parse(raw),
    parsed,
    store,
    matrix,
    ids,
    botDisplayName,
    settings: {
      retryHours: config.inbound.retry_hours,
      retryBaseMs: config.inbound.retry_base_ms,
      retryMaxMs: config.inbound.retry_max_ms,
      concurrency: config.inbound.concurrency,
      maxTextBytes: config.inbound.max_text_bytes,
    },
    notices,
    adminRoom: config.permissions.admin_room,
    onUndeliverable: (row, why) => dsn.undeliverable(row, why),
    onResult: (outcome) => metrics.inboundPost(outcome),
  });
  const router = new InboundRouter({
    parse: (raw, skeleton) => parseThread.parse(skeleton ?? raw),
    parsed,
    store,
    matrix,
    ids,
    mayBridge,
    hostname: config.smtp.hostname,
    onCommitted: () => poster.kick(),
    isLocalDomain: (domain) => addressing.isLocalDomain(domain),
    contacts,
    subscriptions,
    admins: { roomId: config.permissions.admin_room, users: config.permissions.admins },
    auth: {
      lookup: dns.lookup,
      policy: { enforceDmarcReject: config.auth.enforce_dmarc_reject, unverified: config.auth.unverified, deferOnDnsError: config.auth.defer_on_dns_error },
      trustedArcSealers: config.auth.trusted_arc_sealers,
      minKeyBits: config.auth.min_dkim_key_bits,
    },
    spam: config.spam.rspamd_url
      ? {
          check: (raw, envelope) => checkWithRspamd({ url: config.spam.rspamd_url!, timeoutMs: config.spam.timeout_ms }, raw, envelope),
          onError: config.spam.on_error,
        }
      : null,
  });
  const smtp = new SmtpListener({
    config: config.smtp,
    mailDomain: ids.mailDomain,
    isLocalDomain: (domain) => addressing.isLocalDomain(domain),
    handler: router,
    dns,
    onReply: (code) => metrics.smtpReply(code),
  });
  // The submission listener and the admin API are loaded only when turned on (both are off by
  // default): an idle bridge does not keep their code.
  const submissionListener = config.submission.enabled
    ? new (await import("../mail/submission/SubmissionListener.ts")).SubmissionListener({ config: submissionListenerConfig(config), handler: submission })
    : null;
  // Up before the homeserver wait, so /health says what is not up yet.
  const appserviceAddress = { bindAddress: config.appservice.bind_address, port: config.appservice.port };
  const ops = config.metrics.enabled ? await startOperationsListener({ config: config.metrics, metrics, store, smtp, submission: submissionListener, appservice: appserviceAddress }) : null;
  // The admin API (docs/admin-api.md): the same queue actions, addressing and inbound router as the rest.
  const admin = config.admin_api.enabled
    ? await (await import("../admin/AdminApi.ts")).startAdminApi({
        bindAddress: config.admin_api.bind_address,
        port: config.admin_api.port,
        token: loadAdminToken(config.admin_api),
        deps: {
          store,
          addressing,
          inject: { router, mailDomain: ids.mailDomain, isLocalDomain: (domain) => addressing.isLocalDomain(domain), hostname: config.smtp.hostname },
          kick: (direction) => (direction === "inbound" ? poster.kick() : queue.kick()),
        },
      })
    : null;

  // Mail is accepted before the homeserver answers: a bridge (re)started during a homeserver
  // outage takes room-mailbox mail into its queue (personal mailboxes get 451 until the
  // homeserver can say who exists), and posts it once the homeserver is back.
  await matrix.open();
  poster.start();
  queue.start();
  retention?.start();
  const { port: smtpPort } = await smtp.listen();
  const submissionPort = submissionListener ? (await submissionListener.listen()).port : null;
  await matrix.start(Number.POSITIVE_INFINITY);
  if (!config.permissions.admin_room && config.permissions.admins.length === 0) {
    log.warn("no postmaster: mail to postmaster@ and abuse@ is refused until permissions.admins or permissions.admin_room is set (RFC 5321 §4.5.1)", {});
  }
  log.info("bridge started", {
    store: store.engine,
    smtp: `${config.smtp.bind_address}:${smtpPort}`,
    mailDomain: ids.mailDomain,
    outbound: config.outbound.mode,
    rawRetentionDays: config.storage.raw_retention_days,
  });

  return {
    config,
    store,
    smtpPort,
    submissionPort,
    inbound: poster,
    outbound: queue,
    metrics,
    metricsPort: ops?.port ?? null,
    addressing,
    adminPort: admin?.port ?? null,
    async stop() {
      await smtp.close();
      await submissionListener?.close();
      // The listeners waited for the deliveries in flight: no parse is left to wait for.
      await parseThread.close();
      await matrix.stop();
      await poster.stop();
      await queue.stop();
      smtpPool.close();
      await retention?.stop();
      await ops?.close();
      await admin?.close();
      await store.close();
      log.info("bridge stopped");
    },
  };
}
