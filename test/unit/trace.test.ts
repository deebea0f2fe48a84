/**
 * `withTrace` (mail/inbound/SmtpListener.ts): the stored copy of a message with its trace
 * header on top, written into the listener's headroom when there is room.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { TRACE_HEADROOM_BYTES, withTrace } from "../../src/mail/inbound/SmtpListener.ts";

test("the trace goes into the headroom: same memory, message unchanged", () => {
  const message = Buffer.from("Subject: hi\r\n\r\nbody\r\n");
  const buffer = Buffer.alloc(TRACE_HEADROOM_BYTES + message.length, 0x2a);
  message.copy(buffer, TRACE_HEADROOM_BYTES);
  const raw = buffer.subarray(TRACE_HEADROOM_BYTES);
  const trace = Buffer.from("Received: from a by b; Sun, 22 Nov 2026 12:00:00 +0000\r\n");
  const stored = withTrace(trace, raw, TRACE_HEADROOM_BYTES);
  assert.equal(stored.toString(), trace.toString() + message.toString());
  assert.equal(stored.buffer, raw.buffer, "no second copy of the message");
  assert.equal(raw.toString(), message.toString());
  // The bytes in front of the trace are untouched.
  assert.equal(buffer[TRACE_HEADROOM_BYTES - trace.length - 1], 0x2a);
});

test("no headroom, or a trace longer than it: a new buffer, the neighbours untouched", () => {
  const buffer = Buffer.from("XXXXmessage");
  const raw = buffer.subarray(4);
  const stored = withTrace(Buffer.from("Received: x\r\n"), raw, 4);
  assert.equal(stored.toString(), "Received: x\r\nmessage");
  assert.equal(buffer.toString(), "XXXXmessage");
  const plain = Buffer.from("message");
  assert.equal(withTrace(Buffer.from("R: y\r\n"), plain, 0).toString(), "R: y\r\nmessage");
});
