"""helm lint --strict, the renders scripts/k8s-check makes into .tools/renders
(helm template of the chart, kubectl kustomize of k8s/) and their validation:
kubernetes-validate --strict against Kubernetes 1.32, which has no schemas for
custom kinds, so HTTPRoute, ServiceMonitor and PrometheusRule are validated
against their CRD schemas by custom_kinds.mjs (node, with the @kubernetes-models
packages in .tools/node), after custom_kinds.py (venv python: it needs PyYAML)
has picked them out of the render.

Standard library only, as tools.py. Each function logs what passed and raises
StepFailed, with the problems on stderr, when something did not."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .tools import HELM, KUBECTL, KUBERNETES_VALIDATE, NODE, ROOT, TOOLS, VENV_PYTHON, StepFailed, capture, log, run

HERE = Path(__file__).resolve().parent
CHART = ROOT / "charts" / "warren"
RENDERS = TOOLS / "renders"
KUBE_VERSION = "1.32.0"
API_VERSIONS = ["--api-versions", "monitoring.coreos.com/v1", "--api-versions", "gateway.networking.k8s.io/v1"]
# The renders: helm template with no values file, then with ci/default, ci/ha and
# ci/dev; kubectl kustomize of k8s/base and k8s/overlays/dev.
TEMPLATES = {"default": None, "ci-default": "default", "ha": "ha", "dev": "dev"}
KUSTOMIZATIONS = {"kustomize-base": "k8s/base", "kustomize-dev": "k8s/overlays/dev"}
NAMES = [*TEMPLATES, *KUSTOMIZATIONS]


def lint(*args) -> None:
    """helm lint --strict the chart with ARGS; print its output only when it fails."""
    rc, out = capture(HELM, "lint", "--strict", CHART, "--kube-version", KUBE_VERSION, *args)
    if rc != 0:
        print(out.rstrip("\n"), file=sys.stderr)
        raise StepFailed(1)


def lint_all() -> None:
    ci_values = sorted(CHART.glob("ci/*-values.yaml"))
    lint()
    for values in ci_values:
        lint("-f", values)
    log(f"helm lint --strict: default and {len(ci_values)} ci values files")


def template_all() -> None:
    """Render the chart into RENDERS (emptied first)."""
    shutil.rmtree(RENDERS, ignore_errors=True)
    RENDERS.mkdir(parents=True)
    template = [HELM, "template", "warren", CHART, "--kube-version", KUBE_VERSION, *API_VERSIONS]
    for name, values in TEMPLATES.items():
        args = ["-f", CHART / "ci" / f"{values}-values.yaml"] if values else []
        with open(RENDERS / f"{name}.yaml", "w") as out:
            run(*template, *args, stdout=out)


def kustomize_all() -> None:
    for name, path in KUSTOMIZATIONS.items():
        with open(RENDERS / f"{name}.yaml", "w") as out:
            run(KUBECTL, "kustomize", ROOT / path, stdout=out)


def validate(name: str) -> None:
    """kubernetes-validate the render NAME, then its custom kinds; print only problems."""
    render = RENDERS / f"{name}.yaml"
    rc, out = capture(KUBERNETES_VALIDATE, "--strict", "-k", KUBE_VERSION, render)
    lines = out.rstrip("\n").split("\n")
    problems = [line for line in lines if not line.startswith("INFO") and "Couldn't find schema for kind" not in line]
    problems = "\n".join(problems).rstrip("\n")
    if rc != 0 or problems:
        print(problems, file=sys.stderr)
        raise StepFailed(1)
    passed = sum(1 for line in lines if re.match(r"INFO.*passed", line))
    custom = RENDERS / f"{name}.custom.json"
    run(VENV_PYTHON, HERE / "custom_kinds.py", render, custom)
    # Run as an inline module in .tools/node, so that its imports resolve there.
    script = (HERE / "custom_kinds.mjs").read_text()
    try:
        proc = subprocess.run(["node", "--input-type=module", "-e", script, str(custom)],
                              cwd=NODE, stdout=subprocess.PIPE, text=True)
    except OSError as e:
        raise StepFailed(1, f"node: {e.strerror}") from None
    if proc.returncode != 0:
        raise StepFailed(1)
    kinds = " ".join(sorted(set(proc.stdout.split())))
    log(f"  {name}: {passed} resources valid" + (f", and against their CRD schemas: {kinds}" if kinds else ""))


def validate_all() -> None:
    log(f"kubernetes-validate --strict -k {KUBE_VERSION}:")
    for name in NAMES:
        validate(name)
