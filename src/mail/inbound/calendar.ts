/**
 * Calendar invitations (iCalendar, RFC 5545, sent by mail as iMIP, RFC 6047): a `text/calendar`
 * body part or an `.ics` attachment, summarised in a few lines for the Matrix message: what, when
 * (with its time zone), where, who organises it. Parsed with ical.js (Mozilla's iCalendar
 * parser: line unfolding, escaping, parameters, VTIMEZONE resolution).
 */
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import type ICAL from "ical.js";

let icalModule: typeof ICAL | null = null;

/**
 * ical.js, loaded on the first calendar rather than at start: most bridges rarely see one, and
 * an idle bridge need not keep its ~0.5 MB of source. It is `require`d (its ES module build,
 * the one `import` would load) so that the summary stays synchronous.
 */
function ical(): typeof ICAL {
  if (!icalModule) {
    const file = fileURLToPath(import.meta.resolve("ical.js"));
    icalModule = (createRequire(import.meta.url)(file) as { default: typeof ICAL }).default;
  }
  return icalModule;
}

/** Events summarised from one calendar at most; the rest are counted. */
const MAX_EVENTS = 5;

/** One VEVENT, summarised. */
export interface CalendarEventSummary {
  /** SUMMARY, on one line; null when the event has none. */
  title: string | null;
  /** DTSTART–DTEND (or DTSTART + DURATION) with the time zone, e.g. `Mon, 9 Nov 2026, 15:00–16:00 (Europe/Berlin, UTC+01:00)`; null without DTSTART. */
  when: string | null;
  /** LOCATION, on one line; null when none. */
  where: string | null;
  /** ORGANIZER as `CN <address>` (the `mailto:` dropped); null when none. */
  organizer: string | null;
  /** STATUS, lower case (`confirmed`, `tentative`, `cancelled`); null when none. */
  status: string | null;
  /** RRULE as written (`FREQ=WEEKLY;BYDAY=MO`); null for a single event. */
  repeats: string | null;
  /** For METHOD:REPLY: each ATTENDEE's answer, `Alice <a@example.org>: accepted`. */
  answers: string[];
}

/** A calendar object, summarised. */
export interface CalendarSummary {
  /** METHOD (RFC 5546 §1.4: REQUEST, CANCEL, REPLY, PUBLISH, …), upper case; null when none (a plain .ics file). */
  method: string | null;
  /** Its events, in order, at most {@link MAX_EVENTS}. */
  events: CalendarEventSummary[];
  /** Events beyond those summarised. */
  more: number;
}

/** Names of the weekdays and months, as mail clients write dates (RFC 5322 §3.3 names). */
const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** Text on one line: line breaks and control characters become spaces, runs of space one. */
function oneLine(value: unknown): string | null {
  if (typeof value !== "string") return null;
  // eslint-disable-next-line no-control-regex
  const s = value.replace(/[\u0000-\u001f\u007f-\u009f]+/gu, " ").replace(/\s+/gu, " ").trim();
  return s === "" ? null : s;
}

function pad(n: number): string {
  return String(n).padStart(2, "0");
}

/** `Mon, 9 Nov 2026` for the wall-clock date of `t`. */
function dateText(t: ICAL.Time): string {
  const weekday = new Date(Date.UTC(t.year, t.month - 1, t.day)).getUTCDay();
  return `${DAYS[weekday]}, ${t.day} ${MONTHS[t.month - 1]} ${t.year}`;
}

/** `UTC+01:00` for an offset in seconds. */
function offsetText(seconds: number): string {
  const sign = seconds < 0 ? "-" : "+";
  const abs = Math.abs(seconds);
  return `UTC${sign}${pad(Math.floor(abs / 3600))}:${pad(Math.floor((abs % 3600) / 60))}`;
}

/**
 * The UTC offset of wall-clock time `t` in the IANA zone `tzid`, from the host's time zone data,
 * in seconds; null when `tzid` is no IANA zone the host knows (e.g. Outlook's "W. Europe
 * Standard Time" without its VTIMEZONE).
 */
function ianaOffset(t: ICAL.Time, tzid: string): number | null {
  let format: Intl.DateTimeFormat;
  try {
    format = new Intl.DateTimeFormat("en-US", { timeZone: tzid, hourCycle: "h23", year: "numeric", month: "numeric", day: "numeric", hour: "numeric", minute: "numeric", second: "numeric" });
  } catch (err) {
    if (err instanceof RangeError) return null; // "Invalid time zone specified"
    throw err;
  }
  // The offset at the instant the wall time would be in UTC, then corrected once (enough outside the hour of a DST change).
  const wall = Date.UTC(t.year, t.month - 1, t.day, t.hour, t.minute, t.second);
  const offsetAt = (instant: number): number => {
    const p = Object.fromEntries(format.formatToParts(new Date(instant)).map((x) => [x.type, x.value]));
    return (Date.UTC(Number(p.year), Number(p.month) - 1, Number(p.day), Number(p.hour), Number(p.minute), Number(p.second)) - instant) / 1000;
  };
  const first = offsetAt(wall);
  return offsetAt(wall - first * 1000);
}

/** The time zone of a DTSTART/DTEND: `UTC`, `Europe/Berlin, UTC+01:00`, or `no time zone` for floating time (RFC 5545 §3.3.5 form 1). */
function zoneText(t: ICAL.Time, tzid: string | null): string {
  if (t.zone === ical().Timezone.utcTimezone) return "UTC";
  if (tzid === null) return "no time zone";
  // Resolved from the calendar's own VTIMEZONE: ical.js knows the offset.
  if (t.zone && t.zone !== ical().Timezone.localTimezone && t.zone.tzid === tzid) return `${tzid}, ${offsetText(t.utcOffset())}`;
  const offset = ianaOffset(t, tzid);
  return offset === null ? tzid : `${tzid}, ${offsetText(offset)}`;
}

/**
 * When an event is: `Mon, 9 Nov 2026, 15:00–16:00 (Europe/Berlin, UTC+01:00)`; across days
 * `Mon, 9 Nov 2026, 22:00 – Tue, 10 Nov 2026, 01:00 (UTC)`; all-day events
 * `Mon, 9 Nov 2026 (all day)` or `Mon, 9 Nov 2026 – Wed, 11 Nov 2026 (all day)` (DTEND of a
 * date is exclusive, RFC 5545 §3.6.1).
 */
function whenText(start: ICAL.Time, end: ICAL.Time | null, startTzid: string | null, endTzid: string | null): string {
  if (start.isDate) {
    const last = end?.clone() ?? null;
    if (last) last.adjust(-1, 0, 0, 0);
    const range = last && last.compare(start) > 0 ? `${dateText(start)} – ${dateText(last)}` : dateText(start);
    return `${range} (all day)`;
  }
  const time = (t: ICAL.Time): string => `${pad(t.hour)}:${pad(t.minute)}`;
  const startZone = zoneText(start, startTzid);
  if (!end) return `${dateText(start)}, ${time(start)} (${startZone})`;
  const endZone = zoneText(end, endTzid);
  const sameDay = end.year === start.year && end.month === start.month && end.day === start.day;
  if (endZone !== startZone) return `${dateText(start)}, ${time(start)} (${startZone}) – ${dateText(end)}, ${time(end)} (${endZone})`;
  if (sameDay) return `${dateText(start)}, ${time(start)}–${time(end)} (${startZone})`;
  return `${dateText(start)}, ${time(start)} – ${dateText(end)}, ${time(end)} (${startZone})`;
}

/** A CAL-ADDRESS property (ORGANIZER, ATTENDEE) as `CN <address>`, `mailto:` dropped. */
function person(prop: ICAL.Property | null): string | null {
  if (!prop) return null;
  const value = oneLine(prop.getFirstValue());
  const address = value?.replace(/^mailto:/iu, "") ?? null;
  const cn = oneLine(prop.getParameter("cn"));
  if (cn && address) return `${cn} <${address}>`;
  return cn ?? address;
}

/** The TZID parameter of a date property, or null. */
function tzidOf(component: ICAL.Component, name: string): string | null {
  return oneLine(component.getFirstProperty(name)?.getParameter("tzid"));
}

/** One VEVENT, summarised. */
function summarizeEvent(vevent: ICAL.Component): CalendarEventSummary {
  const event = new (ical().Event)(vevent);
  const hasStart = vevent.hasProperty("dtstart");
  const start = hasStart ? event.startDate : null;
  const end = hasStart && (vevent.hasProperty("dtend") || vevent.hasProperty("duration")) ? event.endDate : null;
  const rrule = vevent.getFirstPropertyValue("rrule");
  const answers = vevent.getAllProperties("attendee").flatMap((a) => {
    const who = person(a);
    const partstat = oneLine(a.getParameter("partstat"));
    return who && partstat ? [`${who}: ${partstat.toLowerCase().replace(/-/gu, " ")}`] : [];
  });
  return {
    title: oneLine(event.summary),
    when: start ? whenText(start, end, tzidOf(vevent, "dtstart"), tzidOf(vevent, vevent.hasProperty("dtend") ? "dtend" : "dtstart")) : null,
    where: oneLine(event.location),
    organizer: person(vevent.getFirstProperty("organizer")),
    status: oneLine(vevent.getFirstPropertyValue("status"))?.toLowerCase() ?? null,
    repeats: rrule ? oneLine(rrule.toString()) : null,
    answers,
  };
}

/**
 * Summarise an iCalendar object (RFC 5545): its METHOD and each VEVENT's SUMMARY, DTSTART–DTEND
 * (or DURATION) with the time zone, LOCATION, ORGANIZER, STATUS, RRULE and, for a REPLY, the
 * attendees' answers. Times are shown as the calendar writes them (wall-clock time in its
 * TZID), with the UTC offset from the calendar's VTIMEZONE, or from the host's zone data for an
 * IANA TZID without one.
 * @param ics the calendar text (content lines folded or not, CRLF or LF)
 * @returns the summary; `events` empty when the calendar has no VEVENT
 * @throws Error (ical.js ParserError, or a bad DTSTART/DTEND value) when it cannot be read
 */
export function summarizeCalendar(ics: string): CalendarSummary {
  const parsed: unknown = ical().parse(ics);
  // A file with several VCALENDARs parses to a list of them: the first is summarised.
  const root = new (ical().Component)((Array.isArray(parsed) && Array.isArray(parsed[0]) ? parsed[0] : parsed) as unknown[]);
  const vcalendar = root.name === "vcalendar" ? root : root.getFirstSubcomponent("vcalendar");
  if (!vcalendar) throw new Error(`not an iCalendar object (it starts with ${root.name.toUpperCase()}, not VCALENDAR)`);
  const vevents = vcalendar.getAllSubcomponents("vevent");
  return {
    method: oneLine(vcalendar.getFirstPropertyValue("method"))?.toUpperCase() ?? null,
    events: vevents.slice(0, MAX_EVENTS).map(summarizeEvent),
    more: Math.max(0, vevents.length - MAX_EVENTS),
  };
}

/** What the calendar's METHOD (RFC 5546) or the event's STATUS makes it, for the first line. */
function label(method: string | null, status: string | null): string {
  if (status === "cancelled" || method === "CANCEL") return "Cancelled";
  switch (method) {
    case "REQUEST":
      return "Invitation";
    case "REPLY":
      return "Reply to an invitation";
    case "COUNTER":
      return "New time proposed";
    case "DECLINECOUNTER":
      return "Proposed time declined";
    case "REFRESH":
      return "Invitation refresh requested";
    case "ADD":
      return "Occurrences added";
    default:
      return "Event";
  }
}

/** The lines of a summary: `[first, ...details]` per event. */
function summaryLines(summary: CalendarSummary): string[][] {
  const events = summary.events.map((e) => {
    const lines = [`📅 ${label(summary.method, e.status)}: ${e.title ?? "(no title)"}`];
    if (e.when) lines.push(`When: ${e.when}`);
    if (e.repeats) lines.push(`Repeats: ${e.repeats}`);
    if (e.where) lines.push(`Where: ${e.where}`);
    if (e.organizer) lines.push(`Organizer: ${e.organizer}`);
    if (summary.method === "REPLY") for (const a of e.answers) lines.push(`Answer: ${a}`);
    return lines;
  });
  if (summary.events.length === 0) events.push(["📅 A calendar with no events"]);
  if (summary.more > 0) events.push([`… and ${summary.more} more events`]);
  return events;
}

/**
 * The summary as plain text, one line each: `📅 Invitation: <title>`, `When: …`, `Repeats: …`,
 * `Where: …`, `Organizer: …` (`Answer: …` lines for a REPLY); events separated by a blank line.
 */
export function calendarText(summary: CalendarSummary): string {
  return summaryLines(summary)
    .map((lines) => lines.join("\n"))
    .join("\n\n");
}

/** Escape text for HTML (`& < > "`). */
function escapeHtml(s: string): string {
  return s.replace(/&/gu, "&amp;").replace(/</gu, "&lt;").replace(/>/gu, "&gt;").replace(/"/gu, "&quot;");
}

/** The summary as HTML: a `<p>` per event, its first line in `<strong>`, the others after `<br>`. */
export function calendarHtml(summary: CalendarSummary): string {
  return summaryLines(summary)
    .map(([first, ...rest]) => `<p><strong>${escapeHtml(first!)}</strong>${rest.map((l) => `<br>${escapeHtml(l)}`).join("")}</p>`)
    .join("");
}
