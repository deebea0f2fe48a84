/**
 * The store's migrations, in order. Append new ones; never edit or reorder applied ones.
 */
import { sql001Initial } from "./001-initial.ts";
import { sql002SenderAuth } from "./002-sender-auth.ts";
import { sql003OutboundRecipients } from "./003-outbound-recipients.ts";
import { sql004AppserviceTransactions } from "./004-appservice-transactions.ts";
import { sql005RawAtRest } from "./005-raw-at-rest.ts";
import { sql006OutboundBatches } from "./006-outbound-batches.ts";
import { sql007Unsubscribe } from "./007-unsubscribe.ts";
import { sql008ContactRules } from "./008-contact-rules.ts";
import { sql009ContactRequests } from "./009-contact-requests.ts";
import { sql010Addressing } from "./010-addressing.ts";
import { sql011AppPasswords } from "./011-app-passwords.ts";
import { sql012CryptoStore } from "./012-crypto-store.ts";
import { sql013RawChunks } from "./013-raw-chunks.ts";

/** One schema migration. */
export interface Migration {
  /** Schema version after this migration; consecutive from 1. */
  version: number;
  /** One line for logs. */
  description: string;
  /** Statements in the shared dialect (`$n` placeholders not allowed; `{{MARKERS}}` are). */
  sql: string;
}

/** All migrations, ordered by version. */
export const MIGRATIONS: readonly Migration[] = [
  { version: 1, description: "initial schema", sql: sql001Initial },
  { version: 2, description: "sender authentication verdicts, participants, content-hash dedupe", sql: sql002SenderAuth },
  { version: 3, description: "per-recipient outbound delivery state, delay warnings", sql: sql003OutboundRecipients },
  { version: 4, description: "journal of appservice transactions and their Matrix events", sql: sql004AppserviceTransactions },
  { version: 5, description: "retention of stored mail: raw_purged_at", sql: sql005RawAtRest },
  { version: 6, description: "outbound batching: batch_key, batch_state", sql: sql006OutboundBatches },
  { version: 7, description: "unsubscribing from a portal's mail: tokens and opt-outs", sql: sql007Unsubscribe },
  { version: 8, description: "contact rules: blocked and allowed senders per user", sql: sql008ContactRules },
  { version: 9, description: "contact requests, personal settings, quiet refusals", sql: sql009ContactRequests },
  { version: 10, description: "addressing: mail domains and aliases", sql: sql010Addressing },
  { version: 11, description: "app passwords for SMTP submission", sql: sql011AppPasswords },
  { version: 12, description: "end-to-end-encryption state of the bridge's Matrix devices", sql: sql012CryptoStore },
  { version: 13, description: "large inbound mail stored in chunks: raw_chunks, inbound_raw_chunk", sql: sql013RawChunks },
];
