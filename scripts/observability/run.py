"""The whole observability check, in order:

0. The unit tests of this package.
1. Static checks: the dashboards' structure, `promtool check rules` and
   `promtool test rules` (charts/warren/alerts/warren-rules.test.yaml), every
   alert described in docs/observability.md.
2. A stack from warren-dev (its own Redis, so that it can be stopped; one
   bridge, two gateways with a 3 s drain window, HAProxy) and a private
   Prometheus scraping the admin ports every second with the labels
   Kubernetes scraping adds (namespace="warren-test", pod="<instance>"),
   loading a copy of the rules in which every `for:` is 0s. The gateways are
   found as the chart's ServiceMonitor finds them through the gateway-admin
   Service (publishNotReadyAddresses): a targets file that lists a gateway
   while its process exists, draining and not ready included.
3. 20 chatting users through HAProxy (warren-chaos) and, midway, one gateway
   SIGTERMed: Prometheus must have stored its drain (drain.check).
4. Every dashboard panel evaluated at one instant after the drain, while users
   still chat (dashboards.evaluate).
5. Every alert expression evaluated; then the bridge is killed and
   WarrenBridgeStreamsDown must fire, then Redis is stopped and
   WarrenRedisUnavailable must.

Binaries come from WARREN_BIN_DIR (default target/debug). Only processes it
started are stopped, by PID. Last line: "observability: N panels (Q queries),
M alerts checked, ... fired (in S s)". The chaos verdict (lost or duplicated
messages) is logged, not judged: scripts/chaos judges it.
Env: WARREN_AMQP_URL (as scripts/test); OBS_KEEP=1 keeps the work directory.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
from pathlib import Path

from . import CheckFailed, alerts, dashboards, drain, prom

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = [str(ROOT / "charts/warren/dashboards" / f) for f in ("warren-overview.json", "warren-bridge.json")]
RULES = ROOT / "charts/warren/alerts/warren-rules.yaml"
NAMESPACE = "warren-test"
RATE_INTERVAL = "15s"
FIRE_ALERT, REDIS_ALERT = "WarrenBridgeStreamsDown", "WarrenRedisUnavailable"
GATEWAY_JOB = "warren-gateway-admin"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} observability-check] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has exited: its parent has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gauge_sum(admin: str, metric: str) -> float:
    """The sum of a metric's series on a process's /metrics (0 when absent or unreachable)."""
    try:
        with urllib.request.urlopen(f"http://{admin}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(sample_value(line) for line in text.splitlines() if sample_name(line) == metric)


def sample_name(line: str) -> str:
    """The metric name of an exposition line (empty for comments)."""
    return "" if line.startswith("#") else line.split(" ", 1)[0].split("{", 1)[0]


def sample_value(line: str) -> float:
    """The value of an exposition line: after the labels (which may hold spaces), before any timestamp."""
    rest = line.rsplit("}", 1)[1] if "{" in line else line.split(" ", 1)[1]
    return float(rest.split()[0])


def unit_tests() -> None:
    suite = unittest.defaultTestLoader.discover(str(Path(__file__).parent), top_level_dir=str(ROOT / "scripts"))
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=0).run(suite)
    if not result.wasSuccessful():
        raise CheckFailed("unit tests", [f"{len(result.failures)} failed, {len(result.errors)} errors"])


def static_checks(work: Path) -> int:
    """Step 1; answers the number of panels. Leaves rules-for0.yaml in `work` for the run."""
    npanels = dashboards.static(DASHBOARDS)
    text = RULES.read_text()
    docs = (ROOT / "docs/observability.md").read_text()
    missing = [name for name in alerts.alert_names(text) if name not in docs]
    if missing:
        raise CheckFailed("docs/observability.md", [f"alert {name} is not described" for name in missing])
    promtool("check", "rules", str(RULES))
    # The rules' unit tests run on a copy without annotations, which they name.
    (work / "rules-bare.yaml").write_text(alerts.without_annotations(text))
    shutil.copy(RULES.with_name("warren-rules.test.yaml"), work / "warren-rules.test.yaml")
    promtool("test", "rules", "warren-rules.test.yaml", cwd=work)
    (work / "rules-for0.yaml").write_text(alerts.with_for_zero(text))
    promtool("check", "rules", str(work / "rules-for0.yaml"))
    return npanels


def promtool(*args: str, cwd: Path | None = None) -> None:
    done = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise CheckFailed(f"promtool {' '.join(args)}", (done.stdout + done.stderr).splitlines()[-20:])


class Run:
    """The processes of one run, stopped (only they) whatever happens."""

    def __init__(self, work: Path, bin_dir: Path):
        self.work, self.bin_dir = work, bin_dir
        self.children: list[subprocess.Popen] = []
        self.stack: dict = {}
        self.prom = ""

    def spawn(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        out = open(self.work / f"{name}.log", "w")
        child = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in reversed(self.children):  # Prometheus, then the stack (it stops its own in order)
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()

    def start_stack(self) -> None:
        """warren-dev on free ports; waits for its stack.json."""
        env = dict(os.environ)
        env.pop("WARREN_REDIS_URL", None)  # its own Redis, to stop at the end
        env.setdefault("WARREN_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
        run_dir = self.work / "stack"
        dev = self.spawn("warren-dev", [
            str(self.bin_dir / "warren-dev"), "--free-ports", "--gateways", "2", "--bridges", "1",
            "--private-redis", "--drain-window", "3s", "--session-secret", "observability-check-secret",
            "--run-dir", str(run_dir)], env=env)
        state = run_dir / "stack.json"
        prom.wait_until("warren-dev did not bring the stack up",
                        lambda: state.exists() or dev.poll() is not None, 120)
        if not state.exists():
            raise CheckFailed("warren-dev", [f"exited with {dev.returncode}: see {self.work}/warren-dev.log"])
        self.stack = json.loads(state.read_text())
        self.publish_endpoints()

    def gateway(self, name: str) -> dict:
        return next(g for g in self.stack["gateways"] if g["name"] == name)

    def publish_endpoints(self) -> None:
        """The gateway targets file, as the gateway-admin Service's Endpoints list the pods: every
        gateway whose process exists, ready or draining; an exited one is gone."""
        entries = [{"targets": [g["admin"]], "labels": {"namespace": NAMESPACE, "pod": g["name"]}}
                   for g in self.stack["gateways"] if alive(g["pid"])]
        partial = self.work / "gateway-endpoints.json.tmp"
        partial.write_text(json.dumps(entries))
        partial.replace(self.work / "gateway-endpoints.json")  # atomic, for Prometheus' file watch

    def start_prometheus(self) -> None:
        port = free_port()
        self.prom = f"http://127.0.0.1:{port}"
        text = prom.config(self.work, self.work / "rules-for0.yaml", self.work / "gateway-endpoints.json",
                           NAMESPACE, self.stack["bridges"])
        (self.work / "prometheus.yml").write_text(text)
        promtool("check", "config", str(self.work / "prometheus.yml"))
        self.spawn("prometheus", [
            "/usr/bin/prometheus", f"--config.file={self.work / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn"])
        prom.wait_until("prometheus not ready", lambda: prom.answers(f"{self.prom}/-/ready"), 30)
        prom.wait_until("prometheus does not see the 3 targets up",
                        lambda: prom.scalar(self.prom, 'sum(up{job=~"warren-.*"})') == 3, 20, 0.5)

    def traffic_and_drain(self) -> subprocess.Popen:
        """Step 3; answers the running chaos client."""
        log("driving 20 users through HAProxy (warren-chaos, 20 s)")
        chaos = self.spawn("chaos", [str(self.bin_dir / "warren-chaos"), "--url", self.stack["front"],
                                     "--clients", "20", "--duration", "20s", "--settle", "3s", "--drain-window", "3s"])
        gw1, gw2 = self.gateway("gw-1"), self.gateway("gw-2")
        sockets = lambda g: gauge_sum(g["admin"], "warren_gateway_sockets_open")
        def both_used():
            if chaos.poll() is not None:
                raise CheckFailed("warren-chaos", ["exited early"])
            return sockets(gw1) > 0 and sockets(gw2) > 0
        prom.wait_until("users did not reach both gateways", both_used, 30)
        time.sleep(3)  # some chat on both gateways first
        log(f"draining gw-2 (SIGTERM) with {sockets(gw2):.0f} sockets on it")
        term_at = time.time()
        os.kill(gw2["pid"], signal.SIGTERM)
        prom.wait_until("gw-2 did not exit within 20 s of SIGTERM", lambda: not alive(gw2["pid"]), 20, 0.05)
        exit_at = time.time()
        self.publish_endpoints()  # the pod is deleted: its address leaves the Endpoints
        settle = time.time() + 4  # resumes and chat on gw-1, scraped
        log(f"gw-2 drained and exited; gw-1 holds {sockets(gw1):.0f} sockets")
        log(drain.check(self.prom, GATEWAY_JOB, NAMESPACE, "gw-2", term_at, exit_at,
                        str(self.work / "stack/gw-2.log")))
        time.sleep(max(0.0, settle - time.time()))
        if chaos.poll() is not None:
            raise CheckFailed("warren-chaos", ["ended before the evaluation: traffic would be missing"])
        return chaos

    def fire(self, alert: str, stop, what: str) -> None:
        """`alert` is inactive, then fires within 30 s of `stop()`."""
        if alerts.state(self.prom, alert) != "inactive":
            raise CheckFailed(alert, [f"active before {what}"])
        log(f"{what}: {alert} must fire")
        stop()
        prom.wait_until(f"{alert} did not fire within 30 s", lambda: alerts.state(self.prom, alert) == "firing", 30, 0.5)
        log(f"alerts active now: {alerts.active(self.prom)}")


def check(run: Run, started: float) -> str:
    log("unit tests of scripts/observability")
    unit_tests()
    log("checking dashboards and rules files")
    static_checks(run.work)
    log("starting the stack (warren-dev) and Prometheus")
    run.start_stack()
    run.start_prometheus()
    chaos = run.traffic_and_drain()
    at = int(time.time())
    log(f"evaluating every dashboard panel at {time.strftime('%T', time.localtime(at))} (rate interval {RATE_INTERVAL})")
    npanels, ntargets = dashboards.evaluate(run.prom, at, RATE_INTERVAL, NAMESPACE, DASHBOARDS)
    log("evaluating every alert expression")
    nalerts = alerts.evaluate(run.prom, str(RULES))
    log(f"alerts active with traffic and a drain (for: 0s): {alerts.active(run.prom)}")
    try:
        verdict = chaos.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise CheckFailed("warren-chaos", ["did not finish"])
    last = (run.work / "chaos.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
    log(f"warren-chaos: {last[0]}" if verdict == 0 else
        f"warning: warren-chaos verdict failed (not this check's subject): {last[0]}")
    bridge = run.stack["bridges"][0]["pid"]
    run.fire(FIRE_ALERT, lambda: os.kill(bridge, signal.SIGKILL), "killing the bridge (SIGKILL)")
    redis = run.stack["private_redis"]["pid"]
    run.fire(REDIS_ALERT, lambda: os.kill(redis, signal.SIGTERM), "stopping Redis")
    return (f"observability: {npanels} panels ({ntargets} queries), {nalerts} alerts checked, "
            f"{FIRE_ALERT} and {REDIS_ALERT} fired (in {time.time() - started:.0f}s)")


def main() -> int:
    bin_dir = Path(os.environ.get("WARREN_BIN_DIR", ROOT / "target/debug"))
    for binary in ("warren-gateway", "warren-bridge", "warren-chaos", "warren-dev"):
        if not os.access(bin_dir / binary, os.X_OK):
            log(f"error: {bin_dir / binary} missing: run 'cargo build --workspace' first (or set WARREN_BIN_DIR)")
            return 1
    work = Path(tempfile.mkdtemp(prefix="warren-obs."))
    run, started, ok = Run(work, bin_dir), time.time(), False
    try:
        print(check(run, started))
        ok = True
    except (CheckFailed, RuntimeError) as failure:
        log(f"error: {failure}")
    finally:
        run.stop()
    if not ok:
        for path in sorted(work.rglob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            print(f"----- last lines of {path}", *lines, sep="\n", file=sys.stderr)
        log(f"FAILED (logs kept in {work})")
        return 1
    if os.environ.get("OBS_KEEP"):
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0
