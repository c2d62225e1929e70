"""Paths, the helm and kubectl the checks run, and helpers to render the chart
and read what it renders; the registry the checks add themselves to."""

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


ROOT = Path(__file__).resolve().parent.parent.parent
CHART = ROOT / "charts" / "warren"
K8S = ROOT / "k8s"
SCALE_TEST = ROOT / "scripts" / "k8s-scale-test"
RELEASE = "warren"
SESSION_COOKIE = "jsessionid"
# Values the k8s/ base is rendered with: the chart defaults, secrets in a Secret named "warren".
BASE_SETS = [
    "gateway.sessionSecret.existingSecret=warren",
    "redis.existingSecret=warren",
    "amqp.existingSecret=warren",
]
DEV_VALUES = CHART / "ci" / "dev-values.yaml"

HELM = "helm"
KUBECTL = "kubectl"
RENDERS: Path | None = None

# === helm and YAML ===


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
    return proc


def helm_template(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(HELM, "template", RELEASE, str(CHART), "--kube-version", "1.32.0",
               "--api-versions", "monitoring.coreos.com/v1",
               "--api-versions", "gateway.networking.k8s.io/v1", *args, check=check)


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(*args: str) -> list[dict]:
    return docs(helm_template(*args).stdout)


def rendered(name: str) -> list[dict]:
    """One of the renders scripts/k8s-check made (and validated)."""
    assert RENDERS is not None
    return docs((RENDERS / f"{name}.yaml").read_text())


def one(objs: list[dict], kind: str, component: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (component is None or component_of(o) == component)]
    assert len(found) == 1, f"expected one {kind} {component or ''}, found {len(found)}"
    return found[0]


def all_of(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def component_of(obj: dict) -> str | None:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def container(deploy: dict) -> dict:
    containers = deploy["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deploy['metadata']['name']}: one container expected"
    return containers[0]


def port_number(deploy: dict, port) -> int:
    """A container port given by name or number."""
    if isinstance(port, int):
        return port
    for p in container(deploy).get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"{deploy['metadata']['name']} has no port named {port}")


def seconds(duration: str) -> int:
    m = re.fullmatch(r"(\d+)s", duration)
    assert m, f"expected a duration in whole seconds, got {duration!r}"
    return int(m.group(1))


def fails(*args: str, expect: str) -> None:
    """helm template with ARGS must fail, saying EXPECT."""
    proc = helm_template(*args, check=False)
    assert proc.returncode != 0, f"helm template {' '.join(args)} rendered; it must fail"
    assert expect in proc.stderr, f"helm template {' '.join(args)} failed without {expect!r}:\n{proc.stderr}"



# === the test registry ===

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn
