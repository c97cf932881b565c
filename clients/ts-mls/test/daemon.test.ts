// End-to-end: ts-mls groups where members' keys live in real dev daemons.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import {
  createCommit,
  createGroup,
  decodeMlsMessage,
  defaultCapabilities,
  defaultLifetime,
  encodeRequiredCapabilities,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
} from "ts-mls";

import { ConsumedError, NotFoundError, decodeHandle, isHandle } from "../src/index.js";
import { runConversation } from "../examples/conversation.js";
import { skipReason, startDaemon, type Daemon } from "./daemons.js";

const skip = skipReason();

describe("with mlskeyd", { skip }, () => {
  let d1: Daemon;
  let d2: Daemon;
  before(async () => {
    [d1, d2] = await Promise.all([startDaemon(), startDaemon()]);
  });
  after(async () => {
    await Promise.all([d1?.stop(), d2?.stop()]);
  });

  for (const suite of ["MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519", "MLS_128_DHKEMP256_AES128GCM_SHA256_P256"] as const) {
    test(`conversation, Bob through the daemon (${suite})`, async () => {
      const r = await runConversation({ suite, socketPath: d1.socket });
      try {
        assert.deepEqual(r.bobGot, ["hello Bob, your keys are in a token", "still hearing you after your update"]);
        assert.deepEqual(r.aliceGot, ["hi Alice, signed by the daemon", "and you after yours"]);
        // Joining opened the Welcome in the daemon; Alice's commit path
        // reached Bob's daemon-held leaf key through DecryptWithLabel; Bob's
        // signatures (leaf, commits, messages) were made by the daemon.
        assert.equal(r.bobCalls.afterJoin.openWelcome, 1);
        assert.equal(r.bobCalls.afterJoin.decryptWithLabel, 0);
        assert.equal(r.bobCalls.afterAliceCommit.decryptWithLabel, 1);
        assert.ok(r.bobCalls.afterBobCommit.sign > r.bobCalls.afterAliceCommit.sign);
        assert.ok(r.bobRemoved, "Bob's engine does not know it was removed");
        assert.equal(r.finalEpoch, 4n);

        // No private key byte of Bob's device keys is in this process:
        // everything ts-mls holds for them is a handle.
        assert.ok(r.bobPrivatePackageHandlesOnly);
        assert.ok(r.bobStateKeysHandlesOnly);
        const pp = r.bob.privatePackage;
        assert.deepEqual(decodeHandle(pp.initPrivateKey), { role: "init", id: r.bob.initKeyId, suite: suite === "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519" ? 1 : 2, ref: Buffer.from(r.bob.keyPackageRef).toString("hex") });
        assert.equal(decodeHandle(pp.hpkePrivateKey)!.id, r.bob.leafEncryptionKeyId);
        assert.equal(decodeHandle(pp.signaturePrivateKey)!.id, r.bob.signatureKeyId);

        // The daemon consumed Bob's init key: the Welcome does not open twice.
        const init = await r.bobClient.getKey(r.bob.initKeyId);
        assert.equal(init.state, "KEY_STATE_CONSUMED");
        // Replaced by Bob's own commit, his KeyPackage leaf key is gone too.
        assert.equal((await r.bobClient.getKey(r.bob.leafEncryptionKeyId)).state, "KEY_STATE_DESTROYED");
        await assert.rejects(r.bobClient.openWelcome(r.welcome), ConsumedError);
      } finally {
        r.bobClient.close();
      }
    });
  }

  test("three members, two of them on two daemons", async () => {
    const r = await runConversation({ suite: "MLS_128_DHKEMP256_AES128GCM_SHA256_P256", socketPath: d1.socket, carolSocketPath: d2.socket });
    try {
      assert.deepEqual(r.carolGot, ["hello Bob, your keys are in a token", "hi Alice, signed by the daemon", "still hearing you after your update", "and you after yours", "Carol, it is just us now"]);
      assert.ok(r.carol !== undefined && isHandle(r.carol.privatePackage.initPrivateKey));
      assert.equal(r.carolCalls!.openWelcome, 1);
      assert.ok(r.carolCalls!.sign >= 1);
      assert.equal((await r.carolClient!.getKey(r.carol!.initKeyId)).state, "KEY_STATE_CONSUMED");
      // Each daemon knows only its own member's keys.
      await assert.rejects(r.bobClient.getKey(r.carol!.initKeyId), NotFoundError);
    } finally {
      r.bobClient.close();
      r.carolClient?.close();
    }
  });

  // A group whose required_capabilities demand X.509 support accepts the
  // daemon's KeyPackage only when it lists x509 among its credential types,
  // which keypackage create --credential-types does.
  test("required_capabilities: --credential-types basic,x509 is accepted, the default refused", async () => {
    const suite = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519" as const;
    const cs = await getCiphersuiteImpl(getCiphersuiteFromName(suite));
    const kpFrom = (...flags: string[]) => {
      const out = d1.ctl("keypackage", "create", "--suite", "1", "--identity", "bob", "--json", ...flags);
      assert.equal(out.status, 0, out.stderr);
      const m = decodeMlsMessage(new Uint8Array(Buffer.from(JSON.parse(out.stdout)[0].key_package, "hex")), 0);
      assert.ok(m !== undefined && m[0].wireformat === "mls_key_package");
      return m[0].keyPackage;
    };
    const addTo = async (keyPackage: ReturnType<typeof kpFrom>) => {
      const alice = await generateKeyPackage({ credentialType: "basic", identity: new TextEncoder().encode("alice") }, defaultCapabilities(), defaultLifetime, [], cs);
      const required = { extensionType: "required_capabilities" as const, extensionData: encodeRequiredCapabilities({ extensionTypes: [], proposalTypes: [], credentialTypes: ["x509"] }) };
      const state = await createGroup(crypto.getRandomValues(new Uint8Array(16)), alice.publicPackage, alice.privatePackage, [required], cs);
      return createCommit({ state, cipherSuite: cs }, { extraProposals: [{ proposalType: "add", add: { keyPackage } }], ratchetTreeExtension: true });
    };
    const withX509 = kpFrom("--credential-types", "basic,x509");
    assert.ok(withX509.leafNode.capabilities.credentials.includes("x509"));
    const r = await addTo(withX509);
    assert.ok(r.welcome !== undefined);
    const basicOnly = kpFrom();
    assert.ok(!basicOnly.leafNode.capabilities.credentials.includes("x509"));
    await assert.rejects(addTo(basicOnly), /capabilit/i);
  });
});
