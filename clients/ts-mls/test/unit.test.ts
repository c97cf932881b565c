import { test } from "node:test";
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { getCiphersuiteFromName, getCiphersuiteImpl } from "ts-mls";

import {
  ConsumedError,
  MlskeydError,
  NotFoundError,
  PermissionDeniedError,
  UnavailableError,
  connect,
  decodeHandle,
  encodeHandle,
  isHandle,
  splitLabeled,
  toMlskeydError,
} from "../src/index.js";

test("handles round-trip and are never mistaken for key bytes", () => {
  const h = { role: "init" as const, id: "01ab", suite: 2, ref: "00ff" };
  assert.deepEqual(decodeHandle(encodeHandle(h)), h);
  assert.equal(isHandle(crypto.getRandomValues(new Uint8Array(32))), false);
  assert.equal(isHandle(new Uint8Array(0)), false);
  const bad = encodeHandle(h);
  bad[bad.length - 1] = 0x20;
  assert.throws(() => decodeHandle(bad), /malformed key handle/);
});

test("SignContent and EncryptContext split into label and content", () => {
  // label<V> "MLS 1.0 Welcome", content<V> of 70 bytes (two-byte length).
  const label = new TextEncoder().encode("MLS 1.0 Welcome");
  const body = new Uint8Array(70).fill(7);
  const b = new Uint8Array([label.length, ...label, 0x40, 70, ...body]);
  const s = splitLabeled(b);
  assert.equal(s.label, "Welcome");
  assert.deepEqual(s.body, body);
  assert.throws(() => splitLabeled(new Uint8Array([...b, 0])), /trailing/);
  assert.throws(() => splitLabeled(new Uint8Array([3, 0x61, 0x62, 0x63, 0])), /prefix/);
  assert.throws(() => splitLabeled(new Uint8Array([0xc0])), /invalid/);
});

test("gRPC statuses map to typed errors with the daemon's message", () => {
  const e = (code: grpc.status, details: string) => toMlskeydError({ code, details, message: "", metadata: new grpc.Metadata(), name: "Error" }, "OpenWelcome");
  const nf = e(grpc.status.NOT_FOUND, "key_id: key \"x\": not found");
  assert.ok(nf instanceof NotFoundError && nf instanceof MlskeydError);
  assert.match(nf.message, /^mlskeyd OpenWelcome: key_id: key "x": not found$/);
  assert.ok(e(grpc.status.FAILED_PRECONDITION, "welcome: init key \"a\" is consumed: key is not active") instanceof ConsumedError);
  assert.ok(e(grpc.status.FAILED_PRECONDITION, "welcome: the init key of KeyPackage ab was already used") instanceof ConsumedError);
  assert.ok(!(e(grpc.status.FAILED_PRECONDITION, "policy") instanceof ConsumedError));
  assert.ok(e(grpc.status.PERMISSION_DENIED, "not yours") instanceof PermissionDeniedError);
  assert.ok(e(grpc.status.UNAVAILABLE, "device") instanceof UnavailableError);
});

test("a missing daemon is UnavailableError", async () => {
  const c = connect({ socketPath: "/nonexistent/mlskeyd.sock", timeoutMs: 5000 });
  try {
    await assert.rejects(c.call("GetInfo", {}), UnavailableError);
  } finally {
    c.close();
  }
});

test("keys that are not handles go to the base provider", async () => {
  const suite = getCiphersuiteFromName("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519");
  const c = connect({ socketPath: "/nonexistent/mlskeyd.sock" });
  try {
    const cs = await getCiphersuiteImpl(suite, c.cryptoProvider());
    const { signKey, publicKey } = await cs.signature.keygen();
    const msg = new Uint8Array([1, 2, 3]);
    assert.ok(await cs.signature.verify(publicKey, msg, await cs.signature.sign(signKey, msg)));
    const kp = await cs.hpke.generateKeyPair();
    const raw = await cs.hpke.exportPrivateKey(kp.privateKey);
    assert.equal(isHandle(raw), false);
    const sealed = await cs.hpke.seal(kp.publicKey, msg, new Uint8Array([9]));
    const opened = await cs.hpke.open(await cs.hpke.importPrivateKey(raw), sealed.enc, sealed.ct, new Uint8Array([9]));
    assert.deepEqual(opened, msg);
    assert.deepEqual(c.calls, { sign: 0, openWelcome: 0, decryptWithLabel: 0 });
  } finally {
    c.close();
  }
});
