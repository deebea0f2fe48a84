/**
 * Calendar summaries (mail/inbound/calendar.ts): RFC 5545 content lines unfolded and unescaped,
 * DTSTART–DTEND in the calendar's own time zone with its UTC offset (from VTIMEZONE, or the host's
 * zone data for an IANA TZID without one), UTC and floating times, all-day events with their
 * exclusive DTEND, DURATION, METHOD and STATUS, attendees' answers, and calendars that cannot be read.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { calendarHtml, calendarText, summarizeCalendar } from "../../src/mail/inbound/calendar.ts";

/** A VCALENDAR around `lines` (CRLF). */
function ics(lines: string[], head: string[] = ["METHOD:REQUEST"]): string {
  return ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//EN", ...head, ...lines, "END:VCALENDAR", ""].join("\r\n");
}

const BERLIN = [
  "BEGIN:VTIMEZONE",
  "TZID:Europe/Berlin",
  "BEGIN:DAYLIGHT",
  "TZOFFSETFROM:+0100",
  "TZOFFSETTO:+0200",
  "DTSTART:19700329T020000",
  "RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU",
  "END:DAYLIGHT",
  "BEGIN:STANDARD",
  "TZOFFSETFROM:+0200",
  "TZOFFSETTO:+0100",
  "DTSTART:19701025T030000",
  "RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU",
  "END:STANDARD",
  "END:VTIMEZONE",
];

/** One VEVENT with `props`. */
function vevent(props: string[]): string[] {
  return ["BEGIN:VEVENT", "UID:u1@example.org", "DTSTAMP:20261102T090000Z", ...props, "END:VEVENT"];
}

describe("summarizeCalendar", () => {
  it("an invitation: folded and escaped text, TZID with its VTIMEZONE, organizer", () => {
    const s = summarizeCalendar(
      ics([
        ...BERLIN,
        ...vevent([
          "DTSTART;TZID=Europe/Berlin:20261109T150000",
          "DTEND;TZID=Europe/Berlin:20261109T160000",
          "SUMMARY:Project review: the plan\\, its budget and the offsite in ",
          " Lisbon",
          "LOCATION:Room 4.2\\, Building A\\nSecond floor",
          'ORGANIZER;CN="Bob Example":mailto:bob@example.org',
        ]),
      ]),
    );
    assert.deepEqual(s, {
      method: "REQUEST",
      events: [
        {
          title: "Project review: the plan, its budget and the offsite in Lisbon",
          when: "Mon, 9 Nov 2026, 15:00–16:00 (Europe/Berlin, UTC+01:00)",
          where: "Room 4.2, Building A Second floor",
          organizer: "Bob Example <bob@example.org>",
          status: null,
          repeats: null,
          answers: [],
        },
      ],
      more: 0,
    });
    assert.equal(
      calendarText(s),
      "📅 Invitation: Project review: the plan, its budget and the offsite in Lisbon\nWhen: Mon, 9 Nov 2026, 15:00–16:00 (Europe/Berlin, UTC+01:00)\nWhere: Room 4.2, Building A Second floor\nOrganizer: Bob Example <bob@example.org>",
    );
    assert.equal(
      calendarHtml(s),
      "<p><strong>📅 Invitation: Project review: the plan, its budget and the offsite in Lisbon</strong><br>When: Mon, 9 Nov 2026, 15:00–16:00 (Europe/Berlin, UTC+01:00)<br>Where: Room 4.2, Building A Second floor<br>Organizer: Bob Example &lt;bob@example.org&gt;</p>",
    );
  });

  it("summer time from the VTIMEZONE; LF line ends", () => {
    const s = summarizeCalendar(ics([...BERLIN, ...vevent(["DTSTART;TZID=Europe/Berlin:20260710T090000", "DTEND;TZID=Europe/Berlin:20260710T093000", "SUMMARY:Standup"])]).replace(/\r\n/gu, "\n"));
    assert.equal(s.events[0]!.when, "Fri, 10 Jul 2026, 09:00–09:30 (Europe/Berlin, UTC+02:00)");
  });

  it("an IANA TZID without VTIMEZONE: the offset from the host's zone data; an unknown one: the name alone", () => {
    const ny = summarizeCalendar(ics(vevent(["DTSTART;TZID=America/New_York:20260710T090000", "DTEND;TZID=America/New_York:20260710T100000", "SUMMARY:Call"])));
    assert.equal(ny.events[0]!.when, "Fri, 10 Jul 2026, 09:00–10:00 (America/New_York, UTC-04:00)");
    const odd = summarizeCalendar(ics(vevent(["DTSTART;TZID=Customized Time Zone:20260710T090000", "SUMMARY:Call"])));
    assert.equal(odd.events[0]!.when, "Fri, 10 Jul 2026, 09:00 (Customized Time Zone)");
  });

  it("UTC, floating time, DURATION, across midnight", () => {
    const when = (props: string[]) => summarizeCalendar(ics(vevent(props))).events[0]!.when;
    assert.equal(when(["DTSTART:20261109T140000Z", "DTEND:20261109T150000Z"]), "Mon, 9 Nov 2026, 14:00–15:00 (UTC)");
    assert.equal(when(["DTSTART:20261109T140000", "DURATION:PT1H30M"]), "Mon, 9 Nov 2026, 14:00–15:30 (no time zone)");
    assert.equal(when(["DTSTART:20261109T220000Z", "DTEND:20261110T013000Z"]), "Mon, 9 Nov 2026, 22:00 – Tue, 10 Nov 2026, 01:30 (UTC)");
  });

  it("all-day events: DTEND is exclusive (RFC 5545 §3.6.1)", () => {
    const when = (props: string[]) => summarizeCalendar(ics(vevent(props))).events[0]!.when;
    assert.equal(when(["DTSTART;VALUE=DATE:20261109", "DTEND;VALUE=DATE:20261110"]), "Mon, 9 Nov 2026 (all day)");
    assert.equal(when(["DTSTART;VALUE=DATE:20261109", "DTEND;VALUE=DATE:20261112"]), "Mon, 9 Nov 2026 – Wed, 11 Nov 2026 (all day)");
    assert.equal(when(["DTSTART;VALUE=DATE:20261109"]), "Mon, 9 Nov 2026 (all day)");
  });

  it("METHOD and STATUS: cancelled; a REPLY with the attendee's answer; a recurring event", () => {
    const cancel = summarizeCalendar(ics(vevent(["DTSTART:20261109T140000Z", "SUMMARY:Review", "STATUS:CANCELLED"]), ["METHOD:CANCEL"]));
    assert.match(calendarText(cancel), /^📅 Cancelled: Review\n/u);
    const reply = summarizeCalendar(ics(vevent(["DTSTART:20261109T140000Z", "SUMMARY:Review", "ATTENDEE;CN=Alice;PARTSTAT=ACCEPTED:mailto:alice@example.org"]), ["METHOD:REPLY"]));
    assert.equal(calendarText(reply), "📅 Reply to an invitation: Review\nWhen: Mon, 9 Nov 2026, 14:00 (UTC)\nAnswer: Alice <alice@example.org>: accepted");
    const weekly = summarizeCalendar(ics(vevent(["DTSTART:20261109T140000Z", "SUMMARY:Sync", "RRULE:FREQ=WEEKLY;BYDAY=MO"]), []));
    assert.equal(calendarText(weekly), "📅 Event: Sync\nWhen: Mon, 9 Nov 2026, 14:00 (UTC)\nRepeats: FREQ=WEEKLY;BYDAY=MO");
  });

  it("no events; more events than are summarised; markup in the text is escaped in HTML", () => {
    assert.equal(calendarText(summarizeCalendar(ics([]))), "📅 A calendar with no events");
    const many = summarizeCalendar(ics(Array.from({ length: 7 }, (_, i) => vevent([`DTSTART:2026110${i + 1}T140000Z`, `SUMMARY:E${i}`])).flat()));
    assert.equal(many.events.length, 5);
    assert.equal(many.more, 2);
    assert.ok(calendarText(many).endsWith("… and 2 more events"));
    const markup = summarizeCalendar(ics(vevent(["DTSTART:20261109T140000Z", "SUMMARY:<script>alert(1)</script>"])));
    assert.ok(calendarHtml(markup).includes("&lt;script&gt;alert(1)&lt;/script&gt;"));
  });

  it("what cannot be read throws", () => {
    assert.throws(() => summarizeCalendar("this is no calendar"));
    assert.throws(() => summarizeCalendar(ics(vevent(["DTSTART:not-a-date", "SUMMARY:x"]))));
    assert.throws(() => summarizeCalendar("BEGIN:VCARD\r\nFN:Bob\r\nEND:VCARD\r\n"), /not an iCalendar object/u);
  });
});
