"""The plain manifests in k8s/, generated from the chart."""

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
from .values_doc import *  # noqa: F403

HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


def plain_manifest(doc_text: str) -> str:
    """A helm-rendered document as a plain manifest: no Helm labels, namespace or checksums."""
    out = []
    for line in doc_text.splitlines():
        s = line.strip()
        if s.startswith("# Source:") or s.startswith(HELM_ONLY_LABELS) or s.startswith("checksum/"):
            continue
        if re.match(r"^  namespace: ", line):
            continue
        out.append(line)
    # An annotations block left empty by the removed checksums goes too.
    text = "\n".join(out) + "\n"
    text = re.sub(r"\n(\s+)annotations:\n(?!\1 )", "\n", text)
    return text


def file_name(obj: dict) -> str:
    component = component_of(obj)
    kind = obj["kind"].lower()
    name = obj["metadata"]["name"]
    if obj["kind"] == "Service" and name.endswith("-admin"):
        component = f"{component}-admin"
    return f"{component}-{kind}.yaml" if component else f"{kind}.yaml"


def split_render(text: str) -> list[tuple[dict, str]]:
    parts = [p for p in re.split(r"^---\s*$", text, flags=re.M) if p.strip()]
    return [(yaml.safe_load(p), p.strip("\n")) for p in parts if yaml.safe_load(p)]


HEADER = "# Generated from charts/warren by scripts/k8s_invariants.py --write: edit the chart, then regenerate.\n"


def generate_k8s() -> dict[Path, str]:
    files: dict[Path, str] = {}
    base_args = [a for s in BASE_SETS for a in ("--set", s)]
    base = split_render(helm_template(*base_args).stdout)
    base_names = []
    for obj, text in base:
        name = file_name(obj)
        files[K8S / "base" / name] = HEADER + plain_manifest(text)
        base_names.append(name)
    files[K8S / "base" / "kustomization.yaml"] = HEADER + textwrap.dedent("""\
        # Warren without Helm: the chart's default render (release "warren"). The pods
        # read their secrets from a Secret named "warren" that you create first:
        #   kubectl create secret generic warren \\
        #     --from-literal=session-secret="$(openssl rand -hex 32)" \\
        #     --from-literal=redis-url=redis://redis:6379 \\
        #     --from-literal=amqp-url='amqp://user:password@rabbitmq:5672/%2f'
        # Config changes do not roll the pods by themselves (the chart's checksum
        # annotations do that): kubectl rollout restart deployment after editing.
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        resources:
        """) + "".join(f"  - {n}\n" for n in base_names)

    dev = split_render(helm_template("-f", str(DEV_VALUES)).stdout)
    base_kinds = {(o["kind"], o["metadata"]["name"]) for o, _ in base}
    dev_names, secret, replicas = [], None, None
    for obj, text in dev:
        if obj["kind"] == "Secret":
            secret = obj
            continue
        if obj["kind"] == "Deployment" and component_of(obj) == "gateway":
            replicas = obj["spec"]["replicas"]
        if (obj["kind"], obj["metadata"]["name"]) in base_kinds:
            continue
        name = file_name(obj)
        files[K8S / "overlays" / "dev" / name] = HEADER + plain_manifest(text)
        dev_names.append(name)
    assert secret is not None and replicas is not None
    literals = "".join(
        f"      - {k}={base64.b64decode(v).decode()}\n" for k, v in secret["data"].items())
    labels = {k: v for k, v in secret["metadata"]["labels"].items() if k not in HELM_ONLY_LABELS}
    files[K8S / "overlays" / "dev" / "kustomization.yaml"] = HEADER + textwrap.dedent("""\
        # DEV ONLY: the base plus a single-node Redis and RabbitMQ (emptyDir
        # storage: a restart loses sessions and history), dev secrets, an Ingress
        # for ingress-nginx with no host, and NetworkPolicies. Equivalent to
        # charts/warren with ci/dev-values.yaml.
        #   kubectl create namespace warren-dev
        #   kubectl apply -n warren-dev -k k8s/overlays/dev
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        resources:
          - ../../base
        """) + "".join(f"  - {n}\n" for n in dev_names) + textwrap.dedent(f"""\
        patches:
          - target:
              kind: Deployment
              name: warren-gateway
            patch: |-
              - op: replace
                path: /spec/replicas
                value: {replicas}
        generatorOptions:
          disableNameSuffixHash: true
          labels:
        """) + "".join(f"    {k}: {json.dumps(v)}\n" for k, v in labels.items()) + textwrap.dedent("""\
        secretGenerator:
          - name: warren
            type: Opaque
            literals:
        """) + literals
    return files


def normalized(objs: list[dict]) -> dict:
    """Objects keyed by kind/name, without what only Helm or only kustomize adds."""
    out = {}
    for o in objs:
        o = copy.deepcopy(o)
        meta = o["metadata"]
        meta.pop("namespace", None)
        for k in HELM_ONLY_LABELS:
            meta.get("labels", {}).pop(k, None)
        tmpl = o.get("spec", {}).get("template", {}).get("metadata", {})
        for m in (meta, tmpl):
            ann = m.get("annotations", {})
            for k in [k for k in ann if k.startswith("checksum/")]:
                ann.pop(k)
            if "annotations" in m and not m["annotations"]:
                m.pop("annotations")
            for k in HELM_ONLY_LABELS:
                m.get("labels", {}).pop(k, None)
        out[f"{o['kind']}/{meta['name']}"] = o
    return out


def diff(a: dict, b: dict) -> str:
    lines = []
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            lines.append(f"{key}: only in {'kustomize' if key in a else 'the chart'}")
        elif a[key] != b[key]:
            lines.append(f"{key}: differs:\n  kustomize: {json.dumps(a[key], sort_keys=True)}\n  chart:     {json.dumps(b[key], sort_keys=True)}")
    return "\n".join(lines)


# === tests ===
