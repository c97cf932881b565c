// An MLS conversation in ts-mls where Bob's keys live in mlskeyd.
//
// Alice uses software keys (ts-mls's default provider). Bob's KeyPackage is
// made by the daemon — its init key, leaf encryption key and signature key
// never leave the device — and Bob's ts-mls engine uses the provider from
// @mlskeyd/ts-mls, which sends his signing and HPKE opens to the daemon.
// With a second daemon, Carol joins the same way.
//
//   node dist/examples/conversation.js [--suite N] [--socket PATH] [--carol-socket PATH]
//
// scripts/demo.sh runs it against a fresh dev daemon; the tests run
// runConversation and check what it reports.

import {
  createApplicationMessage,
  createCommit,
  createGroup,
  defaultCapabilities,
  defaultLifetime,
  emptyPskIndex,
  encodeMlsMessage,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  processPrivateMessage,
  type CiphersuiteImpl,
  type CiphersuiteName,
  type ClientState,
  type MLSMessage,
} from "ts-mls";
import { pathToFileURL } from "node:url";

import { connect, isHandle, type DaemonKeyPackage, type MlskeydClient } from "../src/index.js";

export interface ConversationOptions {
  suite: CiphersuiteName;
  /** Bob's daemon. */
  socketPath: string;
  /** A second daemon for Carol; without it the group has two members. */
  carolSocketPath?: string;
  log?: (line: string) => void;
}

export interface ConversationResult {
  bobGot: string[];
  aliceGot: string[];
  carolGot: string[];
  bob: DaemonKeyPackage;
  carol?: DaemonKeyPackage;
  /** Daemon calls made by Bob's (and Carol's) provider, per step. */
  bobCalls: { afterJoin: Counts; afterAliceCommit: Counts; afterBobCommit: Counts };
  carolCalls?: Counts;
  /** Every private key in Bob's private package was a handle. */
  bobPrivatePackageHandlesOnly: boolean;
  /** ClientState.signaturePrivateKey and the leaf key ts-mls kept for Bob were handles. */
  bobStateKeysHandlesOnly: boolean;
  bobRemoved: boolean;
  /** The Welcome that added Bob, as an MLSMessage. */
  welcome: Uint8Array;
  finalEpoch: bigint;
  bobClient: MlskeydClient;
  carolClient?: MlskeydClient;
}

type Counts = { sign: number; openWelcome: number; decryptWithLabel: number };

const text = (s: string) => new TextEncoder().encode(s);
const untext = (b: Uint8Array) => new TextDecoder().decode(b);

function privateMessage(m: MLSMessage) {
  if (m.wireformat !== "mls_private_message") throw new Error(`expected a PrivateMessage, got ${m.wireformat}`);
  return m.privateMessage;
}

export async function runConversation(o: ConversationOptions): Promise<ConversationResult> {
  const log = o.log ?? (() => {});
  const suite = getCiphersuiteFromName(o.suite);
  const aliceCs = await getCiphersuiteImpl(suite);

  const bobClient = connect({ socketPath: o.socketPath });
  const bobCs = await getCiphersuiteImpl(suite, bobClient.cryptoProvider());
  const snap = (c: MlskeydClient): Counts => ({ ...c.calls });

  log(`suite ${o.suite}`);
  const alice = await generateKeyPackage({ credentialType: "basic", identity: text("alice") }, defaultCapabilities(), defaultLifetime, [], aliceCs);
  log("Alice: software KeyPackage made by ts-mls");

  const bob = await bobClient.createKeyPackage({ cipherSuite: o.suite, identity: "bob", capabilities: { credentials: ["basic", "x509"] } });
  log(`Bob: KeyPackage made in the daemon (init key ${bob.initKeyId}, leaf key ${bob.leafEncryptionKeyId}, signature key ${bob.signatureKeyId})`);
  const pp = bob.privatePackage;
  const bobPrivatePackageHandlesOnly = isHandle(pp.initPrivateKey) && isHandle(pp.hpkePrivateKey) && isHandle(pp.signaturePrivateKey);
  log(`Bob: his private package holds ${bobPrivatePackageHandlesOnly ? "handles only, no key bytes" : "KEY BYTES"}`);

  let carolClient: MlskeydClient | undefined;
  let carolCs: CiphersuiteImpl | undefined;
  let carol: DaemonKeyPackage | undefined;
  if (o.carolSocketPath !== undefined) {
    carolClient = connect({ socketPath: o.carolSocketPath });
    carolCs = await getCiphersuiteImpl(suite, carolClient.cryptoProvider());
    carol = await carolClient.createKeyPackage({ cipherSuite: o.suite, identity: "carol", capabilities: { credentials: ["basic", "x509"] } });
    log(`Carol: KeyPackage made in a second daemon (init key ${carol.initKeyId})`);
  }

  const groupId = crypto.getRandomValues(new Uint8Array(16));
  let aliceState: ClientState = await createGroup(groupId, alice.publicPackage, alice.privatePackage, [], aliceCs);
  const adds = [bob, ...(carol ? [carol] : [])].map((kp) => ({ proposalType: "add" as const, add: { keyPackage: kp.publicPackage } }));
  const added = await createCommit({ state: aliceState, cipherSuite: aliceCs }, { extraProposals: adds, ratchetTreeExtension: true });
  aliceState = added.newState;
  if (added.welcome === undefined) throw new Error("no Welcome");
  log(`Alice: created the group and committed Add(${carol ? "Bob, Carol" : "Bob"}); epoch ${aliceState.groupContext.epoch}`);

  let bobState = await joinGroup(added.welcome, bob.publicPackage, bob.privatePackage, emptyPskIndex, bobCs);
  const afterJoin = snap(bobClient);
  log(`Bob: joined from the Welcome; the daemon opened it with his init key (OpenWelcome calls: ${afterJoin.openWelcome})`);
  const initKey = await bobClient.getKey(bob.initKeyId);
  log(`Bob: init key ${bob.initKeyId} is now ${initKey.state}`);

  let carolState: ClientState | undefined;
  if (carol && carolCs) {
    carolState = await joinGroup(added.welcome, carol.publicPackage, carol.privatePackage, emptyPskIndex, carolCs);
    log("Carol: joined from the same Welcome through her daemon");
  }

  let bobInGroup = true;
  const bobGot: string[] = [];
  const aliceGot: string[] = [];
  const carolGot: string[] = [];

  // Sends an application message from one member to every other member.
  type Member = { name: string; state: ClientState; cs: CiphersuiteImpl; got: string[] };
  const members = (): Member[] => [
    { name: "Alice", state: aliceState, cs: aliceCs, got: aliceGot },
    ...(bobInGroup ? [{ name: "Bob", state: bobState, cs: bobCs, got: bobGot }] : []),
    ...(carolState && carolCs ? [{ name: "Carol", state: carolState, cs: carolCs, got: carolGot }] : []),
  ];
  const setState = (name: string, s: ClientState) => {
    if (name === "Alice") aliceState = s;
    else if (name === "Bob") bobState = s;
    else carolState = s;
  };
  const say = async (from: string, msg: string) => {
    const all = members();
    const sender = all.find((m) => m.name === from)!;
    const out = await createApplicationMessage(sender.state, text(msg), sender.cs);
    setState(from, out.newState);
    for (const m of all) {
      if (m.name === from) continue;
      const r = await processPrivateMessage(m.state, out.privateMessage, emptyPskIndex, m.cs);
      if (r.kind !== "applicationMessage") throw new Error(`${m.name} got no application message`);
      m.got.push(untext(r.message));
      setState(m.name, r.newState);
    }
    log(`${from} -> group: ${JSON.stringify(msg)} (delivered to ${all.filter((m) => m.name !== from).map((m) => m.name).join(", ")})`);
  };
  // Has one member commit (with the given proposals) and every other member process it.
  const commit = async (from: string, opts: Parameters<typeof createCommit>[1] = {}) => {
    const all = members();
    const sender = all.find((m) => m.name === from)!;
    const out = await createCommit({ state: sender.state, cipherSuite: sender.cs }, opts);
    setState(from, out.newState);
    for (const m of all) {
      if (m.name === from) continue;
      const r = await processPrivateMessage(m.state, privateMessage(out.commit), emptyPskIndex, m.cs);
      setState(m.name, r.newState);
    }
    return out.newState.groupContext.epoch;
  };

  await say("Alice", "hello Bob, your keys are in a token");
  await say("Bob", "hi Alice, signed by the daemon");
  if (carolState) await say("Carol", "hello from the second daemon");

  // Alice's UpdatePath encrypts a path secret to Bob's leaf, whose key is
  // the daemon's: Bob's engine opens it with DecryptWithLabel.
  let epoch = await commit("Alice");
  const afterAliceCommit = snap(bobClient);
  log(`Alice: committed an update with a path; epoch ${epoch}. Bob decrypted it in the daemon (DecryptWithLabel calls: ${afterAliceCommit.decryptWithLabel})`);

  const stateKeysBefore = isHandle(bobState.signaturePrivateKey) &&
    Object.values(bobState.privatePath.privateKeys).some((k) => isHandle(k));

  // Bob's own commit: ts-mls makes his fresh leaf key and path secrets in
  // software (RFC 9420 §7.4); the daemon signs the commit.
  epoch = await commit("Bob");
  const afterBobCommit = snap(bobClient);
  log(`Bob: committed an update with a path; epoch ${epoch}. Alice decrypted his path secret; the daemon signed it (sign calls so far: ${afterBobCommit.sign})`);
  // Bob's new leaf key replaced the daemon's: the old one decrypts nothing
  // any more, so it is destroyed (forward secrecy).
  await bobClient.deleteKey(bob.leafEncryptionKeyId);
  log(`Bob: his KeyPackage leaf key ${bob.leafEncryptionKeyId} is replaced; destroyed in the daemon`);

  await say("Alice", "still hearing you after your update");
  await say("Bob", "and you after yours");

  const bobIndex = bobState.privatePath.leafIndex;
  epoch = await commit("Alice", { extraProposals: [{ proposalType: "remove", remove: { removed: bobIndex } }] });
  const bobRemoved = bobState.groupActiveState.kind === "removedFromGroup";
  bobInGroup = false;
  log(`Alice: removed Bob; epoch ${epoch}. Bob's engine says ${bobState.groupActiveState.kind}`);
  if (carolState) await say("Alice", "Carol, it is just us now");

  return {
    bobGot,
    aliceGot,
    carolGot,
    bob,
    carol,
    bobCalls: { afterJoin, afterAliceCommit, afterBobCommit },
    carolCalls: carolClient ? snap(carolClient) : undefined,
    bobPrivatePackageHandlesOnly,
    bobStateKeysHandlesOnly: stateKeysBefore,
    bobRemoved,
    welcome: encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: added.welcome }),
    finalEpoch: epoch,
    bobClient,
    carolClient,
  };
}

async function main() {
  const args = process.argv.slice(2);
  const opt = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const suiteId = Number(opt("--suite") ?? "1");
  const names: Record<number, CiphersuiteName> = {
    1: "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
    2: "MLS_128_DHKEMP256_AES128GCM_SHA256_P256",
    3: "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519",
    5: "MLS_256_DHKEMP521_AES256GCM_SHA512_P521",
    7: "MLS_256_DHKEMP384_AES256GCM_SHA384_P384",
  };
  const suite = names[suiteId];
  if (suite === undefined) throw new Error(`--suite: one of ${Object.keys(names).join(", ")}`);
  const socketPath = opt("--socket") ?? process.env.MLSKEYD_SOCKET;
  if (!socketPath) throw new Error("--socket or MLSKEYD_SOCKET is required");
  const r = await runConversation({ suite, socketPath, carolSocketPath: opt("--carol-socket"), log: (l) => console.log(`  ${l}`) });
  const initKey = await r.bobClient.getKey(r.bob.initKeyId);
  console.log(`done: ${r.aliceGot.length + r.bobGot.length + r.carolGot.length} messages delivered; Bob's init key ${initKey.state}; daemon calls for Bob: ${JSON.stringify(r.bobClient.calls)}`);
  r.bobClient.close();
  r.carolClient?.close();
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  main().catch((e) => {
    console.error(`conversation: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  });
}
