#!/usr/bin/env python3
"""Soak test of the gateway in local mode under faults.

Open-loop load (Poisson arrivals at a fixed total rate, each request in a
thread of its own, one connection per request) on the functions in
tests/soak/functions/, mixed sync, async (`Event`) and HTTP-trigger calls,
while a random environment process (a shim or its language runtime) is
SIGKILLed every 20-40 s and the gateway is restarted once (SIGTERM, wait for
its exit, start again on the same port). The gateway's RSS is sampled every
second across the restart.

Every request ends in one of:
  answered  an HTTP response (any status), grouped by status and errorType;
  refused   the connection was refused (the gateway was not listening):
            nothing was written, so nothing was lost;
  lost      the connection was made and the request written (or being
            written) but no HTTP response came: reset, closed or timed out.
Sync requests lost make the script exit 1.

Async events answered 202 are followed to their execution: each soak
function appends "done <id>" (or "fail <id>" for a failed run) to the file
named by SOAK_LOG, which the functions inherit from the gateway. An accepted
event that did not run to its end and was not kept as a dead letter (listed
at the end, or logged by the stopped gateway after its last attempt) was
lost; the report says how many, why, and whether they were accepted before
the restart.

Writes docs/soak/REPORT.md, docs/soak/rss.png and docs/soak/rss.csv (or
--out DIR) from the run's data; the gateway's logs, every request and the
execution log stay in --work-dir.

Python 3.11 standard library for the load; matplotlib for the chart (it is
installed into ~/.cache/porchlight/venv when missing; without it the CSV is
still written and the report says so).
"""

from __future__ import annotations

import argparse
import collections
import csv
import ctypes
import datetime
import http.client
import importlib.util
import json
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VENV = Path.home() / ".cache" / "porchlight" / "venv"

# Share of the total rate per function, and what each accepts.
FUNCTIONS = {
    # name: (weight, HTTP trigger share of its sync calls)
    "soak-echo": (0.5, 0.3),
    "soak-slow": (0.3, 0.0),
    "soak-flaky": (0.2, 0.0),
}

LOOPBACK = "127.0.0.1"

# What the gateway logs when its stop gives up waiting for async work.
ABANDONED = "async invocations still running at shutdown were abandoned"


def now() -> float:
    return time.monotonic()


# --------------------------------------------------------------------------
# Gateway process


class Gateway:
    """The gateway under test; restartable, its pid readable from any thread."""

    def __init__(self, args, work: Path, soak_log: Path):
        self.args = args
        self.work = work
        self.soak_log = soak_log
        self.proc: subprocess.Popen | None = None
        self.generation = 0
        self.lock = threading.Lock()
        self.logs: list[Path] = []

    def pid(self) -> int | None:
        with self.lock:
            return self.proc.pid if self.proc and self.proc.poll() is None else None

    def start(self) -> float:
        """Starts the gateway; returns when /ready answers 200 (seconds taken)."""
        self.generation += 1
        log = self.work / f"gateway-{self.generation}.log"
        self.logs.append(log)
        cmd = [
            str(self.args.gateway_bin),
            "--local",
            str(HERE / "functions"),
            "--listen",
            f"{LOOPBACK}:{self.args.port}",
            "--async-retry-base",
            self.args.async_retry_base,
        ]
        env = dict(os.environ, SOAK_LOG=str(self.soak_log))
        env.setdefault("RUST_LOG", "info")
        started = now()
        out = open(log, "ab")
        with self.lock:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
            )
        out.close()
        deadline = started + 60
        while now() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gateway exited during startup with {self.proc.returncode}; see {log}")
            if http_get("/ready", self.args.port, timeout=1.0)[0] == 200:
                return now() - started
            time.sleep(0.05)
        raise SystemExit(f"gateway not ready within 60 s; see {log}")

    def stop(self, timeout: float) -> tuple[int | None, float, bool]:
        """SIGTERM, wait for the exit; returns (exit code, seconds, killed)."""
        with self.lock:
            proc = self.proc
        if proc is None:
            return None, 0.0, False
        started = now()
        proc.send_signal(signal.SIGTERM)
        killed = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            killed = True
        return proc.returncode, now() - started, killed


def _die_with_parent() -> None:
    """In the child: SIGTERM when the thread that started it ends (or this
    script dies), so no gateway outlives the run."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def http_get(path: str, port: int, timeout: float = 5.0) -> tuple[int | None, bytes]:
    try:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
        conn.request("GET", path, headers={"Connection": "close"})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status, body
    except (OSError, http.client.HTTPException):
        return None, b""


# --------------------------------------------------------------------------
# Processes under the gateway


def read_proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, cmdline) for every process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        table[pid] = (ppid, cmd)
    return table


def environment_processes(gateway_pid: int) -> list[dict]:
    """The gateway's environments: each shim (a child) and its runtime (the shim's child)."""
    table = read_proc_table()
    out = []
    for pid, (ppid, cmd) in table.items():
        if ppid != gateway_pid:
            continue
        env_id = flag_value(cmd, "--environment-id") or "?"
        out.append({"pid": pid, "kind": "shim", "env": env_id})
        for cpid, (cppid, _ccmd) in table.items():
            if cppid == pid:
                out.append({"pid": cpid, "kind": "runtime", "env": env_id})
    return out


def flag_value(cmd: str, flag: str) -> str | None:
    parts = cmd.split()
    for i, p in enumerate(parts[:-1]):
        if p == flag:
            return parts[i + 1]
    return None


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------
# Load


class Load:
    def __init__(self, args, t0: float):
        self.args = args
        self.t0 = t0
        self.results: list[dict] = []
        self.lock = threading.Lock()
        self.inflight = 0
        self.threads: list[threading.Thread] = []

    def run(self, stop_at: float) -> None:
        rng = random.Random(self.args.seed)
        names = list(FUNCTIONS)
        weights = [FUNCTIONS[n][0] for n in names]
        t = self.t0
        while True:
            t += rng.expovariate(self.args.rate)
            if t >= stop_at:
                break
            delay = t - now()
            if delay > 0:
                time.sleep(delay)
            fn = rng.choices(names, weights)[0]
            if rng.random() < self.args.async_share:
                mode = "async"
            elif rng.random() < FUNCTIONS[fn][1]:
                mode = "http"
            else:
                mode = "sync"
            req = {"id": uuid.uuid4().hex, "fn": fn, "mode": mode, "scheduled": t - self.t0}
            with self.lock:
                if self.inflight >= self.args.max_inflight:
                    # Never expected: the client itself would be the bottleneck.
                    req.update(outcome="client_skipped")
                    self.results.append(req)
                    continue
                self.inflight += 1
            th = threading.Thread(target=self.one, args=(req,), daemon=True)
            th.start()
            self.threads.append(th)
            if len(self.threads) > 512:
                self.threads = [x for x in self.threads if x.is_alive()]

    def wait(self, bound: float) -> int:
        deadline = now() + bound
        for th in self.threads:
            th.join(max(0.0, deadline - now()))
        return sum(1 for th in self.threads if th.is_alive())

    def one(self, req: dict) -> None:
        try:
            self._one(req)
        except Exception as e:  # noqa: BLE001 - an unexpected client error is itself a finding
            req.update(outcome="client_error", detail=f"{type(e).__name__}: {e}")
        finally:
            with self.lock:
                self.inflight -= 1
                self.results.append(req)

    def _one(self, req: dict) -> None:
        body = json.dumps({"id": req["id"], "mode": req["mode"]}).encode()
        headers = {"Content-Type": "application/json", "Connection": "close"}
        if req["mode"] == "http":
            path = f"/http/{req['fn']}/echo"
        else:
            path = f"/2015-03-31/functions/{req['fn']}/invocations"
            if req["mode"] == "async":
                headers["X-Amz-Invocation-Type"] = "Event"
        conn = http.client.HTTPConnection(LOOPBACK, self.args.port, timeout=self.args.client_timeout)
        req["start"] = now() - self.t0
        try:
            conn.connect()
        except ConnectionRefusedError:
            req.update(outcome="refused", end=now() - self.t0)
            return
        except OSError as e:
            req.update(outcome="connect_failed", detail=type(e).__name__, end=now() - self.t0)
            return
        phase = "send"
        try:
            conn.request("POST", path, body=body, headers=headers)
            phase = "response"
            r = conn.getresponse()
            phase = "body"
            data = r.read()
        except (OSError, http.client.HTTPException) as e:
            req.update(outcome="lost", detail=f"{phase}: {type(e).__name__}", end=now() - self.t0)
            return
        finally:
            conn.close()
        req.update(
            outcome="answered",
            status=r.status,
            end=now() - self.t0,
            request_id=r.getheader("x-amzn-RequestId") or "",
            function_error=r.getheader("X-Amz-Function-Error") or "",
            environment=r.getheader("X-Porchlight-Environment") or "",
            error_type=error_type(r.status, r.getheader("X-Amz-Function-Error"), data),
        )


def error_type(status: int, function_error: str | None, data: bytes) -> str:
    if status < 400 and not function_error:
        return ""
    try:
        v = json.loads(data)
    except ValueError:
        return "(not JSON)"
    if isinstance(v, dict):
        return str(v.get("errorType") or v.get("Type") or "(none)")
    return "(none)"


# --------------------------------------------------------------------------
# The run


def main() -> int:
    args = parse_args()
    if args.plot_only:
        data = json.loads(Path(args.plot_only).read_text())
        plot(data, Path(data["png"]))
        return 0
    if args.build:
        subprocess.run(
            ["nice", "-n", "10", "cargo", "build", "--release", "--locked", "-p", "porchlight-gateway"],
            cwd=REPO,
            check=True,
        )
    if not args.gateway_bin.exists():
        print(f"soak: no gateway binary at {args.gateway_bin}; build it or pass --build", file=sys.stderr)
        return 2
    if http_get("/live", args.port, timeout=1.0)[0] is not None:
        print(f"soak: something already answers on {LOOPBACK}:{args.port}; pick another --port", file=sys.stderr)
        return 2
    work = args.work_dir or Path(f"/tmp/porchlight-soak-{int(time.time())}")
    work.mkdir(parents=True, exist_ok=True)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    soak_log = work / "executions.log"
    soak_log.write_text("")
    print(f"soak: work dir {work}, report in {out}", flush=True)

    gw = Gateway(args, work, soak_log)
    events: list[dict] = []  # kills and the restart
    samples: list[dict] = []
    stop = threading.Event()
    restarting = threading.Event()

    first_start = gw.start()
    t0 = now()
    events.append({"t": 0.0, "kind": "start", "detail": f"ready in {first_start:.2f} s"})
    stop_at = t0 + args.duration
    restart_at = t0 + (args.restart_at if args.restart_at is not None else args.duration / 2)

    def sampler():
        while not stop.is_set():
            t = now() - t0
            pid = gw.pid()
            row = {"t": round(t, 3), "pid": pid or "", "rss_kib": "", "shims": "", "runtimes": "", "env_rss_kib": ""}
            if pid:
                row["rss_kib"] = rss_kib(pid) or ""
                procs = environment_processes(pid)
                row["shims"] = sum(1 for p in procs if p["kind"] == "shim")
                row["runtimes"] = sum(1 for p in procs if p["kind"] == "runtime")
                row["env_rss_kib"] = sum(rss_kib(p["pid"]) or 0 for p in procs)
            samples.append(row)
            stop.wait(1.0 - ((now() - t0) % 1.0))

    kills: list[dict] = []

    def killer():
        rng = random.Random(args.seed + 1)
        while True:
            if stop.wait(rng.uniform(args.kill_min, args.kill_max)):
                return
            if now() >= stop_at:
                return
            pid = gw.pid()
            if restarting.is_set() or not pid:
                events.append({"t": now() - t0, "kind": "kill-skipped", "detail": "gateway restarting"})
                continue
            procs = environment_processes(pid)
            if not procs:
                events.append({"t": now() - t0, "kind": "kill-skipped", "detail": "no environment running"})
                continue
            victim = rng.choice(procs)
            try:
                os.kill(victim["pid"], signal.SIGKILL)
            except ProcessLookupError:
                continue
            k = dict(victim, t=now() - t0)
            kills.append(k)
            events.append({"t": k["t"], "kind": "kill", "detail": f"{victim['kind']} of {victim['env']} (pid {victim['pid']})"})
            print(f"soak: t={k['t']:.0f}s SIGKILL {victim['kind']} of {victim['env']}", flush=True)

    restart: dict = {}
    restarted = threading.Event()

    def restarter():
        try:
            if not stop.wait(max(0.0, restart_at - now())):
                restart_gateway()
        finally:
            restarted.set()
        # PR_SET_PDEATHSIG follows the thread that started the gateway: this
        # thread must outlive the gateway it started, so it stays until the end.
        stop.wait()

    def restart_gateway():
        restarting.set()
        t_term = now() - t0
        print(f"soak: t={t_term:.0f}s restarting the gateway", flush=True)
        code, _, killed = gw.stop(timeout=args.stop_timeout)
        t_exit = now() - t0
        try:
            ready_in = gw.start()
        except SystemExit as e:
            restart.update(failed=str(e))
            restarting.clear()
            return
        t_ready = now() - t0
        restarting.clear()
        restart.update(t_term=t_term, t_exit=t_exit, t_ready=t_ready, exit_code=code, killed=killed, start_s=ready_in)
        events.append({"t": t_term, "kind": "sigterm", "detail": "gateway SIGTERM"})
        events.append({"t": t_exit, "kind": "exited", "detail": f"exit code {code}{' (SIGKILLed)' if killed else ''}"})
        events.append({"t": t_ready, "kind": "ready", "detail": f"new gateway ready after {ready_in:.2f} s"})
        print(f"soak: t={t_ready:.0f}s gateway back (exit {code}, down {t_ready - t_term:.1f} s)", flush=True)

    load = Load(args, t0)
    threads = [threading.Thread(target=f, daemon=True) for f in (sampler, killer, restarter)]
    for th in threads:
        th.start()
    progress = threading.Thread(target=report_progress, args=(load, stop, t0, args.duration), daemon=True)
    progress.start()
    try:
        load.run(stop_at)
        unfinished = load.wait(args.client_timeout + 5)
        restarted.wait(args.stop_timeout + 120)
        if "failed" in restart:
            print(f"soak: the restart failed: {restart['failed']}", file=sys.stderr)
            return 1
        settle = wait_async_settled(args, t0, events)
        dead_letters = fetch_dead_letters(args.port)
        (work / "metrics-final.txt").write_bytes(http_get("/metrics", args.port)[1])
        # Before `stop`: the restarter thread's end would SIGTERM the gateway.
        code, took, killed = gw.stop(timeout=args.stop_timeout)
        events.append({"t": now() - t0, "kind": "final-stop", "detail": f"exit code {code} after {took:.1f} s"})
        final_stop = {"exit_code": code, "seconds": took, "killed": killed}
    finally:
        stop.set()
        if gw.pid():
            gw.stop(timeout=10)
    for th in threads:
        th.join(5)

    write_csv(work / "requests.csv", load.results)
    write_csv(out / "rss.csv", samples)
    data = analyse(args, load.results, kills, events, restart, samples, soak_log, dead_letters, gw.logs,
                   unfinished, settle, final_stop)
    (work / "summary.json").write_text(json.dumps(data, indent=2, default=str))
    chart = make_chart(data, out / "rss.png", work)
    (out / "REPORT.md").write_text(render_report(args, data, chart))
    print(f"soak: report written to {out / 'REPORT.md'}", flush=True)
    sync_lost = data["sync"]["lost"]
    print(f"soak: sent {data['sent']}, sync lost {sync_lost}, async lost {data['async']['lost']}, "
          f"async accepted and lost {data['async']['accepted_lost']}")
    return 1 if sync_lost else 0


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR") or str(REPO / "target")
    p.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    p.add_argument("--rate", type=float, default=40, help="requests a second across functions (default 40)")
    p.add_argument("--async-share", type=float, default=0.25, help="share of Event invocations (default 0.25)")
    p.add_argument("--port", type=int, default=18480, help="gateway port on 127.0.0.1 (default 18480)")
    p.add_argument("--kill-min", type=float, default=20, help="least seconds between kills (default 20)")
    p.add_argument("--kill-max", type=float, default=40, help="most seconds between kills (default 40)")
    p.add_argument("--restart-at", type=float, default=None, help="seconds into the run of the restart (default: half)")
    p.add_argument("--async-retry-base", default="2s", help="gateway's first async retry delay (default 2s)")
    p.add_argument("--client-timeout", type=float, default=30, help="per-request timeout, seconds (default 30)")
    p.add_argument("--stop-timeout", type=float, default=90, help="SIGTERM to SIGKILL of the gateway (default 90)")
    p.add_argument("--settle", type=float, default=60, help="most seconds to wait for async events after the load")
    p.add_argument("--max-inflight", type=int, default=2000, help="client-side bound on open requests")
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--gateway-bin", type=Path, default=Path(target) / "release" / "porchlight-gateway")
    p.add_argument("--build", action="store_true", help="cargo build --release the gateway first")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "soak", help="report folder (default docs/soak)")
    p.add_argument("--work-dir", type=Path, default=None, help="logs and raw data (default /tmp/porchlight-soak-*)")
    p.add_argument("--plot-only", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not (0 < args.kill_min <= args.kill_max):
        p.error("need 0 < --kill-min <= --kill-max")
    if args.rate <= 0 or args.duration <= 0:
        p.error("--rate and --duration must be positive")
    return args


def report_progress(load: Load, stop: threading.Event, t0: float, duration: float) -> None:
    while not stop.wait(15):
        t = now() - t0
        counts = collections.Counter(r.get("outcome") for r in list(load.results))
        print(f"soak: t={t:.0f}s/{duration:.0f}s in flight {load.inflight} {dict(counts)}", flush=True)
        if t > duration + 600:
            return


def wait_async_settled(args, t0: float, events: list) -> dict:
    """Waits until no function has async events pending (bounded by --settle)."""
    started = now()
    pending = None
    while now() - started < args.settle:
        status, body = http_get("/v1/functions", args.port)
        if status == 200:
            try:
                fns = json.loads(body)["functions"]
                pending = sum(int(f.get("asyncPending", 0)) for f in fns)
            except (ValueError, KeyError, TypeError):
                pending = None
            if pending == 0:
                break
        time.sleep(0.5)
    took = now() - started
    events.append({"t": now() - t0, "kind": "settled", "detail": f"async pending {pending} after {took:.1f} s"})
    return {"pending": pending, "seconds": took}


def fetch_dead_letters(port: int) -> list[dict]:
    letters, marker = [], None
    for _ in range(100):
        path = "/v1/dead-letters?MaxItems=1000" + (f"&Marker={marker}" if marker else "")
        status, body = http_get(path, port)
        if status != 200:
            break
        page = json.loads(body)
        letters.extend(page.get("deadLetters", []))
        marker = page.get("nextMarker")
        if not marker:
            break
    return letters


def write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


# --------------------------------------------------------------------------
# Analysis


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    i = min(len(v) - 1, max(0, round(q / 100 * len(v) + 0.5) - 1))
    return v[i]


def mean_between(points: list[tuple[float, int]], start: float, end: float) -> float | None:
    """Mean of the values of `points` (t, value) with start <= t < end."""
    values = [v for t, v in points if start <= t < end]
    return sum(values) / len(values) if values else None


def analyse(args, results, kills, events, restart, samples, soak_log, dead_letters, logs, unfinished, settle,
            final_stop) -> dict:
    executions: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in soak_log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            executions[parts[2]][parts[0]] += 1
    dead_ids = set()
    for letter in dead_letters:
        try:
            ev = letter.get("event")
            ev = json.loads(ev) if isinstance(ev, str) else ev
            dead_ids.add(ev.get("id"))
        except (ValueError, AttributeError):
            pass
    dead_rids = {letter.get("requestId") for letter in dead_letters}

    # What the first gateway logged as dead letters (in memory, gone with it).
    log_dead: dict[str, int] = {}  # request id -> attempts made
    log_text = ""
    abandoned = []  # per gateway process: whether it logged async work abandoned at its stop
    for log in logs:
        text = log.read_text(errors="replace")
        log_text += text
        abandoned.append(ABANDONED in text)
        for line in text.splitlines():
            if "recorded as a dead letter" in line and "request_id=" in line:
                rid = line.split("request_id=", 1)[1].split()[0]
                attempts = line.split("attempts=", 1)[1].split()[0] if "attempts=" in line else "0"
                log_dead[rid] = int(attempts) if attempts.isdigit() else 0
    panics = [line for line in log_text.splitlines() if "panicked" in line]

    t_term = restart.get("t_term", float("inf"))
    t_ready = restart.get("t_ready", float("inf"))

    def phase(r):
        s = r.get("start", r["scheduled"])
        if s < t_term:
            return "before"
        if s < t_ready:
            return "during"
        return "after"

    sync = [r for r in results if r["mode"] in ("sync", "http")]
    asyn = [r for r in results if r["mode"] == "async"]
    sync_runs = collections.Counter(sum(executions.get(r["id"], {}).values()) for r in sync)
    sync_ok_unrun = sum(1 for r in sync if r["outcome"] == "answered" and r["status"] == 200
                        and not r.get("function_error") and r["id"] not in executions)

    def totals(rs):
        c = collections.Counter(r["outcome"] for r in rs)
        return {
            "sent": len(rs),
            "answered": c["answered"],
            "refused": c["refused"],
            "connect_failed": c["connect_failed"],
            "lost": c["lost"],
            "client_error": c["client_error"],
            "client_skipped": c["client_skipped"],
        }

    status_breakdown = collections.Counter()
    for r in results:
        if r["outcome"] == "answered":
            kind = "async" if r["mode"] == "async" else "sync"
            status_breakdown[(kind, r["fn"], r["status"], r.get("error_type") or "-")] += 1
    lost_detail = collections.Counter(
        (r["mode"], phase(r), r.get("detail", "")) for r in results if r["outcome"] == "lost"
    )
    other_detail = collections.Counter(
        (r["mode"], r["outcome"], r.get("detail", "")) for r in results
        if r["outcome"] in ("client_error", "connect_failed")
    )
    refused_phase = collections.Counter(phase(r) for r in results if r["outcome"] == "refused")
    lost = [r for r in results if r["outcome"] == "lost"]
    lost_during = [r for r in lost if phase(r) == "during"]
    refused_starts = [r["start"] for r in results if r["outcome"] == "refused"]
    lost_summary = {
        "reached_a_function": sum(1 for r in lost if r["id"] in executions),
        "outside_restart": len(lost) - len(lost_during),
        "during_restart": len(lost_during),
        "all_reset": all("ConnectionResetError" in r.get("detail", "") for r in lost_during),
    }
    if lost_during:
        lost_summary.update(
            first_start=min(r["start"] for r in lost_during),
            last_start=max(r["start"] for r in lost_during),
            first_end=min(r["end"] for r in lost_during),
            last_end=max(r["end"] for r in lost_during),
            first_refused=min(refused_starts) if refused_starts else None,
        )

    # Latency of answered sync calls, from the scheduled send time.
    lat = collections.defaultdict(list)
    for r in sync:
        if r["outcome"] == "answered":
            ms = (r["end"] - r["scheduled"]) * 1000
            lat["all"].append(ms)
            lat[r["fn"]].append(ms)
            if r["status"] == 200 and not r.get("function_error"):
                lat["success"].append(ms)
    latency = {k: {"n": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99), "max": max(v)}
               for k, v in lat.items()}

    # Async: accepted (202) events followed to their execution.
    accepted = [r for r in asyn if r["outcome"] == "answered" and r["status"] == 202]

    def fate_of(r) -> tuple[str, bool]:
        """What became of an accepted event, and whether it counts as lost."""
        ex = executions.get(r["id"], {})
        rid = r.get("request_id")
        if ex.get("done"):
            return "ran", False
        if r["id"] in dead_ids or rid in dead_rids:
            return "failed every attempt: dead letter, listed at the end", False
        if log_dead.get(rid, 0) >= 3:
            return "failed every attempt: dead letter of the stopped gateway (gone with it)", False
        if rid in log_dead and ex.get("fail"):
            return "failed, retry dropped at shutdown: dead letter in memory (gone with it)", True
        if rid in log_dead:
            return "not run: dead letter in memory at shutdown (gone with it)", True
        if ex.get("fail"):
            return "failed, retry never ran", True
        return "never ran", True

    fates = [(r, *fate_of(r)) for r in accepted]
    fate = collections.Counter(name for _, name, _ in fates)
    lost_fates = sorted({name for _, name, lost in fates if lost})
    lost_events = [r for r, _, lost in fates if lost]
    lost_by_phase = collections.Counter(phase(r) for r in lost_events)
    runs_per_event = collections.Counter(sum(executions.get(r["id"], {}).values()) for r in accepted)

    rss = [int(s["rss_kib"]) for s in samples if s["rss_kib"] != ""]
    gens = []
    cur, seg = None, []
    for s in samples:
        if s["pid"] != "" and s["pid"] != cur:
            if seg:
                gens.append(seg)
            cur, seg = s["pid"], []
        if s["rss_kib"] != "":
            seg.append((s["t"], int(s["rss_kib"])))
    if seg:
        gens.append(seg)

    return {
        "config": {
            "duration_s": args.duration,
            "rate": args.rate,
            "async_share": args.async_share,
            "functions": {k: {"weight": w, "http_share_of_sync": h} for k, (w, h) in FUNCTIONS.items()},
            "kill_every_s": [args.kill_min, args.kill_max],
            "async_retry_base": args.async_retry_base,
            "client_timeout_s": args.client_timeout,
            "seed": args.seed,
            "port": args.port,
            "function_python": os.environ.get("PORCHLIGHT_PYTHON", "python3 on PATH"),
        },
        "machine": f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "sent": len(results),
        "sync": dict(totals(sync), runs_per_request={str(k): v for k, v in sorted(sync_runs.items())},
                     ok_without_run=sync_ok_unrun),
        "async": dict(totals(asyn), accepted=len(accepted), fate=dict(fate),
                      accepted_lost=len(lost_events), lost_fates=lost_fates,
                      lost_by_phase=dict(lost_by_phase),
                      runs_per_event={str(k): v for k, v in sorted(runs_per_event.items())},
                      dead_letters_listed=len(dead_letters), log_dead_letters=len(log_dead)),
        "status_breakdown": [list(k) + [v] for k, v in sorted(status_breakdown.items(), key=str)],
        "lost_detail": [list(k) + [v] for k, v in sorted(lost_detail.items())],
        "other_detail": [list(k) + [v] for k, v in sorted(other_detail.items())],
        "refused_phase": dict(refused_phase),
        "lost_summary": lost_summary,
        "latency_ms": latency,
        "kills": kills,
        "events": sorted(events, key=lambda e: e["t"]),
        "restart": restart,
        "final_stop": final_stop,
        "settle": settle,
        "unfinished_client_threads": unfinished,
        "rss_kib": {
            "min": min(rss) if rss else None,
            "max": max(rss) if rss else None,
            "final": rss[-1] if rss else None,
            "per_gateway": [
                {"first_t": g[0][0], "last_t": g[-1][0], "first": g[0][1], "min": min(x[1] for x in g),
                 "max": max(x[1] for x in g), "last": g[-1][1],
                 "second_minute_avg": mean_between(g, g[0][0] + 60, g[0][0] + 120),
                 "last_minute_avg": mean_between(g, g[-1][0] - 60, g[-1][0] + 1)}
                for g in gens if g
            ],
        },
        "samples": samples,
        "panics": panics[:20],
        "abandoned_at_stop": abandoned,
        "log_warnings": summarise_warnings(log_text),
    }


def summarise_warnings(text: str) -> list[list]:
    """WARN/ERROR lines of the gateway's logs, grouped by message."""
    c = collections.Counter()
    for line in text.splitlines():
        for level in (" WARN ", " ERROR "):
            if level in line:
                msg = line.split(level, 1)[1]
                # Drop the structured fields that follow the message.
                words = []
                for w in msg.split():
                    if "=" in w:
                        break
                    words.append(w)
                c[(level.strip(), " ".join(words)[:120])] += 1
    return [[lvl, msg, n] for (lvl, msg), n in c.most_common(20)]


# --------------------------------------------------------------------------
# Chart


def make_chart(data: dict, png: Path, work: Path) -> str:
    """Draws the chart with matplotlib, installing it into the venv if needed.
    Returns a note for the report."""
    if importlib.util.find_spec("matplotlib"):
        plot(data, png)
        return ""
    python = VENV / "bin" / "python"
    if not python.exists():
        return f"No chart: matplotlib is missing and there is no venv at {VENV}; the data is in rss.csv."
    has = subprocess.run([str(python), "-c", "import matplotlib"], capture_output=True).returncode == 0
    if not has:
        print("soak: installing matplotlib into the venv for the chart", flush=True)
        pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "matplotlib"])
        if pip.returncode != 0:
            return "No chart: matplotlib could not be installed; the data is in rss.csv."
    payload = work / "chart-data.json"
    payload.write_text(json.dumps({k: data[k] for k in ("samples", "events", "restart")} | {"png": str(png)},
                                  default=str))
    drawn = subprocess.run([str(python), str(Path(__file__).resolve()), "--plot-only", str(payload)])
    if drawn.returncode != 0:
        return "No chart: drawing it failed; the data is in rss.csv."
    return ""


def plot(data: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = data["samples"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    # One line per gateway process, so the restart shows as a gap.
    segs, cur, seg = [], None, []
    for s in samples:
        if s["rss_kib"] == "":
            continue
        if s["pid"] != cur and seg:
            segs.append(seg)
            seg = []
        cur = s["pid"]
        seg.append((s["t"], int(s["rss_kib"]) / 1024))
    if seg:
        segs.append(seg)
    for i, seg in enumerate(segs):
        ax.plot([x for x, _ in seg], [y for _, y in seg], color="tab:blue", lw=1.4,
                label="gateway RSS" if i == 0 else None)
    first_kill = True
    for e in data["events"]:
        if e["kind"] == "kill":
            for a in (ax, ax2):
                a.axvline(e["t"], color="tab:red", lw=0.8, ls="--", alpha=0.7,
                          label="environment SIGKILL" if first_kill and a is ax else None)
            first_kill = False
    r = data.get("restart") or {}
    if r:
        for a in (ax, ax2):
            a.axvspan(r["t_term"], r["t_ready"], color="tab:orange", alpha=0.3,
                      label="gateway restart (SIGTERM to ready)" if a is ax else None)
    ax.set_ylabel("gateway RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Soak: gateway memory with environments killed and one gateway restart")
    # No gateway, no sample: a gap.
    ax2.step([s["t"] for s in samples], [float("nan") if s["shims"] == "" else s["shims"] for s in samples],
             where="post", color="tab:green", lw=1, label="environments (shim processes)")
    shims = [s["shims"] for s in samples if s["shims"] != ""]
    ax2.set_ylim(0, max(shims, default=1) * 1.45 + 1)  # room for the legend above the line
    ax2.set_ylabel("environments")
    ax2.set_xlabel("seconds since the load started")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


# --------------------------------------------------------------------------
# Report


def fmt_ms(v) -> str:
    return "-" if v is None else f"{v:,.1f}"


def render_report(args, d: dict, chart_note: str) -> str:
    s, a = d["sync"], d["async"]
    r = d["restart"]
    rss = d["rss_kib"]
    mib = lambda k: "-" if k is None else f"{k / 1024:.1f}"  # noqa: E731
    L = []
    L.append("# Soak test report\n")
    L.append(f"Written by `tests/soak/soak.py` from the run's data on {d['date']}; "
             "do not edit by hand, run the script again.\n")
    L.append("## Configuration\n")
    c = d["config"]
    L.append(f"- Duration of the load: {c['duration_s']:.0f} s; open loop, Poisson arrivals at "
             f"{c['rate']:g} requests/s in total, one connection per request, client timeout "
             f"{c['client_timeout_s']:g} s.")
    L.append("- Functions (`tests/soak/functions/`): " + ", ".join(
        f"`{k}` {v['weight']:.0%}" for k, v in c["functions"].items())
             + f"; {c['async_share']:.0%} of calls are `Event` invocations, "
             f"{c['functions']['soak-echo']['http_share_of_sync']:.0%} of `soak-echo`'s sync calls go "
             "through its HTTP trigger. `soak-slow` sleeps 200-1000 ms, `soak-flaky` fails one call in five.")
    L.append(f"- Faults: SIGKILL of a random environment process (a shim or its Python runtime) every "
             f"{c['kill_every_s'][0]:g}-{c['kill_every_s'][1]:g} s; one gateway restart (SIGTERM, wait for the "
             "exit, start again on the same port)"
             + (f" at t={d['restart']['t_term']:.0f} s." if d["restart"] else "."))
    L.append(f"- Gateway: release build, local mode, `--async-retry-base {c['async_retry_base']}` "
             "(so that retries of failed `Event` calls finish within the run), other flags default.")
    L.append(f"- Functions' Python (`PORCHLIGHT_PYTHON`): `{c['function_python']}`.")
    L.append(f"- Machine: {d['machine']}; seed {c['seed']}.\n")

    L.append("## Totals\n")
    L.append("| | sent | answered | refused (gateway not listening) | lost (no HTTP answer) | other client failures |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for name, t in (("sync (Invoke + HTTP trigger)", s), ("async (`Event`)", a)):
        other = t["connect_failed"] + t["client_error"] + t["client_skipped"]
        L.append(f"| {name} | {t['sent']:,} | {t['answered']:,} | {t['refused']:,} | **{t['lost']:,}** | {other:,} |")
    both = {k: s[k] + a[k] for k in ("sent", "answered", "refused", "lost")}
    L.append(f"| all | {both['sent']:,} | {both['answered']:,} | {both['refused']:,} | {both['lost']:,} | "
             f"{sum(s[k] + a[k] for k in ('connect_failed', 'client_error', 'client_skipped')):,} |\n")
    if d["refused_phase"]:
        L.append("Refused connections by phase: " + ", ".join(
            f"{k} the restart {v:,}" if k != "during" else f"during the restart {v:,}"
            for k, v in sorted(d["refused_phase"].items())) + ".\n")
    if d["lost_detail"]:
        L.append("Lost requests (mode, phase relative to the restart, where the connection failed):\n")
        L.append("| mode | phase | failure | count |")
        L.append("|---|---|---|---:|")
        for mode, ph, det, n in d["lost_detail"]:
            L.append(f"| {mode} | {ph} | {det} | {n} |")
        L.append("")
    if d["other_detail"]:
        L.append("Other client failures:\n")
        for mode, outcome, det, n in d["other_detail"]:
            L.append(f"- {mode} {outcome}: {det} ({n})")
        L.append("")

    L.append("## Answers by status\n")
    L.append("| kind | function | HTTP status | errorType | count |")
    L.append("|---|---|---:|---|---:|")
    for kind, fn, status, et, n in d["status_breakdown"]:
        L.append(f"| {kind} | {fn} | {status} | {et} | {n:,} |")
    L.append("")

    L.append("## Sync latency\n")
    L.append("From the scheduled send time to the end of the answer, answered calls only (ms).\n")
    L.append("| calls | n | p50 | p99 | max |")
    L.append("|---|---:|---:|---:|---:|")
    for k in ["all", "success"] + list(c["functions"]):
        v = d["latency_ms"].get(k)
        if v:
            label = {"all": "all answered", "success": "200 without function error"}.get(k, f"`{k}`")
            L.append(f"| {label} | {v['n']:,} | {fmt_ms(v['p50'])} | {fmt_ms(v['p99'])} | {fmt_ms(v['max'])} |")
    L.append("")

    L.append("## Async events\n")
    L.append(f"{a['accepted']:,} `Event` invocations were accepted (202). What became of them, from the "
             "functions' execution log, the dead letters listed by the running gateway at the end and the "
             "dead letters the stopped gateway logged:\n")
    L.append("| fate | events | lost |")
    L.append("|---|---:|---|")
    for k, v in sorted(a["fate"].items(), key=lambda kv: -kv[1]):
        L.append(f"| {k} | {v:,} | {'yes' if k in a['lost_fates'] else 'no'} |")
    L.append(f"| **lost in all** | **{a['accepted_lost']:,}** | |")
    L.append("")
    if a["lost_by_phase"]:
        L.append("Lost events by when they were accepted: " + ", ".join(
            f"{k} the restart: {v}" for k, v in sorted(a["lost_by_phase"].items())) + ".\n")
    L.append("Handler runs per accepted event (retries and re-runs after a kill count): " + ", ".join(
        f"{k} run{'s' if k != '1' else ''}: {v:,}" for k, v in a["runs_per_event"].items()) + ".\n")
    L.append(f"After the load the gateway had {d['settle']['pending']} async events pending "
             f"(waited {d['settle']['seconds']:.1f} s).\n")

    L.append("## Faults\n")
    L.append(f"{len(d['kills'])} environment processes killed:\n")
    L.append("| t (s) | process | environment |")
    L.append("|---:|---|---|")
    for k in d["kills"]:
        L.append(f"| {k['t']:.1f} | {k['kind']} | {k['env']} |")
    skipped = [e for e in d["events"] if e["kind"] == "kill-skipped"]
    if skipped:
        L.append(f"\n{len(skipped)} kill(s) skipped: " + "; ".join(f"t={e['t']:.0f}s {e['detail']}" for e in skipped))
    L.append("")
    if r:
        L.append(f"Gateway restart: SIGTERM at t={r['t_term']:.1f} s, exited after "
                 f"{r['t_exit'] - r['t_term']:.2f} s with code {r['exit_code']}"
                 f"{' (it had to be SIGKILLed)' if r['killed'] else ''}; the new gateway answered `/ready` "
                 f"{r['start_s']:.2f} s after its start, {r['t_ready'] - r['t_term']:.2f} s after the SIGTERM.\n")
    fs = d["final_stop"]
    L.append(f"Final stop after the load: exit code {fs['exit_code']} after {fs['seconds']:.2f} s"
             f"{' (SIGKILLed)' if fs['killed'] else ''}.\n")

    L.append("## Gateway memory\n")
    L.append(f"RSS sampled every second (`VmRSS`): min {mib(rss['min'])} MiB, max {mib(rss['max'])} MiB, "
             f"final {mib(rss['final'])} MiB.\n")
    L.append("| gateway process | from t (s) | to t (s) | first | min | max | last | mean of its last minute |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, g in enumerate(rss["per_gateway"], 1):
        L.append(f"| {i} | {g['first_t']:.0f} | {g['last_t']:.0f} | {mib(g['first'])} | {mib(g['min'])} | "
                 f"{mib(g['max'])} | {mib(g['last'])} | {mib(g['last_minute_avg'])} |")
    L.append("")
    L.append(chart_note or "![gateway RSS over time, kills and the restart marked](rss.png)")
    L.append("\nPer-second samples (gateway RSS, environment processes and their RSS): `rss.csv`.\n")

    L.append("## Gateway log\n")
    L.append(f"Panics: {len(d['panics'])}." + ("" if not d["panics"] else " First: `" + d["panics"][0][:200] + "`"))
    if d["log_warnings"]:
        L.append("\nWarnings and errors, by message:\n")
        L.append("| level | message | count |")
        L.append("|---|---|---:|")
        for lvl, msg, n in d["log_warnings"]:
            L.append(f"| {lvl} | {msg} | {n:,} |")
    L.append("")

    L.append("## Findings\n")
    L.extend(findings(d))
    L.append("")
    return "\n".join(L)


def findings(d: dict) -> list[str]:
    """Facts read off the data."""
    s, a, ls = d["sync"], d["async"], d["lost_summary"]
    out = []
    out.append(f"- Sync requests lost: {s['lost']} of {s['sent']:,} "
               + ("(every sync request that reached the gateway got an HTTP answer)." if s["lost"] == 0
                  else "— **the soak fails**: see the lost-request table."))
    runs = s["runs_per_request"]
    out.append("- Completed handler runs per sync request, from the execution log: "
               + ", ".join(f"{k}: {v:,}" for k, v in runs.items())
               + " (none: refused, lost, or its environment killed mid-run); "
               f"{sum(v for k, v in runs.items() if int(k) > 1)} ran more than once; "
               f"{s['ok_without_run']} were answered 200 without a completed run.")
    if ls["during_restart"]:
        t_term = d["restart"]["t_term"]
        refused = ls["first_refused"]
        line = (
            f"- The {ls['during_restart']} requests lost during the restart (sync and async) were sent from "
            f"{ls['first_start'] - t_term:.2f} to {ls['last_start'] - t_term:.2f} s after the SIGTERM: their "
            "connections were established and their requests written, and all were "
            + ("reset" if ls["all_reset"] else "left without an answer (reset, closed or timed out)")
            + f" from {ls['first_end'] - t_term:.2f} to {ls['last_end'] - t_term:.2f} s after the SIGTERM"
            + (f"; connections from {refused - t_term:.2f} s on were refused." if refused is not None else "."))
        if ls["all_reset"] and not ls["outside_restart"] and not ls["reached_a_function"]:
            line += (" This is what a listening socket left open through the stopping gateway's drain produces: "
                     "the kernel completes the handshakes and queues the connections, the gateway no longer "
                     "accepts them, and closing the socket at the end of the drain resets them; the client cannot "
                     "tell whether its request ran. To reproduce: keep an invocation in flight, SIGTERM the "
                     "gateway, and send a request on a new connection before that invocation ends.")
        out.append(line)
    if ls["outside_restart"]:
        out.append(f"- Requests lost outside the restart: {ls['outside_restart']}.")
    if s["lost"] + a["lost"]:
        out.append(f"- Lost requests that reached a function (their id is in the execution log): "
                   f"{ls['reached_a_function']}.")
    out.append(f"- Async events accepted and lost: {a['accepted_lost']} of {a['accepted']:,}"
               + (f" ({', '.join(f'{k} the restart: {v}' for k, v in sorted(a['lost_by_phase'].items()))})"
                  if a["accepted_lost"] else "")
               + (f"; besides, {a['lost']} `Event` requests got no answer at all (lost in the totals, never "
                  "accepted)" if a["lost"] else "") + ".")
    at_shutdown = {k: v for k, v in a["fate"].items() if "at shutdown" in k}
    if at_shutdown:
        out.append(f"- Accepted events still queued or waiting for a retry when a gateway stopped: "
                   f"{sum(at_shutdown.values())}. The stopping gateway recorded them as dead letters in its memory "
                   "without running them (again), and they were gone with the process: async events live in the "
                   "gateway's memory only (a known limitation, until events are queued durably).")
    unexpected = [(fn, st, et, n) for kind, fn, st, et, n in d["status_breakdown"]
                  if kind == "sync" and (st != 200 or et not in ("-", "FlakyError"))]
    if unexpected:
        out.append("- Sync answers with an error the functions do not raise themselves: " + ", ".join(
            f"`{fn}` {st} {et} ({n})" for fn, st, et, n in unexpected) + f"; environment processes killed: "
            f"{len(d['kills'])}.")
    r, fs = d["restart"], d["final_stop"]
    if d["settle"]["pending"] == 0 and d["abandoned_at_stop"][-1]:
        out.append(f"- At the final stop no async event was pending (`asyncPending` 0 in `/v1/functions`), yet "
                   f"the gateway took {fs['seconds']:.2f} s to exit and logged \"{ABANDONED}\""
                   + (f"; the restart's stop took {r['t_exit'] - r['t_term']:.2f} s" if r else "")
                   + ". To reproduce: one `Event` invocation, wait until it has run, SIGTERM the gateway: its exit "
                   "is as slow and logs the same warning, where after sync invocations only it is immediate.")
    if r:
        out.append(f"- Downtime of the restart (SIGTERM to ready): {r['t_ready'] - r['t_term']:.2f} s; "
                   f"{d['refused_phase'].get('during', 0):,} connections were refused meanwhile.")
    for i, g in enumerate(d["rss_kib"]["per_gateway"], 1):
        line = (f"- Gateway process {i} (t={g['first_t']:.0f}-{g['last_t']:.0f} s): RSS {g['first'] / 1024:.1f} MiB "
                f"at its start, {g['max'] / 1024:.1f} MiB at most")
        if g["second_minute_avg"] is not None and g["last_t"] - g["first_t"] >= 180:
            grew = (g["last_minute_avg"] - g["second_minute_avg"]) / 1024
            line += (f"; mean of its second minute {g['second_minute_avg'] / 1024:.1f} MiB, of its last minute "
                     f"{g['last_minute_avg'] / 1024:.1f} MiB ({grew:+.2f} MiB over "
                     f"{g['last_t'] - g['first_t'] - 90:.0f} s)")
        out.append(line + ".")
    out.append(f"- Panics in the gateway's log: {len(d['panics'])}.")
    if d["unfinished_client_threads"]:
        out.append(f"- {d['unfinished_client_threads']} client requests had not finished when the report was written.")
    return out


if __name__ == "__main__":
    sys.exit(main())
