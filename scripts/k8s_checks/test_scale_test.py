"""scripts/k8s-scale-test against fake kubectl, helm and chaos binaries."""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import os
import re
import subprocess
import shutil
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

import yaml

from .toolkit import *  # noqa: F403



def scale_test(*args: str, path_dir: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    if path_dir:
        e["PATH"] = f"{path_dir}:{e['PATH']}"
    e.update(env or {})
    return subprocess.run(["bash", str(SCALE_TEST), *args], capture_output=True, text=True, env=e, timeout=120)


def poison_path() -> str:
    """A PATH directory whose kubectl, helm and cargo fail loudly: --dry-run must call none of them."""
    d = tempfile.mkdtemp()
    for tool in ("kubectl", "helm", "cargo", "warren-chaos"):
        p = Path(d, tool)
        p.write_text(f"#!/bin/sh\necho 'dry run called {tool}' >&2\nexit 99\n")
        p.chmod(0o755)
    return d


@test
def scale_test_rejects_bad_arguments():
    for args, expect in [
        (["--bogus"], "unknown argument: --bogus"),
        (["--clients", "0"], "--clients"),
        (["--clients", "many"], "--clients"),
        (["--duration", "5x"], "--duration"),
        (["--duration", "0s"], "--duration"),
        (["--namespace"], "--namespace needs a value"),
        (["--namespace", "Bad_NS"], "--namespace"),
        (["--release", "x" * 60], "--release"),
        (["--via", "nodeport"], "--via"),
        (["--local-port", "70000"], "--local-port"),
        (["--values", "/nonexistent.yaml"], "no such file"),
    ]:
        proc = scale_test("--dry-run", *args, path_dir=poison_path())
        assert proc.returncode == 2, f"{args}: exit {proc.returncode}, want 2\n{proc.stderr}"
        assert expect in proc.stderr, f"{args}: {proc.stderr!r} lacks {expect!r}"
    proc = scale_test("--help")
    assert proc.returncode == 0 and "Usage: scripts/k8s-scale-test" in proc.stdout and "--dry-run" in proc.stdout


@test
def scale_test_dry_run_prints_the_plan():
    proc = scale_test("--dry-run", "-n", "chat", "-r", "prod", "--clients", "10", "--duration", "2m",
                      "--local-port", "18080", "--chaos", "/opt/warren-chaos", path_dir=poison_path())
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "dry run called" not in proc.stderr, proc.stderr
    plan = [line for line in out.splitlines() if line.startswith("+ ")]
    expected_in_order = [
        "+ helm status prod -n chat",
        f"+ helm upgrade --install prod {CHART} -n chat --create-namespace --wait --timeout 300s "
        f"--set gateway.autoscaling.enabled=false -f {DEV_VALUES}",
        "+ kubectl -n chat rollout status deployment/prod-warren-bridge --timeout 300s",
        "+ kubectl -n chat rollout status deployment/prod-warren-gateway --timeout 300s",
        "+ kubectl -n chat get hpa",
        "+ kubectl -n ingress-nginx port-forward svc/ingress-nginx-controller 18080:80",
        "+ /opt/warren-chaos --url http://127.0.0.1:18080 --clients 10 --duration 120s",
        "+ kubectl -n chat scale deployment/prod-warren-gateway --replicas=2",
        "+ kubectl -n chat scale deployment/prod-warren-gateway --replicas=3",
        "+ kubectl -n chat rollout status deployment/prod-warren-gateway --timeout 300s",
    ]
    i = 0
    for line in plan:
        if i < len(expected_in_order) and line.startswith(expected_in_order[i]):
            i += 1
    assert i == len(expected_in_order), f"missing or out of order: {expected_in_order[i]!r} in\n{out}"
    # A release whose name holds "warren" is the full name; --no-install never installs.
    proc = scale_test("--dry-run", "--release", "my-warren", "--no-install", "--via", "service",
                      "--chaos", "/x", path_dir=poison_path())
    assert proc.returncode == 0, proc.stderr
    assert "deployment/my-warren-gateway" in proc.stdout and "helm upgrade" not in proc.stdout, proc.stdout
    assert "controller.kubernetes.io/pod-deletion-cost=-1000" in proc.stdout and "port-forward 'pod/" in proc.stdout


FAKE_KUBECTL = r"""#!/usr/bin/env bash
# A cluster in a file: logs every call, keeps the gateway replica count.
echo "kubectl $*" >>"$FAKE_LOG"
state="$FAKE_DIR/replicas"; [[ -f $state ]] || echo 3 >"$state"
args=" $* "
case $args in
  *" config current-context "*) echo fake-context ;;
  *" get deployment -l "*"component=gateway"*) printf warren-gateway ;;
  *" get deployment -l "*"component=bridge"*) printf warren-bridge ;;
  *" get hpa "*) ;;
  *" get deployment/warren-gateway -o jsonpath={.spec.replicas}"*) cat "$state" ;;
  *" scale deployment/warren-gateway --replicas="*) n=${args##*--replicas=}; echo "${n%% *}" >"$state" ;;
  *" get pods "*"-o name"*) for ((i = 0; i < $(cat "$state"); i++)); do echo "pod/warren-gateway-$i"; done ;;
  *" port-forward "*) last=${!#}; port=${last%%:*}
      exec python3 -c "import socket,time,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); time.sleep(600)" "$port" ;;
  *) ;;
esac
"""

FAKE_HELM = r"""#!/usr/bin/env bash
echo "helm $*" >>"$FAKE_LOG"
[[ $1 == status ]] && exit 0
exit 0
"""

FAKE_CHAOS = r"""#!/usr/bin/env bash
echo "chaos $*" >>"$FAKE_LOG"
sleep 2.5
echo "some progress line"
echo "{\"clients\":5,\"acked\":100,\"lost\":$FAKE_LOST,\"duplicates\":0,\"relogins\":0,\"reconnects\":3,\"reconnect_p50_ms\":10,\"reconnect_p99_ms\":40,\"max_gap_ms\":900}"
"""


@test
def scale_test_runs_against_a_fake_cluster():
    d = tempfile.mkdtemp()
    for name, body in (("kubectl", FAKE_KUBECTL), ("helm", FAKE_HELM), ("fake-chaos", FAKE_CHAOS)):
        Path(d, name).write_text(body)
        Path(d, name).chmod(0o755)
    for lost, want in (("0", 0), ("2", 1)):
        log = Path(d, f"log-{lost}")
        Path(d, "replicas").unlink(missing_ok=True)
        started = time.monotonic()
        proc = scale_test("--clients", "5", "--duration", "3s", "--chaos", f"{d}/fake-chaos", "--timeout", "20",
                          path_dir=d, env={"FAKE_LOG": str(log), "FAKE_DIR": d, "FAKE_LOST": lost})
        assert proc.returncode == want, f"lost={lost}: exit {proc.returncode}, want {want}\n{proc.stderr}"
        last = proc.stdout.strip().splitlines()[-1]
        assert json.loads(last)["lost"] == int(lost), last
        calls = log.read_text().splitlines()
        scales = [c for c in calls if " scale " in c]
        assert [c.split("--replicas=")[1] for c in scales] == ["2", "3"], calls
        assert any(c.startswith("chaos --url http://127.0.0.1:") and "--clients 5 --duration 3s" in c for c in calls), calls
        assert Path(d, "replicas").read_text().strip() == "3", "the gateway count is restored"
        assert time.monotonic() - started < 60


# === main ===
