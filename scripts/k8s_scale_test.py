#!/usr/bin/env python3
"""scripts/k8s-scale-test: the scale-down test, run against a real cluster (kind,
k3s or any other) through the current kubectl context.

It installs charts/warren (or reuses the release), runs the chaos client
(warren-chaos) through a kubectl port-forward to the ingress-nginx controller
(--via ingress, the default) or to a gateway pod (--via service), scales the
gateway Deployment down by one a third of the way in and back up at two
thirds, and prints the chaos client's final JSON as its last line.

Exit status: 0 when nothing was lost or duplicated and no client was sent back
to the login form; 1 when something was; 2 on bad usage; 3 when the cluster,
the release or a tool is not usable. --dry-run prints every helm and kubectl
command instead of running it, and exits 0.

The images must be where the cluster can pull them, e.g. on kind:
  docker build -f gateway/Dockerfile -t warren-gateway:0.1.0 . && kind load docker-image warren-gateway:0.1.0
  (the same for bridge), and ingress-nginx installed for --via ingress.

scripts/k8s-scale-test is a thin bash wrapper that runs this file with python3;
only the standard library is used. scripts/k8s-check tests it offline
(scripts/k8s_checks/test_scale_test.py: arguments, --dry-run, a fake cluster).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, NoReturn

NAME = "k8s-scale-test"
# The repository root as the bash script computed it (`cd scripts/.. && pwd`): symlinks are kept.
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
CHART = os.path.join(ROOT, "charts", "warren")

USAGE = """\
Usage: scripts/k8s-scale-test [options]

  -n, --namespace NS        namespace of the release (default: warren)
  -r, --release NAME        Helm release name (default: warren)
  -c, --clients N           chaos clients (default: 50)
  -d, --duration D          chaos run length: 90, 90s or 2m (default: 60s)
      --via ingress|service reach the gateways through a port-forward to the ingress-nginx
                            controller (default; the controller balances and keeps affinity) or to
                            one gateway pod, which is then the one scaled away (the forward is
                            re-established to a live pod, standing in for a balancer)
      --ingress-namespace NS   namespace of the ingress controller (default: ingress-nginx)
      --ingress-service NAME   its Service (default: ingress-nginx-controller)
      --ingress-port PORT      its HTTP port (default: 80)
      --local-port PORT     local end of the port-forward (default: a free port)
  -f, --values FILE         values for a new install (repeatable; default: charts/warren/ci/dev-values.yaml,
                            bundled dev Redis and RabbitMQ)
      --set KEY=VALUE       extra --set for a new install (repeatable)
      --no-install          use an existing release; never install
      --chaos PATH          the chaos client (default: warren-chaos on PATH, else target/release/warren-chaos,
                            else built with cargo)
      --timeout SECONDS     wait at most this long for installs and rollouts (default: 300)
      --dry-run             print every helm/kubectl command instead of running it; exit 0
  -h, --help                this help

Exit status: 0 passed, 1 lost/duplicated messages or re-logins, 2 bad usage, 3 cluster or tool problem.
"""

EXIT_FAILED = 1  # something was lost or duplicated, or a client had to log in again
EXIT_USAGE = 2
EXIT_TROUBLE = 3  # the cluster, the release or a tool is not usable

# A ready, not terminating gateway pod (for --via service): a go-template, so kubectl does the filtering.
READY_POD_TEMPLATE = (
    '{{range $p := .items}}{{if not $p.metadata.deletionTimestamp}}{{range $p.status.conditions}}'
    '{{if and (eq .type "Ready") (eq .status "True")}}{{$p.metadata.name}}{{"\\n"}}{{end}}{{end}}{{end}}{{end}}'
)
HTTP_PORT_JSONPATH = 'jsonpath={.spec.template.spec.containers[0].ports[?(@.name=="http")].containerPort}'
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


# === messages ===


def log(message: str) -> None:
    """A timestamped progress line on stderr, so that stdout keeps only the result (or the --dry-run plan)."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')} {NAME}] {message}\n")
    sys.stderr.flush()


def die_usage(message: str) -> NoReturn:
    """Bad command line: say what and where the help is; exit 2 before anything was touched."""
    sys.stderr.write(f"{NAME}: {message}\nTry: scripts/{NAME} --help\n")
    sys.exit(EXIT_USAGE)


def die(message: str) -> NoReturn:
    """The cluster, the release or a tool is not usable: exit 3 (the cleanup still runs, see main)."""
    sys.stderr.write(f"{NAME}: {message}\n")
    sys.exit(EXIT_TROUBLE)


# === options ===


@dataclass
class Options:
    """The command line; numbers stay the strings they were typed as, which is what the commands get."""

    namespace: str = "warren"
    release: str = "warren"
    clients: str = "50"
    duration: str = "60s"
    via: str = "ingress"
    ingress_namespace: str = "ingress-nginx"
    ingress_service: str = "ingress-nginx-controller"
    ingress_port: str = "80"
    local_port: str = ""
    values: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    no_install: bool = False
    chaos: str = ""
    timeout: str = "300"
    dry_run: bool = False
    duration_s: int = 0  # the duration in seconds; duration becomes "<duration_s>s"


# Options that take a value, and the Options field it goes to (list fields are repeatable).
VALUE_OPTIONS = {
    "-n": "namespace", "--namespace": "namespace",
    "-r": "release", "--release": "release",
    "-c": "clients", "--clients": "clients",
    "-d": "duration", "--duration": "duration",
    "--via": "via",
    "--ingress-namespace": "ingress_namespace",
    "--ingress-service": "ingress_service",
    "--ingress-port": "ingress_port",
    "--local-port": "local_port",
    "-f": "values", "--values": "values",
    "--set": "sets",
    "--chaos": "chaos",
    "--timeout": "timeout",
}
FLAG_OPTIONS = {"--no-install": "no_install", "--dry-run": "dry_run"}

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def is_positive(text: str) -> bool:
    """Decimal digits only (no sign, no spaces) and above zero."""
    return re.fullmatch(r"[0-9]+", text) is not None and int(text) > 0


def is_port(text: str) -> bool:
    """A TCP port number, 1 to 65535."""
    return re.fullmatch(r"[0-9]+", text) is not None and 0 < int(text) < 65536


def parse_args(argv: list[str]) -> Options:
    """Reads the options in order, by hand: the messages and exit statuses are part of the interface
    (tests match them), and an option's value may start with a dash, as it could in the bash script."""
    opts = Options()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in VALUE_OPTIONS:
            if not args or args[0] == "":
                die_usage(f"{arg} needs a value")
            name, value = VALUE_OPTIONS[arg], args.pop(0)
            if isinstance(getattr(opts, name), list):
                getattr(opts, name).append(value)
            else:
                setattr(opts, name, value)
        elif arg in FLAG_OPTIONS:
            setattr(opts, FLAG_OPTIONS[arg], True)
        elif arg in ("-h", "--help"):
            sys.stdout.write(USAGE)
            sys.exit(0)
        else:
            die_usage(f"unknown argument: {arg}")
    check_options(opts)
    return opts


def duration_seconds(text: str) -> int:
    """--duration as seconds: 90 or 90s are seconds, 2m minutes; anything else is bad usage."""
    if m := re.fullmatch(r"([0-9]+)s?", text):
        return int(m.group(1))
    if m := re.fullmatch(r"([0-9]+)m", text):
        return int(m.group(1)) * 60
    die_usage(f"--duration: expected seconds (90, 90s) or minutes (2m), got: {text}")


def check_options(opts: Options) -> None:
    """Rejects bad values before anything runs (exit 2), in the order the bash script did, and fills in
    the defaults that depend on other options."""
    if not DNS_LABEL.fullmatch(opts.namespace):
        die_usage(f"--namespace: not a valid namespace name: {opts.namespace}")
    if not (DNS_LABEL.fullmatch(opts.release) and len(opts.release) <= 53):
        die_usage(f"--release: not a valid release name: {opts.release}")
    if not DNS_LABEL.fullmatch(opts.ingress_namespace):
        die_usage(f"--ingress-namespace: not a valid namespace name: {opts.ingress_namespace}")
    if not is_positive(opts.clients):
        die_usage(f"--clients: expected a positive number, got: {opts.clients}")
    if not is_positive(opts.timeout):
        die_usage(f"--timeout: expected a positive number of seconds, got: {opts.timeout}")
    if not is_port(opts.ingress_port):
        die_usage(f"--ingress-port: not a port: {opts.ingress_port}")
    if opts.local_port and not is_port(opts.local_port):
        die_usage(f"--local-port: not a port: {opts.local_port}")
    if opts.via not in ("ingress", "service"):
        die_usage(f"--via: expected ingress or service, got: {opts.via}")
    opts.duration_s = duration_seconds(opts.duration)
    if opts.duration_s <= 0:
        die_usage("--duration must be above zero")
    opts.duration = f"{opts.duration_s}s"
    if opts.duration_s < 30:
        log("warning: a run under 30s leaves little time around the scale-down")
    if not opts.values:
        opts.values = [os.path.join(CHART, "ci", "dev-values.yaml")]
    for path in opts.values:
        if not os.path.isfile(path):
            die_usage(f"--values: no such file: {path}")


# === running commands ===


def quote(arg: str) -> str:
    """ARG as one would type it into a shell: bare when it is safe, else in single quotes."""
    if re.fullmatch(r"[\]\[A-Za-z0-9_./:=,@%+{}-]+", arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


def call(cmd: list[str], *, stdout=None, stderr=None) -> int:
    """Runs CMD and returns its exit status the way a shell reports it: 127 when it is not found,
    126 when it cannot be run, 128+N when signal N ended it."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        rc = subprocess.run(cmd, stdout=stdout, stderr=stderr).returncode
    except OSError as e:
        if stderr is None:
            reason = "command not found" if isinstance(e, FileNotFoundError) else e.strerror
            sys.stderr.write(f"{NAME}: {cmd[0]}: {reason}\n")
        return 127 if isinstance(e, FileNotFoundError) else 126
    return 128 - rc if rc < 0 else rc


def capture(cmd: list[str]) -> tuple[int, str]:
    """Runs CMD with stderr dropped and returns (status, stdout): the kubectl calls whose output is used."""
    sys.stderr.flush()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError as e:
        return (127 if isinstance(e, FileNotFoundError) else 126), ""
    return proc.returncode, proc.stdout.decode(errors="replace")


def free_port() -> str:
    """A port nothing listens on now, for the local end of the port-forward."""
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return str(s.getsockname()[1])
    except OSError:
        return str(20000 + random.randrange(20000))


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:PORT (the port-forward is up)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def tail(path: str, lines: int) -> bytes:
    """The last LINES lines of a file, as `tail -n` prints them (nothing when it is missing)."""
    try:
        with open(path, "rb") as f:
            return b"".join(f.read().splitlines(keepends=True)[-lines:])
    except OSError:
        return b""


def write_stderr(data: bytes) -> None:
    """Copies a tool's own output (a log file) to stderr unchanged."""
    sys.stderr.flush()
    sys.stderr.buffer.write(data)
    sys.stderr.buffer.flush()


class Forward:
    """Keeps a kubectl port-forward up: it ends when its pod goes away, so it is started again
    (to a live pod: COMMAND is asked each time) until stop()."""

    def __init__(self, command: Callable[[], list[str]], log_path: str):
        self.command = command
        self.log_path = log_path
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # stop() either comes before a start or sees its child
        self._child: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._keep_up, name="port-forward", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _append(self, text: str) -> None:
        try:
            with open(self.log_path, "a") as f:
                f.write(text)
        except OSError:
            pass

    def _keep_up(self) -> None:
        while not self._stopping.is_set():
            cmd = self.command()
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    with open(self.log_path, "ab") as out:
                        self._child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                                       stderr=subprocess.STDOUT)
                except OSError as e:
                    self._child = None
                    self._append(f"{cmd[0]}: {e}\n")
            if self._child is not None:
                self._child.wait()
            self._append("port-forward ended; starting it again\n")
            self._stopping.wait(0.5)

    def stop(self) -> None:
        """Ends the port-forward for good, and waits (a little) until it has."""
        with self._lock:
            self._stopping.set()
            if self._child is not None and self._child.poll() is None:
                self._child.terminate()
        self._thread.join(timeout=5)


# === the test ===


class ScaleTest:
    """One run: the options, what was found on the cluster, and what has to be undone on exit."""

    def __init__(self, opts: Options):
        self.o = opts
        # Commands are echoed to stdout under --dry-run (the plan is the output), else to stderr.
        self.echo = sys.stdout if opts.dry_run else sys.stderr
        self.chaos = opts.chaos
        self.local_port = opts.local_port
        self.selector = f"app.kubernetes.io/instance={opts.release},app.kubernetes.io/component"
        # State the cleanup looks at.
        self.work = ""
        self.forward: Forward | None = None
        self.chaos_proc: subprocess.Popen | None = None
        self.gateway = self.bridge = ""
        self.replicas = 0
        self.service_port = ""
        self.scaled_down = False
        self.cost_pod = ""

    # --- echoing and running ---

    def note(self, message: str) -> None:
        """A comment in the printed plan: what a dry run cannot know or show."""
        self.echo.write(f"# {message}\n")
        self.echo.flush()

    def show(self, *cmd: str) -> None:
        """Prints CMD as a shell would need it typed, prefixed with '+'."""
        self.echo.write("+" + "".join(f" {quote(arg)}" for arg in cmd) + "\n")
        self.echo.flush()

    def run(self, *cmd: str, stdout=None) -> int:
        """Prints CMD, then runs it unless --dry-run (which counts as success)."""
        self.show(*cmd)
        return 0 if self.o.dry_run else call(list(cmd), stdout=stdout)

    def run_to_stderr(self, *cmd: str) -> int:
        """run(), with the tool's own output on stderr: stdout is kept for the result."""
        return self.run(*cmd, stdout=sys.stderr.fileno())

    def k(self, *args: str, stdout=None) -> int:
        """run() kubectl in the release's namespace."""
        return self.run("kubectl", "-n", self.o.namespace, *args, stdout=stdout)

    def k_to_stderr(self, *args: str) -> int:
        """k(), with kubectl's own output on stderr."""
        return self.k(*args, stdout=sys.stderr.fileno())

    def query(self, *cmd: str) -> str | None:
        """Like run(), for commands whose output is used: their output with trailing newlines cut
        (as $(...) did), None when they fail, and "" under --dry-run. Their stderr is dropped."""
        self.show(*cmd)
        if self.o.dry_run:
            return ""
        rc, out = capture(list(cmd))
        return out.rstrip("\n") if rc == 0 else None

    def kquery(self, *args: str) -> str | None:
        """query() kubectl in the release's namespace."""
        return self.query("kubectl", "-n", self.o.namespace, *args)

    def chart_fullname(self) -> str:
        """The chart's fullname, for --dry-run (a real run asks the cluster by label)."""
        return self.o.release if "warren" in self.o.release else f"{self.o.release}-warren"

    def ready_gateway_pod(self) -> str:
        """A ready, not terminating gateway pod, or "" when there is none (or kubectl fails)."""
        _, out = capture(["kubectl", "-n", self.o.namespace, "get", "pods", "-l", f"{self.selector}=gateway",
                          "-o", f"go-template={READY_POD_TEMPLATE}"])
        return out.split("\n", 1)[0]

    # --- steps ---

    def preflight(self) -> None:
        """Fails early (exit 3) when the tools or the kubectl context are missing; makes the work directory."""
        if self.o.dry_run:
            log("dry run: printing the commands, running none")
            return
        if not shutil.which("kubectl"):
            die("kubectl is not on PATH")
        if not self.o.no_install and not shutil.which("helm"):
            die("helm is not on PATH (or pass --no-install)")
        rc, context = capture(["kubectl", "config", "current-context"])
        if rc != 0:
            die("no current kubectl context")
        context = context.rstrip("\n")
        log(f"context: {context}, namespace: {self.o.namespace}, release: {self.o.release}")
        self.work = tempfile.mkdtemp()

    def find_chaos(self) -> None:
        """The chaos client: --chaos, else warren-chaos on PATH, else the release build (built if need be)."""
        built = os.path.join(ROOT, "target", "release", "warren-chaos")
        if self.chaos:
            if not self.o.dry_run and not os.access(self.chaos, os.X_OK):
                die(f"--chaos: not an executable: {self.chaos}")
        elif on_path := shutil.which("warren-chaos"):
            self.chaos = on_path
        elif os.access(built, os.X_OK):
            self.chaos = built
        else:
            self.chaos = built
            log("building warren-chaos")
            if self.run_to_stderr("cargo", "build", "--release", "--manifest-path", os.path.join(ROOT, "Cargo.toml"),
                                  "--bin", "warren-chaos"):
                die("could not build warren-chaos")

    def install_or_reuse(self) -> None:
        """Installs the chart unless the release exists (or --no-install); without the HPA, which would
        undo the scale-down."""
        status = ("helm", "status", self.o.release, "-n", self.o.namespace)
        if self.o.dry_run:
            self.run(*status)
            if self.o.no_install:
                return
            self.note("when the release does not exist yet:")
        elif call(list(status), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0 or self.o.no_install:
            log(f"reusing release {self.o.release}")
            return
        args = ["upgrade", "--install", self.o.release, CHART, "-n", self.o.namespace, "--create-namespace",
                "--wait", "--timeout", f"{self.o.timeout}s", "--set", "gateway.autoscaling.enabled=false"]
        for path in self.o.values:
            args += ["-f", path]
        for setting in self.o.sets:
            args += ["--set", setting]
        if self.run_to_stderr("helm", *args):
            die("helm install failed")

    def find_gateway(self) -> None:
        """Finds the gateway and bridge Deployments, waits for their rollouts, refuses an HPA on the
        gateways and a gateway count below 2 (scaling 1 down to 0 tests nothing)."""
        o = self.o
        name_path = "jsonpath={.items[0].metadata.name}"
        if o.dry_run:
            self.k("get", "deployment", "-l", f"{self.selector}=gateway", "-o", name_path)
            self.gateway, self.bridge = f"{self.chart_fullname()}-gateway", f"{self.chart_fullname()}-bridge"
        else:
            gateway = self.kquery("get", "deployment", "-l", f"{self.selector}=gateway", "-o", name_path)
            if gateway is None:
                die(f"no gateway Deployment of release {o.release} in namespace {o.namespace}")
            bridge = self.kquery("get", "deployment", "-l", f"{self.selector}=bridge", "-o", name_path)
            if bridge is None:
                die(f"no bridge Deployment of release {o.release} in namespace {o.namespace}")
            if not gateway or not bridge:
                die(f"no gateway or bridge Deployment of release {o.release} in namespace {o.namespace}")
            self.gateway, self.bridge = gateway, bridge
        if self.k_to_stderr("rollout", "status", f"deployment/{self.bridge}", "--timeout", f"{o.timeout}s"):
            die("bridges did not become ready")
        if self.k_to_stderr("rollout", "status", f"deployment/{self.gateway}", "--timeout", f"{o.timeout}s"):
            die("gateways did not become ready")

        hpa = self.kquery("get", "hpa", "-l", f"{self.selector}=gateway", "-o", "name")
        if hpa is None:
            die("cannot list HPAs")
        if hpa:
            die(f"{hpa} manages the gateway count and would undo the scale-down: "
                "test a release without gateway.autoscaling")

        if o.dry_run:
            self.k("get", f"deployment/{self.gateway}", "-o", "jsonpath={.spec.replicas}")
            self.replicas = 3
            self.note(f"(assuming {self.replicas} replicas below)")
        else:
            replicas = self.kquery("get", f"deployment/{self.gateway}", "-o", "jsonpath={.spec.replicas}")
            if replicas is None:
                die(f"cannot read {self.gateway}")
            self.replicas = int(replicas) if re.fullmatch(r"[0-9]+", replicas) else 0
            if self.replicas < 2:
                die(f"{self.gateway} has {replicas} replica(s); the test needs 2 or more: "
                    f"kubectl -n {o.namespace} scale deployment/{self.gateway} --replicas=3")
        log(f"gateway Deployment {self.gateway} has {self.replicas} replicas")

    def forward_command(self) -> list[str]:
        """The port-forward to start (again): to the ingress controller's Service, or to a ready gateway pod."""
        o = self.o
        if o.via == "ingress":
            return ["kubectl", "-n", o.ingress_namespace, "port-forward", f"svc/{o.ingress_service}",
                    f"{self.local_port}:{o.ingress_port}"]
        target = self.ready_gateway_pod() or "none"
        return ["kubectl", "-n", o.namespace, "port-forward", f"pod/{target}", f"{self.local_port}:{self.service_port}"]

    def start_forward(self) -> None:
        """Makes Warren reachable on 127.0.0.1:<local port>, through a port-forward kept up in the background.
        With --via service the forwarded pod gets the lowest deletion cost, so that the scale-down removes
        exactly it and every client lives through a drain."""
        o = self.o
        if not self.local_port:
            self.local_port = free_port()
        if o.via == "service":
            # The gateway pods listen on the port named http; port-forward to a pod takes the container port.
            if o.dry_run:
                self.k("get", f"deployment/{self.gateway}", "-o", HTTP_PORT_JSONPATH)
                self.service_port = "8080"
                self.k("get", "pods", "-l", f"{self.selector}=gateway", "-o", f"go-template={READY_POD_TEMPLATE}")
                self.cost_pod = "<ready-gateway-pod>"
            else:
                port = self.kquery("get", f"deployment/{self.gateway}", "-o", HTTP_PORT_JSONPATH)
                if port is None:
                    die(f"cannot read {self.gateway}")
                self.service_port = port
                self.cost_pod = self.ready_gateway_pod()
                if not self.cost_pod:
                    die("no ready gateway pod")
            if self.k_to_stderr("annotate", "--overwrite", f"pod/{self.cost_pod}", f"{DELETION_COST}=-1000"):
                die(f"cannot annotate pod/{self.cost_pod}")
            self.show("kubectl", "-n", o.namespace, "port-forward", f"pod/{self.cost_pod}",
                      f"{self.local_port}:{self.service_port}")
        else:
            self.show("kubectl", "-n", o.ingress_namespace, "port-forward", f"svc/{o.ingress_service}",
                      f"{self.local_port}:{o.ingress_port}")
        self.note("(kept running, and started again whenever it ends)")
        if o.dry_run:
            return

        log_path = os.path.join(self.work, "port-forward.log")
        self.forward = Forward(self.forward_command, log_path)
        self.forward.start()
        deadline = time.monotonic() + 30
        while not port_open(int(self.local_port)):
            if time.monotonic() >= deadline:
                write_stderr(tail(log_path, sys.maxsize))
                die(f"the port-forward to 127.0.0.1:{self.local_port} did not come up")
            time.sleep(0.2)
        log(f"Warren is reachable at http://127.0.0.1:{self.local_port} (via {o.via})")

    def wait_pods(self, want: int) -> None:
        """Waits until exactly WANT gateway pods exist, terminating ones included: the scale-down is only
        over when the removed pod has drained and gone."""
        o = self.o
        list_pods = ("get", "pods", "-l", f"{self.selector}=gateway", "-o", "name")
        if self.k(*list_pods, stdout=subprocess.DEVNULL):
            die("cannot list the gateway pods")
        if o.dry_run:
            self.note(f"(repeated until it lists {want} pods)")
            return
        deadline = time.monotonic() + int(o.timeout)
        while True:
            rc, out = capture(["kubectl", "-n", o.namespace, *list_pods])
            if rc != 0:
                die("cannot list the gateway pods")
            have = out.count("\n")
            if have == want:
                return
            if time.monotonic() >= deadline:
                die(f"still {have} gateway pods after {o.timeout}s, expected {want}")
            time.sleep(1)

    def run_chaos(self) -> None:
        """Runs the chaos client for the whole duration; scales the gateways down by one after a third
        of it and back up at two thirds, while the clients keep sending."""
        o = self.o
        started, third = time.monotonic(), o.duration_s // 3
        chaos = [self.chaos, "--url", f"http://127.0.0.1:{self.local_port}", "--clients", o.clients,
                 "--duration", o.duration]
        if o.dry_run:
            self.run(*chaos)
            self.note(f"after {third}s:")
        else:
            log(f"running {' '.join(chaos)}")
            self.start_chaos(chaos)
            time.sleep(third)
            if self.chaos_proc.poll() is not None:
                write_stderr(tail(os.path.join(self.work, "chaos.err"), sys.maxsize))
                die("warren-chaos ended early")

        log(f"scaling {self.gateway} down to {self.replicas - 1}")
        if self.k_to_stderr("scale", f"deployment/{self.gateway}", f"--replicas={self.replicas - 1}"):
            die("scale-down failed")
        self.scaled_down = True
        self.wait_pods(self.replicas - 1)

        if o.dry_run:
            self.note(f"at {2 * third}s:")
        else:
            time.sleep(max(0.0, started + 2 * third - time.monotonic()))
        log(f"scaling {self.gateway} back up to {self.replicas}")
        if self.k_to_stderr("scale", f"deployment/{self.gateway}", f"--replicas={self.replicas}"):
            die("scale-up failed")
        self.scaled_down = False
        if self.k_to_stderr("rollout", "status", f"deployment/{self.gateway}", "--timeout", f"{o.timeout}s"):
            die("gateways did not come back")

        if o.dry_run:
            return
        rc = self.chaos_proc.wait()
        self.chaos_proc = None
        if rc < 0:
            rc = 128 - rc
        if rc != 0:
            log(f"warren-chaos exited with status {rc}")

    def start_chaos(self, chaos: list[str]) -> None:
        """Starts the chaos client in the background, its output in the work directory for verdict()."""
        with open(os.path.join(self.work, "chaos.out"), "wb") as out, \
                open(os.path.join(self.work, "chaos.err"), "wb") as err:
            try:
                self.chaos_proc = subprocess.Popen(chaos, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            except OSError as e:
                sys.stderr.write(f"{NAME}: {chaos[0]}: {e.strerror}\n")
                die("warren-chaos ended early")

    def verdict(self) -> None:
        """Prints the chaos client's last line (its JSON result) on stdout and judges it: exit 1 unless
        lost, duplicates and relogins are all 0."""
        if self.o.dry_run:
            log("dry run done")
            return
        with open(os.path.join(self.work, "chaos.out"), "rb") as f:
            lines = f.read().decode(errors="replace").split("\n")
        non_blank = [line for line in lines if not re.fullmatch(r"[ \t\n\r\f\v]*", line)]
        result = non_blank[-1] if non_blank else ""
        if not result.startswith("{"):
            write_stderr(tail(os.path.join(self.work, "chaos.err"), 20))
            die("warren-chaos printed no JSON result")
        failed = False
        for name in ("lost", "duplicates", "relogins"):
            m = re.search(rf'"{name}":[ \t\n\r\f\v]*([0-9]+)', result)
            if not m:
                die(f'the result has no "{name}": {result}')
            if int(m.group(1)) != 0:
                log(f"FAILED: {name} = {m.group(1)}")
                failed = True
        print(result, flush=True)
        if failed:
            sys.exit(EXIT_FAILED)
        log("passed: nothing lost or duplicated, nobody logged out")

    def cleanup(self) -> None:
        """On every exit: stops the chaos client and the port-forward, restores the gateway count and
        the pod's deletion cost if the run ended half-way, removes the work directory."""
        if self.chaos_proc is not None and self.chaos_proc.poll() is None:
            self.chaos_proc.terminate()
        if self.forward is not None:
            self.forward.stop()
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        if self.scaled_down and not self.o.dry_run:
            log(f"restoring {self.gateway} to {self.replicas} replicas")
            call(["kubectl", "-n", self.o.namespace, "scale", f"deployment/{self.gateway}",
                  f"--replicas={self.replicas}"], **quiet)
        if self.cost_pod and not self.o.dry_run:
            call(["kubectl", "-n", self.o.namespace, "annotate", f"pod/{self.cost_pod}", f"{DELETION_COST}-"], **quiet)
        if self.work:
            shutil.rmtree(self.work, ignore_errors=True)

    def steps(self) -> None:
        """The whole run, in order; main() wraps it so that cleanup() always follows."""
        self.preflight()
        self.find_chaos()
        self.install_or_reuse()
        self.find_gateway()
        self.start_forward()
        self.run_chaos()
        self.verdict()


def interrupted(signum, frame) -> NoReturn:
    """Ctrl-C or SIGTERM: exit 130, through the cleanup (which restores the gateway count)."""
    sys.exit(130)


def main(argv: list[str]) -> int:
    """Parses the options (exit 2 on bad usage), runs the steps, and always cleans up after them."""
    opts = parse_args(argv)
    test = ScaleTest(opts)
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        test.steps()
    except SystemExit:
        raise
    except Exception:  # noqa: BLE001 - a bug or an OS error: a tool problem (3), not a test failure (1)
        traceback.print_exc()
        return EXIT_TROUBLE
    finally:
        # Not interrupted again half-way: the cleanup may be restoring the gateway count.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        test.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
