// @mlskeyd/ts-mls: a ts-mls CryptoProvider whose private-key operations for
// keys held by mlskeyd go to the daemon.
//
// ts-mls hands private keys around as opaque byte strings (the private
// package, the private path, ClientState.signaturePrivateKey). For a key the
// daemon holds, those bytes are a *handle*: a tagged reference to the key id.
// A handle carries no secret; it is useless without the daemon's socket and
// the uid that owns the key. The provider recognises handles at the three
// places ts-mls uses a private key — Signature.sign, Hpke.importPrivateKey
// and Hpke.open — and sends those operations to the daemon. Every other
// operation, including all keys derived from path secrets (RFC 9420 §7.4),
// stays with the base provider in this process.

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import {
  ciphersuites,
  decodeMlsMessage,
  defaultCryptoProvider,
  encodeMlsMessage,
  type Capabilities,
  type Ciphersuite,
  type CiphersuiteImpl,
  type CiphersuiteName,
  type Credential,
  type CryptoProvider,
  type KeyPackage,
  type PrivateKey,
  type PrivateKeyPackage,
} from "ts-mls";
import { encodeGroupSecrets, type GroupSecrets } from "ts-mls/groupSecrets.js";
import type { PreSharedKeyID } from "ts-mls/presharedkey.js";

// ---------------------------------------------------------------- errors

/** Base class of every error this package raises for a daemon answer. */
export class MlskeydError extends Error {
  /** The gRPC status code name, e.g. "NOT_FOUND". */
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "MlskeydError";
    this.code = code;
  }
}
/** The key (or the Welcome's KeyPackage) is not known to the daemon. */
export class NotFoundError extends MlskeydError {
  constructor(message: string) {
    super("NOT_FOUND", message);
    this.name = "NotFoundError";
  }
}
/** The init key was already consumed by an earlier Welcome. */
export class ConsumedError extends MlskeydError {
  constructor(message: string) {
    super("FAILED_PRECONDITION", message);
    this.name = "ConsumedError";
  }
}
/** The caller may not use the key (another uid's key, or not an admin). */
export class PermissionDeniedError extends MlskeydError {
  constructor(message: string, code = "PERMISSION_DENIED") {
    super(code, message);
    this.name = "PermissionDeniedError";
  }
}
/** The daemon or its device cannot be reached. */
export class UnavailableError extends MlskeydError {
  constructor(message: string) {
    super("UNAVAILABLE", message);
    this.name = "UnavailableError";
  }
}

/** Maps a gRPC error to the typed errors above, keeping the daemon's message. */
export function toMlskeydError(err: unknown, what: string): Error {
  const e = err as grpc.ServiceError;
  if (e === null || typeof e !== "object" || typeof e.code !== "number") {
    return err instanceof Error ? err : new Error(String(err));
  }
  const msg = `mlskeyd ${what}: ${e.details || e.message}`;
  switch (e.code) {
    case grpc.status.NOT_FOUND:
      return new NotFoundError(msg);
    case grpc.status.PERMISSION_DENIED:
      return new PermissionDeniedError(msg);
    case grpc.status.UNAUTHENTICATED:
      return new PermissionDeniedError(msg, "UNAUTHENTICATED");
    case grpc.status.UNAVAILABLE:
      return new UnavailableError(msg);
    case grpc.status.FAILED_PRECONDITION:
      // The daemon says "is consumed" for a key and "was already used" for
      // a Welcome whose init key is gone.
      if (/\bconsumed\b|\balready used\b/.test(e.details ?? "")) return new ConsumedError(msg);
      return new MlskeydError("FAILED_PRECONDITION", msg);
    default:
      return new MlskeydError(grpc.status[e.code] ?? String(e.code), msg);
  }
}

// ---------------------------------------------------------------- handles

/** What a handle names: a daemon key of a role, for a suite. */
export interface KeyHandle {
  /** "signature", "init" or "leaf" (the KeyPackage's leaf encryption key). */
  role: "signature" | "init" | "leaf";
  id: string;
  suite: number;
  /** For init keys: the KeyPackageRef, hex, needed to rebuild the Welcome entry. */
  ref?: string;
}

// A prefix no raw key can start with by accident: raw keys are random-looking
// scalars or points of at most 133 bytes, and the tag alone is 17 bytes of
// ASCII that spell the package's name.
const HANDLE_TAG = new TextEncoder().encode("mlskeyd-handle/1:");

/** Encodes a handle as the opaque private-key bytes ts-mls carries around. */
export function encodeHandle(h: KeyHandle): Uint8Array {
  const body = new TextEncoder().encode(JSON.stringify(h));
  const out = new Uint8Array(HANDLE_TAG.length + body.length);
  out.set(HANDLE_TAG, 0);
  out.set(body, HANDLE_TAG.length);
  return out;
}

/** Returns the handle encoded in bytes, or undefined for any other bytes. */
export function decodeHandle(b: Uint8Array | undefined): KeyHandle | undefined {
  if (b === undefined || b.length <= HANDLE_TAG.length) return undefined;
  for (let i = 0; i < HANDLE_TAG.length; i++) if (b[i] !== HANDLE_TAG[i]) return undefined;
  let h: KeyHandle;
  try {
    h = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(b.subarray(HANDLE_TAG.length)));
  } catch {
    throw new Error("mlskeyd: malformed key handle");
  }
  if (!["signature", "init", "leaf"].includes(h.role) || typeof h.id !== "string" || typeof h.suite !== "number") {
    throw new Error("mlskeyd: malformed key handle");
  }
  return h;
}

/** True when b is a handle, not key material. */
export function isHandle(b: Uint8Array | undefined): boolean {
  return decodeHandle(b) !== undefined;
}

// The object importPrivateKey returns for a handle: ts-mls only passes it
// back to open/exportPrivateKey, which recognise it by this symbol.
const handleKey = Symbol("mlskeyd handle");
type HandlePrivateKey = PrivateKey & { [handleKey]: KeyHandle };
function handleOf(k: unknown): KeyHandle | undefined {
  return k !== null && typeof k === "object" ? (k as HandlePrivateKey)[handleKey] : undefined;
}

// ---------------------------------------------------------------- TLS helpers

// Reads one RFC 9420 §2.1.2 variable-length vector at off.
function readVector(b: Uint8Array, off: number): [Uint8Array, number] {
  if (off >= b.length) throw new Error("truncated vector");
  const prefix = b[off]! >> 6;
  let len: number;
  let hdr: number;
  if (prefix === 0) {
    len = b[off]! & 0x3f;
    hdr = 1;
  } else if (prefix === 1) {
    if (off + 2 > b.length) throw new Error("truncated vector");
    len = ((b[off]! & 0x3f) << 8) | b[off + 1]!;
    hdr = 2;
  } else if (prefix === 2) {
    if (off + 4 > b.length) throw new Error("truncated vector");
    len = ((b[off]! & 0x3f) * 2 ** 24) + (b[off + 1]! << 16) + (b[off + 2]! << 8) + b[off + 3]!;
    hdr = 4;
  } else {
    throw new Error("invalid vector length prefix");
  }
  const start = off + hdr;
  if (start + len > b.length) throw new Error("truncated vector");
  return [b.subarray(start, start + len), start + len];
}

/** Splits SignContent / EncryptContext (two vectors) into label and body. */
export function splitLabeled(b: Uint8Array): { label: string; body: Uint8Array } {
  const [label, off] = readVector(b, 0);
  const [body, end] = readVector(b, off);
  if (end !== b.length) throw new Error("trailing bytes after labeled content");
  const s = new TextDecoder("utf-8", { fatal: true }).decode(label);
  if (!s.startsWith("MLS 1.0 ")) throw new Error(`label ${JSON.stringify(s)} lacks the "MLS 1.0 " prefix`);
  return { label: s.slice("MLS 1.0 ".length), body };
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const unhex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));

function suiteNameOf(id: number): CiphersuiteName {
  const name = (Object.keys(ciphersuites) as CiphersuiteName[]).find((n) => ciphersuites[n] === id);
  if (name === undefined) throw new Error(`cipher suite ${id} is unknown to ts-mls`);
  return name;
}

// ---------------------------------------------------------------- gRPC

const here = dirname(fileURLToPath(import.meta.url));

// The package ships next to the repository's proto/ when used from a
// checkout, and with its own copy (proto/ in the package) when installed.
function protoPath(): { file: string; root: string } {
  for (const root of [join(here, "..", "..", "proto"), join(here, "..", "..", "..", "..", "proto")]) {
    const file = join(root, "mlskey", "v1", "mlskey.proto");
    if (existsSync(file)) return { file, root };
  }
  throw new Error("mlskeyd: mlskey.proto not found next to the package");
}

type Unary = (req: object, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: any) => void) => void;

/** Options for connect. */
export interface ConnectOptions {
  /** The daemon's Unix socket; default $MLSKEYD_SOCKET, else /run/mlskeyd/mlskeyd.sock. */
  socketPath?: string;
  /** Deadline for each call, in milliseconds (default 30000). */
  timeoutMs?: number;
}

/** What createKeyPackage takes. */
export interface CreateKeyPackageOptions {
  cipherSuite: CiphersuiteName | number;
  /** A basic credential's identity (string: UTF-8). */
  identity?: string | Uint8Array;
  /** Or a full credential (basic or x509). */
  credential?: Credential;
  /** The engine's capabilities; what the daemon derives itself is added by it. */
  capabilities?: Partial<Capabilities>;
  lifetimeSeconds?: number;
  lastResort?: boolean;
  /** Sign with this existing daemon signature key (default: a new one). */
  signatureKeyId?: string;
  /** false leaves out the GREASE values the daemon adds by default (RFC 9420 §13.5). */
  grease?: boolean;
}

/** A KeyPackage made by the daemon, in the shapes ts-mls uses. */
export interface DaemonKeyPackage {
  publicPackage: KeyPackage;
  /** Handles only: no private key byte is in this process. */
  privatePackage: PrivateKeyPackage;
  /** The KeyPackage as an MLSMessage, as the daemon made it. */
  encoded: Uint8Array;
  keyPackageRef: Uint8Array;
  initKeyId: string;
  leafEncryptionKeyId: string;
  signatureKeyId: string;
}

/** Counts of the operations the provider sent to the daemon. */
export interface DaemonCallCounts {
  sign: number;
  openWelcome: number;
  decryptWithLabel: number;
}

const credentialTypeIds: Record<string, number> = { basic: 1, x509: 2 };

/** A connection to mlskeyd. */
export class MlskeydClient {
  readonly socketPath: string;
  readonly calls: DaemonCallCounts = { sign: 0, openWelcome: 0, decryptWithLabel: 0 };
  private readonly stub: grpc.Client & Record<string, Unary>;
  private readonly timeoutMs: number;

  constructor(opts: ConnectOptions = {}) {
    this.socketPath = opts.socketPath || process.env.MLSKEYD_SOCKET || "/run/mlskeyd/mlskeyd.sock";
    this.timeoutMs = opts.timeoutMs ?? 30000;
    const { file, root } = protoPath();
    const def = protoLoader.loadSync(file, {
      includeDirs: [root],
      keepCase: true,
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    const pkg = grpc.loadPackageDefinition(def) as any;
    const Service = pkg.mlskey.v1.KeyService as grpc.ServiceClientConstructor;
    this.stub = new Service(`unix:${this.socketPath}`, grpc.credentials.createInsecure(), {
      "grpc.max_receive_message_length": 64 << 20,
    }) as any;
  }

  /**
   * Calls one RPC by its proto name (e.g. "GetInfo") with a request in the
   * proto's field names; errors are mapped to the typed errors.
   */
  call<T = any>(method: string, req: object): Promise<T> {
    const fn = this.stub[method];
    if (typeof fn !== "function") return Promise.reject(new Error(`mlskeyd: no RPC ${method}`));
    const deadline = new Date(Date.now() + this.timeoutMs);
    return new Promise((resolve, reject) => {
      fn.call(this.stub, req, new grpc.Metadata(), { deadline }, (err, res) => {
        if (err) reject(toMlskeydError(err, method));
        else resolve(res as T);
      });
    });
  }

  close(): void {
    this.stub.close();
  }

  /** SignWithLabel: label without the "MLS 1.0 " prefix. */
  async signWithLabel(keyId: string, label: string, content: Uint8Array): Promise<Uint8Array> {
    this.calls.sign++;
    const r = await this.call("SignWithLabel", { key_id: keyId, label, content: Buffer.from(content) });
    return new Uint8Array(r.signature);
  }

  async decryptWithLabel(keyId: string, label: string, context: Uint8Array, kemOutput: Uint8Array, ciphertext: Uint8Array): Promise<Uint8Array> {
    this.calls.decryptWithLabel++;
    const r = await this.call("DecryptWithLabel", {
      key_id: keyId,
      label,
      context: Buffer.from(context),
      kem_output: Buffer.from(kemOutput),
      ciphertext: Buffer.from(ciphertext),
    });
    return new Uint8Array(r.plaintext);
  }

  /** OpenWelcome: the daemon decrypts the GroupSecrets and consumes the init key. */
  async openWelcome(welcome: Uint8Array): Promise<any> {
    this.calls.openWelcome++;
    return this.call("OpenWelcome", { welcome: Buffer.from(welcome) });
  }

  async getKey(id: string): Promise<any> {
    return this.call("GetKey", { id });
  }

  /**
   * Destroys a key in the device. An engine deletes its KeyPackage's leaf
   * encryption key once its own first commit has replaced that leaf
   * (RFC 9420 §9.2's deletion schedule applies to the device too).
   */
  async deleteKey(id: string): Promise<any> {
    return this.call("DeleteKey", { id });
  }

  /**
   * Has the daemon create a KeyPackage: init key, leaf encryption key and
   * (unless signatureKeyId is given) signature key are all made in the
   * device. The private package holds handles only.
   */
  async createKeyPackage(o: CreateKeyPackageOptions): Promise<DaemonKeyPackage> {
    const suite = typeof o.cipherSuite === "number" ? o.cipherSuite : ciphersuites[o.cipherSuite];
    if (suite === undefined) throw new Error(`unknown cipher suite ${String(o.cipherSuite)}`);
    let credential: object;
    if (o.credential !== undefined && o.identity !== undefined) throw new Error("createKeyPackage: give identity or credential, not both");
    if (o.credential?.credentialType === "x509") {
      credential = { x509: { certificates: o.credential.certificates.map((c) => Buffer.from(c)) } };
    } else if (o.credential?.credentialType === "basic") {
      credential = { basic_identity: Buffer.from(o.credential.identity) };
    } else if (o.identity !== undefined) {
      credential = { basic_identity: Buffer.from(typeof o.identity === "string" ? new TextEncoder().encode(o.identity) : o.identity) };
    } else {
      throw new Error("createKeyPackage: identity or credential is required");
    }
    const caps = o.capabilities ?? {};
    const req: Record<string, unknown> = {
      cipher_suite: suite,
      signature_key_id: o.signatureKeyId ?? "",
      credential,
      // The daemon derives the suite and the credential type in use; the
      // rest describes the engine and is passed on. Default types (which
      // RFC 9420 §7.2 forbids listing) are left out here.
      extra_cipher_suites: (caps.ciphersuites ?? []).map((n) => ciphersuites[n] ?? Number(n)).filter((n) => n !== suite),
      extra_extensions: (caps.extensions ?? []).filter((t) => t > 5),
      extra_proposals: (caps.proposals ?? []).filter((t) => t > 7),
      extra_credentials: (caps.credentials ?? []).map((c) => credentialTypeIds[c] ?? Number(c)),
      count: 1,
      last_resort: o.lastResort ?? false,
      no_grease: o.grease === false,
    };
    if (o.lifetimeSeconds !== undefined) req.lifetime = { seconds: String(Math.floor(o.lifetimeSeconds)), nanos: 0 };
    const r = await this.call("CreateKeyPackages", req);
    const created = r.key_packages[0];
    const encoded = new Uint8Array(created.key_package);
    const decoded = decodeMlsMessage(encoded, 0);
    if (decoded === undefined || decoded[0].wireformat !== "mls_key_package") {
      throw new Error("mlskeyd: the daemon's KeyPackage does not decode in ts-mls");
    }
    const ref = new Uint8Array(created.key_package_ref);
    const sigId: string = r.signature_key.id;
    return {
      publicPackage: decoded[0].keyPackage,
      privatePackage: {
        initPrivateKey: encodeHandle({ role: "init", id: created.init_key_id, suite, ref: hex(ref) }),
        hpkePrivateKey: encodeHandle({ role: "leaf", id: created.leaf_encryption_key_id, suite }),
        signaturePrivateKey: encodeHandle({ role: "signature", id: sigId, suite }),
      },
      encoded,
      keyPackageRef: ref,
      initKeyId: created.init_key_id,
      leafEncryptionKeyId: created.leaf_encryption_key_id,
      signatureKeyId: sigId,
    };
  }

  /**
   * A ts-mls CryptoProvider: signing and HPKE open with daemon handles go to
   * the daemon, everything else to base (ts-mls's default provider).
   */
  cryptoProvider(base: CryptoProvider = defaultCryptoProvider): CryptoProvider {
    return {
      getCiphersuiteImpl: async (cs: Ciphersuite) => this.wrap(await base.getCiphersuiteImpl(cs), cs),
    };
  }

  private wrap(impl: CiphersuiteImpl, cs: Ciphersuite): CiphersuiteImpl {
    const suite = ciphersuites[cs.name];
    const signature = {
      ...impl.signature,
      sign: async (signKey: Uint8Array, message: Uint8Array): Promise<Uint8Array> => {
        const h = decodeHandle(signKey);
        if (h === undefined) return impl.signature.sign(signKey, message);
        if (h.role !== "signature" || h.suite !== suite) {
          throw new Error(`mlskeyd: handle for ${h.role} key ${h.id} (suite ${h.suite}) used to sign in suite ${suite}`);
        }
        // ts-mls passes the serialized SignContent; the daemon rebuilds it
        // from label and content so it can check the label is an MLS one.
        const { label, body } = splitLabeled(message);
        return this.signWithLabel(h.id, label, body);
      },
    };
    const hpke = {
      ...impl.hpke,
      importPrivateKey: async (k: Uint8Array): Promise<PrivateKey> => {
        const h = decodeHandle(k);
        if (h === undefined) return impl.hpke.importPrivateKey(k);
        return { type: "private", [handleKey]: h } as unknown as HandlePrivateKey;
      },
      exportPrivateKey: async (k: PrivateKey): Promise<Uint8Array> => {
        const h = handleOf(k);
        return h === undefined ? impl.hpke.exportPrivateKey(k) : encodeHandle(h);
      },
      open: async (k: PrivateKey, kemOutput: Uint8Array, ciphertext: Uint8Array, info: Uint8Array, aad?: Uint8Array): Promise<Uint8Array> => {
        const h = handleOf(k);
        if (h === undefined) return impl.hpke.open(k, kemOutput, ciphertext, info, aad);
        if (aad !== undefined && aad.length > 0) throw new Error("mlskeyd: HPKE open with AAD is not an MLS operation");
        const { label, body } = splitLabeled(info);
        if (label === "Welcome" && h.role === "init") return this.openWelcomeEntry(h, cs.name, kemOutput, ciphertext, body);
        if (label === "UpdatePathNode" && h.role === "leaf") return this.decryptWithLabel(h.id, label, body, kemOutput, ciphertext);
        throw new Error(`mlskeyd: ${h.role} key ${h.id} cannot open ${JSON.stringify(label)} ciphertexts`);
      },
      importSecret: async (k: PrivateKey, ...rest: [Uint8Array, Uint8Array, number, Uint8Array]) => {
        if (handleOf(k) !== undefined) throw new Error("mlskeyd: external init with a daemon key is not supported");
        return impl.hpke.importSecret(k, ...rest);
      },
    };
    return { ...impl, signature, hpke };
  }

  // ts-mls decrypts the Welcome entry addressed to our KeyPackage with the
  // init key. The daemon only opens whole Welcomes (so that it consumes the
  // init key exactly once), so the entry is put back into a Welcome: the
  // KeyPackageRef from the handle, the ciphertext, and encrypted_group_info,
  // which is the EncryptContext's context. The GroupSecrets the daemon
  // returns are re-encoded for ts-mls.
  private async openWelcomeEntry(h: KeyHandle, suiteName: CiphersuiteName, kemOutput: Uint8Array, ciphertext: Uint8Array, encryptedGroupInfo: Uint8Array): Promise<Uint8Array> {
    if (h.ref === undefined) throw new Error(`mlskeyd: init key handle ${h.id} has no KeyPackageRef`);
    const welcome = encodeMlsMessage({
      version: "mls10",
      wireformat: "mls_welcome",
      welcome: {
        cipherSuite: suiteName,
        secrets: [{ newMember: unhex(h.ref), encryptedGroupSecrets: { kemOutput, ciphertext } }],
        encryptedGroupInfo,
      },
    });
    const r = await this.openWelcome(welcome);
    if (r.init_key_id !== h.id) throw new Error(`mlskeyd: the Welcome was opened with init key ${r.init_key_id}, not ${h.id}`);
    const gs = r.group_secrets;
    const secrets: GroupSecrets = {
      joinerSecret: new Uint8Array(gs.joiner_secret),
      pathSecret: gs.path_secret === undefined || gs.path_secret === null ? undefined : new Uint8Array(gs.path_secret),
      psks: (gs.psks ?? []).map(pskFromProto),
    };
    return encodeGroupSecrets(secrets);
  }
}

function pskFromProto(p: any): PreSharedKeyID {
  const nonce = new Uint8Array(p.psk_nonce);
  if (p.psk_type === 1) return { psktype: "external", pskId: new Uint8Array(p.psk_id), pskNonce: nonce };
  if (p.psk_type === 2) {
    const usage = (["application", "reinit", "branch"] as const)[p.resumption_usage - 1];
    if (usage === undefined) throw new Error(`mlskeyd: unknown resumption usage ${p.resumption_usage}`);
    return { psktype: "resumption", usage, pskGroupId: new Uint8Array(p.psk_group_id), pskEpoch: BigInt(p.psk_epoch), pskNonce: nonce };
  }
  throw new Error(`mlskeyd: unknown PSK type ${p.psk_type}`);
}

/** Connects to mlskeyd (lazily: the first call reports a missing daemon). */
export function connect(opts: ConnectOptions = {}): MlskeydClient {
  return new MlskeydClient(opts);
}
