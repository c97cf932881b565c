// Starts real dev daemons (SoftHSM) for the tests. The binaries come from
// $MLSKEYD_BIN_DIR (scripts/test.sh builds them) or are built with go from
// this checkout; without either the daemon tests are skipped, unless
// MLSKEYD_REQUIRE_DAEMON=1 makes that a failure.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { connect } from "../src/index.js";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");

let binDir: string | undefined;

/** The directory with mlskeyd and mlskeyctl, or a reason why there is none. */
export function binaries(): { dir?: string; skip?: string } {
  if (binDir !== undefined) return { dir: binDir };
  const env = process.env.MLSKEYD_BIN_DIR;
  if (env) {
    binDir = env;
    return { dir: env };
  }
  if (!existsSync(join(repo, "go.mod")) || spawnSync("go", ["version"]).status !== 0) {
    return { skip: "no MLSKEYD_BIN_DIR and no go toolchain to build mlskeyd" };
  }
  const dir = mkdtempSync(join(tmpdir(), "mlskeyd-tsmls-bin-"));
  const b = spawnSync("go", ["build", "-o", dir, "./cmd/mlskeyd", "./cmd/mlskeyctl"], { cwd: repo, stdio: "inherit" });
  if (b.status !== 0) throw new Error("go build of mlskeyd failed");
  binDir = dir;
  return { dir };
}

export function skipReason(): string | undefined {
  const b = binaries();
  if (b.skip && process.env.MLSKEYD_REQUIRE_DAEMON === "1") throw new Error(`daemon tests required: ${b.skip}`);
  return b.skip;
}

export interface Daemon {
  socket: string;
  state: string;
  ctl(...args: string[]): { stdout: string; stderr: string; status: number };
  stop(): Promise<void>;
}

export async function startDaemon(): Promise<Daemon> {
  const dir = binaries().dir!;
  const state = mkdtempSync(join(tmpdir(), "mlskeyd-tsmls-"));
  const socket = join(state, "mlskeyd.sock");
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("MLSKEYD_") && k !== "SOFTHSM2_CONF"));
  let log = "";
  const proc: ChildProcess = spawn(join(dir, "mlskeyd"), ["--dev", "--state-dir", state], { env, stdio: ["ignore", "pipe", "pipe"] });
  proc.stdout!.on("data", (d) => (log += d));
  proc.stderr!.on("data", (d) => (log += d));
  const exited = new Promise<void>((resolve) => proc.on("exit", () => resolve()));
  const c = connect({ socketPath: socket, timeoutMs: 2000 });
  try {
    for (let i = 0; ; i++) {
      if (proc.exitCode !== null) throw new Error(`mlskeyd exited at start-up:\n${log}`);
      try {
        await c.call("GetInfo", {});
        break;
      } catch {
        if (i > 600) throw new Error(`mlskeyd did not start serving:\n${log}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } finally {
    c.close();
  }
  return {
    socket,
    state,
    ctl: (...args: string[]) => {
      const r = spawnSync(join(dir, "mlskeyctl"), ["--socket", socket, ...args], { env, encoding: "utf8" });
      return { stdout: r.stdout, stderr: r.stderr, status: r.status ?? -1 };
    },
    stop: async () => {
      if (proc.exitCode === null) {
        proc.kill("SIGTERM");
        await exited;
      }
      rmSync(state, { recursive: true, force: true });
    },
  };
}
