/**
 * Part 2, `inbound`: mail → Matrix into a real Synapse, against a direct appservice sender.
 *
 * Bridge: a room with a room mailbox (`createMailboxRoom`); N mails (~2 KB, text/plain) over C
 * SMTP connections (reused, from a child process) from S senders `benchsender<k>@example.org`.
 * The DNS server publishes `v=spf1 ip4:127.0.0.1 -all` for example.org and the envelope
 * sender's domain is the From domain, so every mail is SPF-pass aligned: verified, posted by
 * the sender's verified ghost (the figure counts only events from verified ghosts). One mail
 * per sender goes first, untimed, so ghosts are registered and joined (steady state: the
 * reference's ghosts are joined too). Timed: from the first SMTP connect (child process clock)
 * until alice's /sync has shown the N-th event.
 *
 * Reference: the same ghosts join a second (public) room and N `PUT /rooms/{room}/send/
 * m.room.message/{txn}?user_id=<ghost>` with the appservice token, C in parallel, content of
 * the same size; from the first PUT until alice's /sync has shown the N-th event.
 *
 * Then the same into R rooms (`rooms`, mail i to room i mod R): the bridge posts rooms in
 * parallel (`inbound.concurrency`, default 4) and each room in order; the reference sends into R
 * rooms of its own, one PUT at a time per room (R in parallel), which keeps each room's order
 * as the bridge must.
 */
import { randomBytes } from "node:crypto";
import { createMailboxRoom, MAIL_DOMAIN } from "../test/e2e/env.ts";
import { MatrixTestClient, type MatrixEvent } from "../test/harness/matrixClient.ts";
import type { MatrixBench } from "./matrixEnv.ts";
import { RoomWatcher } from "./roomWatch.ts";
import { runSmtpLoad } from "./smtpLoad.ts";
import type { TableRow } from "./table.ts";
import { num, progress, reason } from "./util.ts";

/** Knobs of the inbound part. */
export interface MatrixInboundSettings {
  /** Mails (and direct events) timed. */
  messages: number;
  /** SMTP connections, and parallel PUTs of the reference. */
  connections: number;
  /** Distinct senders (ghosts). */
  senders: number;
  /** Rooms of the second scenario (1: only the one-room scenario runs). */
  rooms: number;
  /** Approximate mail size, bytes. */
  messageBytes: number;
  /** Longest wait for the events, ms. */
  timeoutMs: number;
}

const TARGET = ">= 0.8x of a direct appservice sender";

/** Body text of the reference events: as long as the mails' text. */
function directBody(tag: string, i: number, bytes: number): string {
  const line = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt";
  let text = `bench ${tag} ${i}\n\n`;
  while (text.length < bytes) text += line + "\n";
  return text;
}

/**
 * Run part 2.
 * @param mb the running Synapse + bridge
 * @param s the knobs
 * @returns table rows: one room against both references, then `s.rooms` rooms
 */
export async function runMatrixInbound(mb: MatrixBench, s: MatrixInboundSettings): Promise<TableRow[]> {
  const rows: TableRow[] = [];
  for (const rooms of s.rooms > 1 ? [1, s.rooms] : [1]) {
    const figure = `mail->Matrix events/s (${s.messages} mails, ${s.connections} SMTP conns${rooms > 1 ? `, ${rooms} rooms` : ""})`;
    try {
      rows.push(...(await measure(mb, s, figure, rooms)));
    } catch (err) {
      progress(`  [inbound] FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      rows.push({ part: "inbound", figure, value: "failed", reference: "-", ratio: "-", target: TARGET, note: `inbound: ${reason(err)}` });
    }
  }
  return rows;
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

async function measure(mb: MatrixBench, s: MatrixInboundSettings, figure: string, rooms: number): Promise<TableRow[]> {
  const { alice, bridge } = mb;
  progress(
    `[inbound] ${s.messages} mails over ${s.connections} SMTP connections from ${s.senders} verified senders into ${rooms} room mailbox(es); references: direct appservice PUTs, ` +
      (rooms > 1 ? `one at a time per room, ${rooms} rooms in parallel` : `${s.connections} in parallel and one at a time`),
  );
  const roomIds: string[] = [];
  const recipients: string[] = [];
  for (let k = 0; k < rooms; k++) {
    const local = rooms > 1 ? `benchin${k}` : "benchin";
    roomIds.push(await createMailboxRoom(alice, local, `bench inbound ${local}`));
    recipients.push(`${local}@${MAIL_DOMAIN}`);
  }
  const watchA = await RoomWatcher.start(alice, roomIds);
  const fromGhost = (tag: string) => (e: MatrixEvent) =>
    e.type === "m.room.message" && e.sender.startsWith("@email_") && String(e.content.body ?? "").includes(`bench ${tag} `);
  const job = (tag: string, messages: number) => ({
    port: bridge.smtpPort,
    messages,
    concurrency: Math.min(s.connections, messages),
    reuse: true,
    timeCapMs: s.timeoutMs,
    messageBytes: s.messageBytes,
    recipient: recipients[0]!,
    moreRecipients: recipients.slice(1),
    senderPrefix: "benchsender",
    senderDomain: "example.org",
    senders: s.senders,
    tag,
  });

  try {
    // Warm-up, untimed: mail i goes from sender i mod S to room i mod R, so the first lcm(S, R)
    // mails make every (sender, room) pair of the timed run: every ghost exists and is in its rooms.
    const warmCount = (s.senders * rooms) / gcd(s.senders, rooms);
    const warmTag = `w${randomBytes(3).toString("hex")}`;
    const warm = await runSmtpLoad(job(warmTag, warmCount), s.timeoutMs + 60_000);
    if (warm.accepted !== warmCount) throw new Error(`warm-up: ${warm.accepted}/${warmCount} mails accepted: ${warm.errors.join(" | ")}`);
    const warmSeen = await watchA.waitFor(fromGhost(warmTag), warmCount, s.timeoutMs);
    if (!warmSeen.complete) throw new Error(`warm-up: ${warmSeen.events.length}/${warmCount} events seen within ${s.timeoutMs / 1000} s`);
    const ghosts = [...new Set(warmSeen.events.map((e) => e.event.sender))];
    progress(`  [inbound] warm-up: ${warmCount} mails posted by ${ghosts.length} ghosts (${ghosts.filter((g) => !g.includes("/unverified")).length} verified)`);

    // Timed: N mails over C connections.
    const tag = `t${randomBytes(3).toString("hex")}`;
    const seenP = watchA.waitFor(fromGhost(tag), s.messages, s.timeoutMs);
    const load = await runSmtpLoad(job(tag, s.messages), s.timeoutMs + 60_000);
    const seen = await seenP;
    const lastAt = Math.max(...seen.events.map((e) => e.at));
    const bridgeS = (lastAt - load.startedAt) / 1000;
    const verified = seen.events.filter((e) => !e.event.sender.includes("/unverified")).length;
    const bridgeRate = seen.complete ? seen.events.length / bridgeS : NaN;
    progress(
      `  [inbound] bridge: ${load.accepted}/${s.messages} mails accepted in ${(load.wallMs / 1000).toFixed(2)} s (${num(load.accepted / (load.wallMs / 1000))} msg/s at SMTP); ` +
        `${seen.events.length} events seen (${verified} from verified ghosts), last ${bridgeS.toFixed(2)} s after the first connect = ${num(bridgeRate)} events/s` +
        (watchA.gaps ? `; ${watchA.gaps} limited /sync timelines` : ""),
    );

    const notes: string[] = [];
    if (!seen.complete) notes.push(`inbound: only ${seen.events.length}/${s.messages} bridge events within ${s.timeoutMs / 1000} s`);
    if (verified !== seen.events.length) notes.push(`inbound: ${seen.events.length - verified} events from unverified ghosts`);
    const row = (ref: DirectResult, label: string): TableRow => ({
      part: "inbound",
      figure: `${figure}${label}`,
      value: seen.complete ? `${num(bridgeRate)} events/s` : `${seen.events.length}/${s.messages} in time`,
      reference: ref.rate !== null ? `direct AS sender, ${ref.label} ${num(ref.rate)} events/s` : "incomplete",
      ratio: seen.complete && ref.rate !== null ? `${(bridgeRate / ref.rate).toFixed(2)}x` : "-",
      target: TARGET,
      ...([...notes, ...ref.notes].length ? { note: [...notes, ...ref.notes].join("; ") } : {}),
    });
    if (rooms > 1) return [row(await directSender(mb, ghosts, s, rooms, 1), "")];
    // One room: C in parallel (the homeserver's best, order not kept), and one at a time (what
    // keeps a room's order, as the bridge must).
    const direct = await directSender(mb, ghosts, s, 1, s.connections);
    const ordered = await directSender(mb, ghosts, s, 1, 1);
    return [row(direct, ""), row(ordered, ", vs an order-keeping sender")];
  } finally {
    watchA.stop();
  }
}

/** What {@link directSender} measured. */
interface DirectResult {
  /** How it sent, for the table: "8 in parallel", "one at a time", "one at a time per room, 8 rooms". */
  label: string;
  /** Events/s from the first PUT to the last event seen; null when not all were seen in time. */
  rate: number | null;
  /** Problems to print under the table. */
  notes: string[];
}

/**
 * The reference: `s.messages` `PUT /rooms/{room}/send/m.room.message/{txn}?user_id=<ghost>` with
 * the appservice token, by the same ghosts, into `rooms` new rooms they join (message i into
 * room i mod `rooms`), `perRoom` at a time into each room, timed from the first PUT to the last
 * event seen by alice's `/sync`.
 */
async function directSender(mb: MatrixBench, ghosts: string[], s: MatrixInboundSettings, rooms: number, perRoom: number): Promise<DirectResult> {
  const { env, alice } = mb;
  const label = rooms > 1 ? `one at a time per room, ${rooms} rooms` : perRoom > 1 ? `${perRoom} in parallel` : "one at a time";
  const roomIds: string[] = [];
  for (let k = 0; k < rooms; k++) roomIds.push(await alice.createRoom({ preset: "public_chat", name: `bench direct ${label} ${k}` }));
  const clients = ghosts.map((g) => MatrixTestClient.forAppserviceUser(env.synapse.url, mb.asToken, g));
  for (const c of clients) for (const room of roomIds) await c.join(room);
  const watch = await RoomWatcher.start(alice, roomIds);
  try {
    const dtag = `d${randomBytes(3).toString("hex")}`;
    const bodyBytes = Math.max(100, s.messageBytes - 400);
    const seenP = watch.waitFor((e) => e.type === "m.room.message" && String(e.content.body ?? "").includes(`bench ${dtag} `), s.messages, s.timeoutMs);
    const t0 = Date.now();
    const errors: string[] = [];
    const send = async (i: number): Promise<void> => {
      const c = clients[i % clients.length]!;
      const room = roomIds[i % rooms]!;
      const body = directBody(dtag, i, bodyBytes);
      try {
        await c.request("PUT", `/rooms/${encodeURIComponent(room)}/send/m.room.message/${encodeURIComponent(`bench-${dtag}-${i}`)}`, {
          msgtype: "m.text",
          body,
          format: "org.matrix.custom.html",
          formatted_body: body.replace(/\n/g, "<br>"),
        });
      } catch (err) {
        if (errors.length < 3) errors.push(reason(err));
      }
    };
    // Per room, `perRoom` workers take that room's messages in order.
    const workers: Promise<void>[] = [];
    for (let k = 0; k < rooms; k++) {
      let next = k;
      for (let w = 0; w < perRoom; w++) {
        workers.push(
          (async () => {
            for (let i = next; i < s.messages; i = next) {
              next += rooms;
              await send(i);
            }
          })(),
        );
      }
    }
    await Promise.all(workers);
    const putsS = (Date.now() - t0) / 1000;
    const seen = await seenP;
    const lastS = (Math.max(...seen.events.map((e) => e.at)) - t0) / 1000;
    const rate = seen.complete ? seen.events.length / lastS : null;
    progress(
      `  [inbound] direct appservice sender, ${label}: ${s.messages} PUTs done in ${putsS.toFixed(2)} s; ${seen.events.length} events seen, last ${lastS.toFixed(2)} s after the first PUT = ${num(rate ?? NaN)} events/s` +
        (errors.length ? `; errors: ${errors.join(" | ")}` : ""),
    );
    return { label, rate, notes: seen.complete ? [] : [`inbound: only ${seen.events.length}/${s.messages} direct events (${label}) within ${s.timeoutMs / 1000} s`] };
  } finally {
    watch.stop();
  }
}
