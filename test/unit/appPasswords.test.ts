/**
 * App password hashing (src/mail/submission/appPasswords.ts): scrypt with a per-password salt,
 * constant-time comparison, parameters carried in the stored form, damaged hashes refused.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { withoutBcc } from "../../src/bridge/Submission.ts";
import { MalformedPasswordHashError, generateAppPassword, hashAppPassword, verifyAppPassword } from "../../src/mail/submission/appPasswords.ts";

test("a generated password is 4 groups of 5 unambiguous characters, different each time", () => {
  const a = generateAppPassword();
  const b = generateAppPassword();
  assert.match(a, /^[a-hj-km-np-z2-9]{5}(?:-[a-hj-km-np-z2-9]{5}){3}$/);
  assert.notEqual(a, b);
});

test("the hash verifies its password only; each hash has its own salt; the password is not in it", async () => {
  const password = generateAppPassword();
  const h1 = await hashAppPassword(password);
  const h2 = await hashAppPassword(password);
  assert.match(h1, /^scrypt\$16384\$8\$1\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*$/);
  assert.notEqual(h1, h2, "a fresh salt per hash");
  assert.equal(h1.split("$")[4]!.length, 24, "16 bytes of salt");
  assert.ok(!h1.includes(password));
  assert.equal(await verifyAppPassword(password, h1), true);
  assert.equal(await verifyAppPassword(password, h2), true);
  assert.equal(await verifyAppPassword(password.toUpperCase(), h1), false);
  assert.equal(await verifyAppPassword(`${password} `, h1), false);
  assert.equal(await verifyAppPassword("", h1), false);
});

test("Unicode passwords are compared in NFC", async () => {
  const h = await hashAppPassword("caf\u00e9");
  assert.equal(await verifyAppPassword("cafe\u0301", h), true);
});

test("the cost parameters travel with the hash: a hash made with other parameters still verifies", async () => {
  const { scryptSync, randomBytes } = await import("node:crypto");
  const salt = randomBytes(16);
  const key = scryptSync("old-password", salt, 32, { N: 1024, r: 8, p: 1 });
  const stored = `scrypt$1024$8$1$${salt.toString("base64")}$${key.toString("base64")}`;
  assert.equal(await verifyAppPassword("old-password", stored), true);
  assert.equal(await verifyAppPassword("other", stored), false);
});

test("a damaged or foreign hash is refused with MalformedPasswordHashError, never verified", async () => {
  const good = await hashAppPassword("x");
  const [, , r, p, salt, key] = good.split("$");
  for (const bad of ["", "plain-text-password", `bcrypt$16384$${r}$${p}$${salt}$${key}`, `scrypt$1000$${r}$${p}$${salt}$${key}`, `scrypt$${1 << 24}$${r}$${p}$${salt}$${key}`, `scrypt$16384$${r}$${p}$$${key}`]) {
    await assert.rejects(verifyAppPassword("x", bad), MalformedPasswordHashError, bad);
  }
});

test("submitted mail: Bcc fields are removed, folded lines and all, and nothing else changes", () => {
  const raw = Buffer.from("From: a@x.test\r\nBcc: hidden@y.test,\r\n\tother@z.test\r\nTo: b@y.test\r\nBCC:  third@y.test\r\nSubject: Bcc: in the subject stays\r\n\r\nBcc: in the body stays\r\n");
  assert.equal(withoutBcc(raw).toString(), "From: a@x.test\r\nTo: b@y.test\r\nSubject: Bcc: in the subject stays\r\n\r\nBcc: in the body stays\r\n");
  const plain = Buffer.from("From: a@x.test\r\n\r\nbody\r\n");
  assert.equal(withoutBcc(plain), plain, "no copy when there is nothing to remove");
});
