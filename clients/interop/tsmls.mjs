#!/usr/bin/env node
// tsmls.mjs — independent RFC 9420 (MLS) peer for mlskeyd interoperability tests.
//
// Uses the npm package ts-mls (pinned in package.json) as a second, unrelated
// MLS implementation. The Go tests hand it KeyPackages produced by the daemon;
// this script verifies them and creates a group that adds them, returning the
// Welcome the daemon must then be able to open.
//
// Usage (JSON on stdin, JSON on stdout; on error: message on stderr, exit 1):
//   node tsmls.mjs verify    < {"key_packages": ["<hex MLSMessage>", ...]}
//   node tsmls.mjs add       < {"key_package": "<hex MLSMessage>", "group_id": "<hex, optional>"}
//   node tsmls.mjs selftest [--suite N|all]      (no stdin)
//   node tsmls.mjs welcome KEYPACKAGES_FILE WELCOME_FILE [N]   (text; scripts/make-welcome.sh)
// See README.md for the full contract.

import {
  ciphersuites,
  getCiphersuiteImpl,
  getCiphersuiteFromName,
  generateKeyPackage,
  defaultCapabilities,
  createGroup,
  createCommit,
  joinGroup,
  emptyPskIndex,
  encodeMlsMessage,
  decodeMlsMessage,
  mlsExporter,
} from "ts-mls";
import { verifyKeyPackage, makeKeyPackageRef } from "ts-mls/keyPackage.js";
import { verifyLeafNodeSignatureKeyPackage } from "ts-mls/leafNode.js";

// Cipher suites this helper is expected to handle (RFC 9420 §17.1).
const SUPPORTED_SUITES = [1, 2, 3, 5, 7];
// draft-ietf-mls-extensions last_resort_key_package KeyPackage extension (0x000A).
const LAST_RESORT_EXTENSION = 0x000a;
// Exporter label used to let the Go side compare epoch secrets after joining.
const EXPORTER_LABEL = "mlskeyd interop";
const EXPORTER_LENGTH = 32;

// ---------- small helpers ----------

class CliError extends Error {}

function toHex(bytes) {
  return Buffer.from(bytes).toString("hex");
}

function fromHex(s, what) {
  if (typeof s !== "string" || s.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(s)) {
    throw new CliError(`${what}: not a hex string`);
  }
  return new Uint8Array(Buffer.from(s, "hex"));
}

function suiteId(name) {
  // ts-mls decodes known suites to their name and unknown ones to a decimal string.
  const id = ciphersuites[name];
  return id !== undefined ? id : Number(name);
}

function suiteName(id) {
  return Object.keys(ciphersuites).find((k) => ciphersuites[k] === id);
}

const implCache = new Map();
async function suiteImpl(id) {
  if (!SUPPORTED_SUITES.includes(id)) {
    throw new CliError(`cipher suite ${id} is not supported by this helper (supported: ${SUPPORTED_SUITES.join(", ")})`);
  }
  if (!implCache.has(id)) {
    const name = suiteName(id);
    if (name === undefined) throw new CliError(`cipher suite ${id} unknown to ts-mls`);
    try {
      implCache.set(id, await getCiphersuiteImpl(getCiphersuiteFromName(name)));
    } catch (e) {
      throw new CliError(`ts-mls cannot provide cipher suite ${id} (${name}): ${e.message}`);
    }
  }
  return implCache.get(id);
}

function errMessage(e) {
  return e instanceof Error ? `${e.name === "Error" || e instanceof CliError ? "" : e.name + ": "}${e.message}` : String(e);
}

async function readStdinJson() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  const text = Buffer.concat(chunks).toString("utf8");
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new CliError(`stdin is not valid JSON: ${e.message}`);
  }
}

function nowSeconds() {
  return BigInt(Math.floor(Date.now() / 1000));
}

// ---------- KeyPackage decode + verify ----------

// Decodes an MLSMessage(KeyPackage) and runs the checks ts-mls applies to a
// KeyPackage. Returns {kp, cs, result}; throws CliError on any hard failure.
async function decodeAndVerify(hex) {
  const bytes = fromHex(hex, "key package");
  if (bytes.length < 4 || bytes[0] !== 0x00 || bytes[1] !== 0x01 || bytes[2] !== 0x00 || bytes[3] !== 0x05) {
    throw new CliError("not an MLSMessage(KeyPackage): must start with 0001 0005 (mls10, mls_key_package)");
  }
  let decoded;
  try {
    decoded = decodeMlsMessage(bytes, 0);
  } catch (e) {
    throw new CliError(`ts-mls failed to decode the MLSMessage: ${errMessage(e)}`);
  }
  if (decoded === undefined) throw new CliError("ts-mls failed to decode the MLSMessage");
  const [msg, end] = decoded;
  if (msg.wireformat !== "mls_key_package") throw new CliError(`wire format is ${msg.wireformat}, not mls_key_package`);
  if (end !== bytes.length) throw new CliError(`${bytes.length - end} trailing byte(s) after the KeyPackage`);
  // ts-mls verifies signatures and computes the ref over its own re-encoding
  // of the decoded structure, so a non-canonical input would make those fail
  // in confusing ways. Say so explicitly.
  const reencoded = encodeMlsMessage(msg);
  if (toHex(reencoded) !== toHex(bytes)) {
    throw new CliError("ts-mls re-encoding differs from the input (non-canonical encoding)");
  }
  const kp = msg.keyPackage;
  const id = suiteId(kp.cipherSuite);
  const cs = await suiteImpl(id);

  if (kp.leafNode.leafNodeSource !== "key_package") throw new CliError("leaf_node_source is not key_package");
  if (!(await verifyKeyPackage(kp, cs.signature))) throw new CliError("KeyPackage signature (KeyPackageTBS) does not verify");
  if (!(await verifyLeafNodeSignatureKeyPackage(kp.leafNode, cs.signature))) {
    throw new CliError("LeafNode signature (LeafNodeTBS, source key_package) does not verify");
  }
  if (toHex(kp.initKey) === toHex(kp.leafNode.hpkePublicKey)) {
    throw new CliError("init_key equals leaf_node.encryption_key (RFC 9420 §10.1; ts-mls rejects on Add)");
  }
  const ref = await makeKeyPackageRef(kp, cs.hash);

  // Soft checks: these do not make verify fail, but ts-mls enforces them
  // when the KeyPackage is added to a group (see README).
  const warnings = [];
  const lt = kp.leafNode.lifetime;
  const now = nowSeconds();
  const lifetimeValidNow = lt.notBefore <= now && now <= lt.notAfter;
  if (!lifetimeValidNow) warnings.push("lifetime does not cover the current time (ts-mls add would reject)");
  const caps = kp.leafNode.capabilities;
  if (!caps.credentials.includes(kp.leafNode.credential.credentialType)) {
    warnings.push(`capabilities.credentials does not list the leaf's own credential type ${kp.leafNode.credential.credentialType} (RFC 9420 §7.2; a ts-mls joiner would reject its own tree)`);
  }
  if (!caps.credentials.includes("basic")) {
    warnings.push("capabilities.credentials does not list basic: `add` works, but a ts-mls joiner would reject a tree containing this basic-credential creator");
  }
  if (!caps.versions.includes("mls10")) warnings.push("capabilities.versions does not list mls10 (informational; ts-mls does not enforce)");
  if (!caps.ciphersuites.includes(kp.cipherSuite)) warnings.push("capabilities.cipher_suites does not list the KeyPackage's own suite (informational; ts-mls does not enforce)");
  for (const ext of kp.leafNode.extensions) {
    if (typeof ext.extensionType === "number" && !caps.extensions.includes(ext.extensionType)) {
      warnings.push(`leaf node extension ${ext.extensionType} is not listed in capabilities.extensions (ts-mls add would reject)`);
    }
  }

  const cred = kp.leafNode.credential;
  const result = {
    ok: true,
    cipher_suite: id,
    key_package_ref: toHex(ref),
    identity: cred.credentialType === "basic" ? toHex(cred.identity) : null,
    credential_type: cred.credentialType,
    last_resort: kp.extensions.some((e) => e.extensionType === LAST_RESORT_EXTENSION),
    init_key: toHex(kp.initKey),
    encryption_key: toHex(kp.leafNode.hpkePublicKey),
    signature_key: toHex(kp.leafNode.signaturePublicKey),
    not_before: lt.notBefore.toString(),
    not_after: lt.notAfter.toString(),
    lifetime_valid_now: lifetimeValidNow,
    capabilities: {
      versions: caps.versions,
      cipher_suites: caps.ciphersuites.map(suiteId),
      extensions: caps.extensions,
      proposals: caps.proposals,
      credentials: caps.credentials,
    },
    key_package_extensions: kp.extensions.map((e) => e.extensionType),
    leaf_node_extensions: kp.leafNode.extensions.map((e) => e.extensionType),
    warnings,
  };
  return { kp, cs, id, ref, result };
}

async function cmdVerify(input) {
  if (input === null || typeof input !== "object" || !Array.isArray(input.key_packages)) {
    throw new CliError('stdin must be {"key_packages": ["<hex>", ...]}');
  }
  const results = [];
  for (const hex of input.key_packages) {
    try {
      results.push((await decodeAndVerify(hex)).result);
    } catch (e) {
      results.push({ ok: false, error: errMessage(e) });
    }
  }
  return { results };
}

// ---------- group creation + Add ----------

function creatorCapabilities(suiteNameStr) {
  // Deterministic (no GREASE) so test runs are reproducible.
  return {
    versions: ["mls10"],
    ciphersuites: [suiteNameStr],
    extensions: [],
    proposals: [],
    credentials: ["basic", "x509"],
  };
}

function shortLifetime() {
  const now = nowSeconds();
  return { notBefore: now - 3600n, notAfter: now + 7n * 86400n };
}

// Creates a one-member group (creator keys generated by ts-mls), commits an
// Add of the given KeyPackage with the ratchet_tree extension in the Welcome.
async function addToNewGroup(kp, cs, groupId) {
  const creatorIdentity = new TextEncoder().encode("ts-mls-interop-creator");
  const creator = await generateKeyPackage(
    { credentialType: "basic", identity: creatorIdentity },
    creatorCapabilities(cs.name),
    shortLifetime(),
    [],
    cs,
  );
  const state0 = await createGroup(groupId, creator.publicPackage, creator.privatePackage, [], cs);
  const res = await createCommit(
    { state: state0, cipherSuite: cs },
    { extraProposals: [{ proposalType: "add", add: { keyPackage: kp } }], ratchetTreeExtension: true },
  );
  if (res.welcome === undefined) throw new CliError("ts-mls produced no Welcome");
  const welcomeBytes = encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: res.welcome });
  const exporter = await mlsExporter(res.newState.keySchedule.exporterSecret, EXPORTER_LABEL, new Uint8Array(), EXPORTER_LENGTH, cs);
  return { res, welcomeBytes, exporter, creatorIdentity };
}

async function cmdAdd(input) {
  if (input === null || typeof input !== "object" || typeof input.key_package !== "string") {
    throw new CliError('stdin must be {"key_package": "<hex>", "group_id": "<hex, optional>"}');
  }
  const { kp, cs, id, ref } = await decodeAndVerify(input.key_package);
  const groupId =
    input.group_id !== undefined && input.group_id !== null
      ? fromHex(input.group_id, "group_id")
      : cs.rng.randomBytes(16);
  const { res, welcomeBytes, exporter, creatorIdentity } = await addToNewGroup(kp, cs, groupId);
  return {
    welcome: toHex(welcomeBytes),
    group_id: toHex(groupId),
    epoch: Number(res.newState.groupContext.epoch),
    cipher_suite: id,
    key_package_ref: toHex(ref),
    // Extras for stronger checks on the Go side (optional to use):
    epoch_authenticator: toHex(res.newState.keySchedule.epochAuthenticator),
    exporter_label: EXPORTER_LABEL,
    exporter_length: EXPORTER_LENGTH,
    exporter_secret: toHex(exporter),
    tree_hash: toHex(res.newState.groupContext.treeHash),
    creator_identity: toHex(creatorIdentity),
    member_count: res.newState.ratchetTree.filter((n) => n?.nodeType === "leaf").length,
  };
}

// ---------- welcome (for people: scripts/make-welcome.sh) ----------

// Reads a file of concatenated MLSMessage(KeyPackage)s, as `mlskeyctl
// keypackage create --out` writes it, adds the n-th (1-based) to a new
// group and writes that group's Welcome (an MLSMessage) to welcomeFile.
// Prints one line of text, not JSON: this command is for a shell.
async function cmdWelcome(args) {
  if (args.length < 2 || args.length > 3) throw new CliError("usage: node tsmls.mjs welcome KEYPACKAGES_FILE WELCOME_FILE [N]");
  const [kpFile, welcomeFile, nArg = "1"] = args;
  const n = Number(nArg);
  if (!Number.isInteger(n) || n < 1) throw new CliError(`welcome: N must be a positive number, not ${nArg}`);
  const { readFile, writeFile } = await import("node:fs/promises");
  let bytes;
  try {
    bytes = new Uint8Array(await readFile(kpFile));
  } catch (e) {
    throw new CliError(`welcome: ${e.message}`);
  }
  const kps = [];
  for (let off = 0; off < bytes.length && kps.length < n; ) {
    let decoded;
    try {
      decoded = decodeMlsMessage(bytes, off);
    } catch (e) {
      decoded = undefined;
    }
    if (decoded === undefined || decoded[0].wireformat !== "mls_key_package") {
      throw new CliError(`welcome: ${kpFile}: no MLSMessage(KeyPackage) at byte ${off} (want the file 'mlskeyctl keypackage create --out' writes)`);
    }
    // decodeMlsMessage returns how many bytes from off it read.
    kps.push(bytes.slice(off, off + decoded[1]));
    off += decoded[1];
  }
  if (kps.length < n) throw new CliError(`welcome: ${kpFile} holds ${kps.length} KeyPackage(s), not ${n}`);
  const added = await cmdAdd({ key_package: toHex(kps[n - 1]) });
  await writeFile(welcomeFile, fromHex(added.welcome, "welcome"));
  return `${welcomeFile}: Welcome to group ${added.group_id}, epoch ${added.epoch}, suite ${added.cipher_suite}, for KeyPackage ${added.key_package_ref}`;
}

// ---------- selftest ----------

async function selftestSuite(id) {
  const out = { suite: id };
  const cs = await suiteImpl(id);
  const joiner = await generateKeyPackage(
    { credentialType: "basic", identity: new TextEncoder().encode("ts-mls-selftest-joiner") },
    defaultCapabilities(), // includes random GREASE values, like real clients
    shortLifetime(),
    [{ extensionType: LAST_RESORT_EXTENSION, extensionData: new Uint8Array() }],
    cs,
  );
  const kpHex = toHex(encodeMlsMessage({ version: "mls10", wireformat: "mls_key_package", keyPackage: joiner.publicPackage }));

  // verify: a good package, one with a flipped signature byte, and garbage.
  const bad = fromHex(kpHex, "kp");
  bad[bad.length - 5] ^= 0x01; // inside the KeyPackage signature (last field)
  // flipped byte in the LeafNode signature (KeyPackage signature left intact
  // over the modified TBS would fail too, so re-sign is not attempted; the
  // point is that the tampered package is rejected).
  const leafSig = joiner.publicPackage.leafNode.signature.slice();
  leafSig[0] ^= 0x01;
  const badLeafKp = { ...joiner.publicPackage, leafNode: { ...joiner.publicPackage.leafNode, signature: leafSig } };
  const badLeafHex = toHex(encodeMlsMessage({ version: "mls10", wireformat: "mls_key_package", keyPackage: badLeafKp }));
  const v = await cmdVerify({ key_packages: [kpHex, toHex(bad), "00010005ff", badLeafHex] });
  const [good, flipped, garbage, flippedLeaf] = v.results;
  out.verify_ok = good.ok === true && good.last_resort === true && good.cipher_suite === id;
  out.key_package_ref = good.key_package_ref;
  out.flipped_signature_rejected = flipped.ok === false;
  out.flipped_signature_error = flipped.error;
  out.garbage_rejected = garbage.ok === false;
  out.flipped_leaf_signature_rejected = flippedLeaf.ok === false;

  // add, then join with ts-mls itself to prove the Welcome is usable.
  const added = await cmdAdd({ key_package: kpHex });
  out.add_epoch = added.epoch;
  out.group_id = added.group_id;
  out.welcome_prefix = added.welcome.slice(0, 8);
  const wdec = decodeMlsMessage(fromHex(added.welcome, "welcome"), 0);
  if (wdec === undefined || wdec[0].wireformat !== "mls_welcome") throw new CliError("selftest: Welcome did not decode");
  const joined = await joinGroup(wdec[0].welcome, joiner.publicPackage, joiner.privatePackage, emptyPskIndex, cs);
  const joinedExporter = await mlsExporter(joined.keySchedule.exporterSecret, EXPORTER_LABEL, new Uint8Array(), EXPORTER_LENGTH, cs);
  out.join_ok =
    Number(joined.groupContext.epoch) === added.epoch &&
    toHex(joined.groupContext.groupId) === added.group_id &&
    toHex(joined.keySchedule.epochAuthenticator) === added.epoch_authenticator &&
    toHex(joinedExporter) === added.exporter_secret;
  out.ok = out.verify_ok && out.flipped_signature_rejected && out.flipped_leaf_signature_rejected && out.garbage_rejected && out.add_epoch === 1 && out.join_ok;
  return out;
}

async function cmdSelftest(args) {
  let suiteArg = "1";
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--suite" && i + 1 < args.length) suiteArg = args[++i];
    else if (args[i].startsWith("--suite=")) suiteArg = args[i].slice(8);
    else throw new CliError(`selftest: unknown argument ${args[i]}`);
  }
  const suites = suiteArg === "all" ? SUPPORTED_SUITES : [Number(suiteArg)];
  if (suites.some((s) => !Number.isInteger(s))) throw new CliError(`selftest: bad --suite ${suiteArg}`);
  const results = [];
  for (const s of suites) {
    try {
      results.push(await selftestSuite(s));
    } catch (e) {
      results.push({ suite: s, ok: false, error: errMessage(e) });
    }
  }
  const summary = { ok: results.every((r) => r.ok), ts_mls: await tsMlsVersion(), results };
  if (!summary.ok) {
    process.stdout.write(JSON.stringify(summary) + "\n");
    throw new CliError("selftest failed");
  }
  return summary;
}

async function tsMlsVersion() {
  try {
    const { readFile } = await import("node:fs/promises");
    const url = new URL("./node_modules/ts-mls/package.json", import.meta.url);
    return JSON.parse(await readFile(url, "utf8")).version;
  } catch {
    return "unknown";
  }
}

// ---------- main ----------

async function main() {
  const [cmd, ...args] = process.argv.slice(2);
  let out;
  switch (cmd) {
    case "verify":
      out = await cmdVerify(await readStdinJson());
      break;
    case "add":
      out = await cmdAdd(await readStdinJson());
      break;
    case "selftest":
      out = await cmdSelftest(args);
      break;
    case "welcome":
      process.stdout.write((await cmdWelcome(args)) + "\n");
      return;
    default:
      throw new CliError("usage: node tsmls.mjs verify|add|selftest [--suite N|all]|welcome KEYPACKAGES_FILE WELCOME_FILE [N]");
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((e) => {
  process.stderr.write(`tsmls: ${errMessage(e)}\n`);
  process.exit(1);
});
