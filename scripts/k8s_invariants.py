#!/usr/bin/env python3
"""Offline tests of charts/warren, k8s/ and scripts/k8s-scale-test.

scripts/k8s-check runs this with the project-local tools after it has linted,
rendered and schema-validated the chart; it needs PyYAML (in the same venv as
kubernetes-validate) and the helm and kubectl binaries:

    k8s_invariants.py --helm H --kubectl K --renders DIR   run the tests on DIR/*.yaml
    k8s_invariants.py --helm H --kubectl K --write         regenerate what is derived:
        the values table in charts/warren/README.md, the descriptions in
        values.schema.json (both from the `# --` comments in values.yaml) and
        the manifests in k8s/ (from the chart)

Layout: a small helm/YAML toolkit, the values.yaml comment parser, the k8s/
generator, then one function per test (`@test`), run in order; the last line
is "N passed, N failed".
"""

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

ROOT = Path(__file__).resolve().parent.parent
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


def values_file(content: str) -> str:
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    f.write(textwrap.dedent(content))
    f.close()
    return f.name


# === values.yaml `# --` comments ===


class Key:
    """One key of values.yaml: its dotted path, `# --` text and default."""

    def __init__(self, path: str, doc: str | None, line: int):
        self.path, self.doc, self.line = path, doc, line
        self.children: list[Key] = []


def parse_values_doc(text: str) -> list[Key]:
    """Keys in file order with their `# --` docs; keys inside list items are skipped."""
    keys: list[Key] = []
    stack: list[tuple[int, str]] = []  # (indent, path) of open mapping keys
    list_indent: int | None = None  # inside a list item deeper than this: skip
    comment: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if not stripped:
            comment = []
            continue
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        if list_indent is not None and indent > list_indent:
            comment = []
            continue
        list_indent = None
        if stripped.startswith("- "):
            list_indent = indent - 1
            comment = []
            continue
        m = re.match(r"([A-Za-z0-9_]+):(\s.*|$)", stripped)
        if not m:
            comment = []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([p for _, p in stack] + [m.group(1)])
        doc = None
        for i, c in enumerate(comment):
            if c.startswith("# --"):
                doc = " ".join([c[4:].strip()] + [x.lstrip("#").strip() for x in comment[i + 1:]]).strip()
                break
        keys.append(Key(path, doc, n))
        stack.append((indent, m.group(1)))
        if m.group(2).strip() == "":
            # A block value follows: a list of items when the next lines start with "-".
            list_indent = None
        comment = []
    by_path = {k.path: k for k in keys}
    for k in keys:
        parent = k.path.rpartition(".")[0]
        if parent in by_path:
            by_path[parent].children.append(k)
    return keys


def values_keys() -> list[Key]:
    return parse_values_doc((CHART / "values.yaml").read_text())


def documented_tree(keys: list[Key]) -> tuple[list[Key], list[str]]:
    """The keys that are documented values (leaves of the doc tree), and the undocumented keys.

    A documented key whose children carry no `# --` is one value (a Kubernetes
    object such as resources or a probe); once one child is documented, all must be.
    """
    by_path = {k.path: k for k in keys}
    rows, missing = [], []
    for k in keys:
        parent = by_path.get(k.path.rpartition(".")[0])
        opaque_parent = parent is not None and not any(c.doc for c in parent.children)
        if parent is not None and (opaque_parent or is_inside_opaque(parent, by_path)):
            continue
        if not k.doc:
            missing.append(f"values.yaml:{k.line}: {k.path} has no `# --` comment")
            continue
        rows.append(k)
    return rows, missing


def is_inside_opaque(key: Key, by_path: dict[str, Key]) -> bool:
    while True:
        parent = by_path.get(key.path.rpartition(".")[0])
        if parent is None:
            return False
        if not any(c.doc for c in parent.children):
            return True
        key = parent


def lookup(values: dict, path: str):
    node = values
    for part in path.split("."):
        node = node[part]
    return node


def schema_node(schema: dict, path: str) -> dict | None:
    node = schema
    for part in path.split("."):
        node = resolve(schema, node)
        props = node.get("properties", {})
        if part not in props:
            return None
        node = props[part]
    return node


def resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def schema_type(schema: dict, node: dict) -> str:
    node = resolve(schema, node)
    if "enum" in node:
        return "string"
    if "oneOf" in node:
        return " or ".join(schema_type(schema, n) for n in node["oneOf"])
    t = node.get("type", "any")
    t = " or ".join(t) if isinstance(t, list) else t
    return {"array": "list", "object": "object", "null": "null"}.get(t, t)


def values_table() -> str:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    rows, _ = documented_tree(values_keys())
    out = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for k in rows:
        node = schema_node(schema, k.path) or {}
        value = lookup(values, k.path)
        with_children = any(c.doc for c in k.children)
        default = "" if with_children else f"`{json.dumps(value, separators=(',', ':'))}`"
        doc = k.doc.replace("|", "\\|")
        out.append(f"| `{k.path}` | {schema_type(schema, node) if node else '?'} | {default} | {doc} |")
    return "\n".join(out) + "\n"


TABLE_BEGIN = "<!-- values-table:begin (generated by scripts/k8s_invariants.py --write) -->\n"
TABLE_END = "<!-- values-table:end -->\n"


def readme_with_table(readme: str) -> str:
    head, _, rest = readme.partition(TABLE_BEGIN)
    _, _, tail = rest.partition(TABLE_END)
    assert rest, "charts/warren/README.md has no values-table markers"
    return head + TABLE_BEGIN + values_table() + TABLE_END + tail


def schema_with_descriptions(schema: dict) -> dict:
    """The schema with each key's `# --` text as its description.

    Keys under a shared definition ($ref) keep the definition's own text: the
    definition serves more than one key.
    """
    schema = copy.deepcopy(schema)
    for k in values_keys():
        if not k.doc:
            continue
        node = schema
        parts = k.path.split(".")
        for part in parts[:-1]:
            node = node.get("properties", {}).get(part, {})
        if "$ref" in node:
            continue
        prop = node.get("properties", {}).get(parts[-1])
        if prop is not None:
            prop["description"] = k.doc
    return schema


# === k8s/ generated from the chart ===

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

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


@test
def drain_numbers_fit_the_grace_period():
    """preStop + drain window + shutdown grace < terminationGracePeriodSeconds, as rendered."""
    for name in ("default", "ci-default", "ha", "dev"):
        objs = rendered(name)
        gw, gw_cm = one(objs, "Deployment", "gateway"), one(objs, "ConfigMap", "gateway")
        pod = gw["spec"]["template"]["spec"]
        pre = container(gw)["lifecycle"]["preStop"]["sleep"]["seconds"]
        need = pre + seconds(gw_cm["data"]["GATEWAY_DRAIN_WINDOW"]) + seconds(gw_cm["data"]["GATEWAY_SHUTDOWN_GRACE"])
        assert pre >= 5, f"{name}: gateway preStop sleep {pre}s"
        assert need < pod["terminationGracePeriodSeconds"], f"{name}: gateway needs {need}s, grace {pod['terminationGracePeriodSeconds']}s"
        br, br_cm = one(objs, "Deployment", "bridge"), one(objs, "ConfigMap", "bridge")
        pre = container(br).get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        need = pre + seconds(br_cm["data"]["BRIDGE_SHUTDOWN_GRACE"])
        assert need < br["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], f"{name}: bridge needs {need}s"


@test
def grace_too_small_fails_to_render():
    small = values_file("""\
        gateway:
          shutdown:
            terminationGracePeriodSeconds: 15
        """)
    fails("-f", small, expect="gateway.shutdown.terminationGracePeriodSeconds (15) must be greater than")
    fails("--set", "gateway.shutdown.terminationGracePeriodSeconds=20",
          expect="must be greater than preStopSleepSeconds + drainWindowSeconds + shutdownGraceSeconds (20)")
    fails("--set", "gateway.shutdown.drainWindowSeconds=30", expect="gateway.shutdown.terminationGracePeriodSeconds (30)")
    fails("--set", "bridge.shutdown.terminationGracePeriodSeconds=5", expect="bridge.shutdown.terminationGracePeriodSeconds (5)")
    fails("--set", "bridge.shutdown.preStopSleepSeconds=20,bridge.shutdown.shutdownGraceSeconds=10",
          expect="must be greater than preStopSleepSeconds + shutdownGraceSeconds (30)")
    render("--set", "gateway.shutdown.terminationGracePeriodSeconds=21")


@test
def config_maps_carry_the_drain_numbers_and_listen_on_the_pod_ports():
    objs = render("--set", "gateway.shutdown.drainWindowSeconds=12,gateway.shutdown.shutdownGraceSeconds=7,"
                  "gateway.shutdown.terminationGracePeriodSeconds=40,bridge.shutdown.shutdownGraceSeconds=9")
    gw_cm, br_cm = one(objs, "ConfigMap", "gateway")["data"], one(objs, "ConfigMap", "bridge")["data"]
    assert (gw_cm["GATEWAY_DRAIN_WINDOW"], gw_cm["GATEWAY_SHUTDOWN_GRACE"]) == ("12s", "7s"), gw_cm
    assert br_cm["BRIDGE_SHUTDOWN_GRACE"] == "9s", br_cm
    assert one(objs, "Deployment", "gateway")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 40
    for comp, cm, public in (("gateway", gw_cm, "http"), ("bridge", br_cm, "grpc")):
        deploy = one(objs, "Deployment", comp)
        prefix = comp.upper()
        assert cm[f"{prefix}_LISTEN"] == f"0.0.0.0:{port_number(deploy, public)}", cm
        assert cm[f"{prefix}_ADMIN_LISTEN"] == f"0.0.0.0:{port_number(deploy, 'admin')}", cm


@test
def probes_call_the_admin_port():
    for name in ("default", "ha", "dev"):
        objs = rendered(name)
        for comp in ("gateway", "bridge"):
            deploy = one(objs, "Deployment", comp)
            c = container(deploy)
            admin = port_number(deploy, "admin")
            public = port_number(deploy, "http" if comp == "gateway" else "grpc")
            assert admin != public, f"{comp}: admin and public ports are the same"
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = c[probe]["httpGet"]
                assert get["path"] == path, f"{name} {comp} {probe} path {get['path']}"
                assert port_number(deploy, get["port"]) == admin, f"{name} {comp} {probe} is not on the admin port"
        # No Service that users reach exposes an admin port.
        gw_svc = [s for s in all_of(objs, "Service") if s["metadata"]["name"] == f"{RELEASE}-gateway"][0]
        assert [p["targetPort"] for p in gw_svc["spec"]["ports"]] == ["http"], gw_svc["spec"]["ports"]
    # Moving the admin port moves the probes with it.
    objs = render("--set", "gateway.containerPorts.admin=9999")
    deploy = one(objs, "Deployment", "gateway")
    assert port_number(deploy, container(deploy)["readinessProbe"]["httpGet"]["port"]) == 9999


@test
def ingress_hashes_on_jsessionid_and_never_owns_it():
    ing = one(rendered("ci-default"), "Ingress")
    ann = ing["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/upstream-hash-by"] == f"$cookie_{SESSION_COOKIE}", ann
    assert "nginx.ingress.kubernetes.io/affinity" not in ann, "hash affinity must not also set a controller cookie"
    for key, value in ann.items():
        if "cookie-name" in key:
            assert value.lower() != SESSION_COOKIE, f"{key}: {value}"
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(ann[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600, f"{key} too short for WebSockets"
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{RELEASE}-gateway", "port": {"name": "http"}}, backend
    # A renamed session cookie (Cloud Foundry's JSESSIONID) is what the gateways set and the Ingress hashes on.
    renamed = render("--set", "ingress.enabled=true,gateway.config.sessionCookieName=JSESSIONID")
    assert one(renamed, "Ingress")["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$cookie_JSESSIONID"
    assert one(renamed, "ConfigMap", "gateway")["data"]["GATEWAY_SESSION_COOKIE_NAME"] == "JSESSIONID"
    fails("--set", "ingress.enabled=true,ingress.affinity=cookie,ingress.affinityCookieName=jsessionid,"
          "gateway.config.sessionCookieName=JSESSIONID", expect="must not be \"jsessionid\"")


@test
def ingress_cookie_mode_uses_its_own_cookie():
    ann = one(render("--set", "ingress.enabled=true,ingress.affinity=cookie"), "Ingress")["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert ann["nginx.ingress.kubernetes.io/session-cookie-name"] == "warren-affinity"
    assert "nginx.ingress.kubernetes.io/upstream-hash-by" not in ann
    fails("--set", "ingress.enabled=true,ingress.affinity=cookie,ingress.affinityCookieName=jsessionid",
          expect="ingress.affinityCookieName must not be \"jsessionid\"")
    overriding = values_file("""\
        ingress:
          enabled: true
          annotations:
            nginx.ingress.kubernetes.io/affinity: cookie
            nginx.ingress.kubernetes.io/session-cookie-name: JSESSIONID
        """)
    fails("-f", overriding, expect="must not be \"JSESSIONID\"")
    ann = one(render("--set", "ingress.enabled=true,ingress.affinity=none"), "Ingress")["metadata"]["annotations"]
    assert not any("affinity" in k or "hash" in k for k in ann), ann


@test
def httproute_keeps_its_session_cookie_apart():
    route = one(rendered("ha"), "HTTPRoute")
    rule = route["spec"]["rules"][0]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"][0]["name"] == "public"
    assert rule["backendRefs"] == [{"name": f"{RELEASE}-gateway", "port": 80}], rule["backendRefs"]
    persistence = rule["sessionPersistence"]
    assert persistence["type"] == "Cookie" and persistence["sessionName"].lower() != SESSION_COOKIE, persistence
    fails("--set", "httpRoute.enabled=true,httpRoute.parentRefs[0].name=gw,httpRoute.sessionPersistence.enabled=true,"
          "httpRoute.sessionPersistence.sessionName=jsessionid", expect="must not be \"jsessionid\"")
    fails("--set", "httpRoute.enabled=true", expect="httpRoute.parentRefs")
    route = one(render("--set", "httpRoute.enabled=true,httpRoute.parentRefs[0].name=gw"), "HTTPRoute")
    assert "sessionPersistence" not in route["spec"]["rules"][0], "sessionPersistence is opt-in (experimental channel)"


def flows(objs: list[dict]) -> set[tuple]:
    """The NetworkPolicies as (direction, component, peer, ports) tuples."""
    out = set()
    for pol in all_of(objs, "NetworkPolicy"):
        spec = pol["spec"]
        labels = spec["podSelector"]["matchLabels"]
        assert labels.get("app.kubernetes.io/instance") == RELEASE, labels
        comp = labels["app.kubernetes.io/component"]
        assert spec["policyTypes"] == ["Ingress", "Egress"], f"{comp}: both directions must be restricted"
        for direction, rules, peers_key in (("in", spec.get("ingress", []), "from"), ("out", spec.get("egress", []), "to")):
            for rule in rules:
                ports = frozenset(f"{p.get('protocol', 'TCP')}/{p['port']}" for p in rule.get("ports", []))
                assert ports, f"{comp} {direction}: a rule without ports allows every port"
                for peer in rule.get(peers_key) or [None]:
                    out.add((direction, comp, peer_name(peer), ports))
    return out


def peer_name(peer: dict | None) -> str:
    if peer is None:
        return "any"
    if "ipBlock" in peer:
        return f"ip:{peer['ipBlock']['cidr']}"
    pod = (peer.get("podSelector") or {}).get("matchLabels", {})
    ns = peer.get("namespaceSelector")
    if pod.get("k8s-app") == "kube-dns":
        return "dns"
    if "app.kubernetes.io/component" in pod and ns is None:
        assert pod.get("app.kubernetes.io/instance") == RELEASE, pod
        return f"pod:{pod['app.kubernetes.io/component']}"
    if ns is not None and not pod:
        return f"ns:{ns.get('matchLabels', {}).get('kubernetes.io/metadata.name', '*')}"
    return json.dumps(peer, sort_keys=True)


DNS = frozenset({"UDP/53", "TCP/53"})


@test
def network_policies_allow_exactly_the_flows():
    ha = flows(rendered("ha"))
    expected_ha = {
        ("in", "gateway", "ns:gateway-system", frozenset({"TCP/http"})),
        ("in", "gateway", "ns:monitoring", frozenset({"TCP/admin"})),
        ("out", "gateway", "dns", DNS),
        ("out", "gateway", "pod:bridge", frozenset({"TCP/50051"})),
        ("out", "gateway", "ip:10.20.0.0/16", frozenset({"TCP/6379"})),
        ("in", "bridge", "pod:gateway", frozenset({"TCP/grpc"})),
        ("in", "bridge", "ns:monitoring", frozenset({"TCP/admin"})),
        ("out", "bridge", "dns", DNS),
        ("out", "bridge", "ns:rabbitmq", frozenset({"TCP/5672", "TCP/5671"})),
    }
    assert ha == expected_ha, f"ha: extra {ha - expected_ha}, missing {expected_ha - ha}"
    dev_objs = rendered("dev")
    dev = flows(dev_objs)
    expected_dev = {
        ("in", "gateway", "any", frozenset({"TCP/http"})),
        ("out", "gateway", "dns", DNS),
        ("out", "gateway", "pod:bridge", frozenset({"TCP/50051"})),
        ("out", "gateway", "pod:redis", frozenset({"TCP/6379"})),
        ("in", "bridge", "pod:gateway", frozenset({"TCP/grpc"})),
        ("out", "bridge", "dns", DNS),
        ("out", "bridge", "pod:rabbitmq", frozenset({"TCP/5672"})),
        ("in", "redis", "pod:gateway", frozenset({"TCP/6379"})),
        ("in", "rabbitmq", "pod:bridge", frozenset({"TCP/5672"})),
    }
    assert dev == expected_dev, f"dev: extra {dev - expected_dev}, missing {expected_dev - dev}"
    # Every pod is covered, and the ports in the rules are the pods' real ports.
    for objs in (rendered("ha"), dev_objs):
        deploys = {component_of(d): d for d in all_of(objs, "Deployment")}
        covered = {p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in all_of(objs, "NetworkPolicy")}
        assert covered == set(deploys), f"pods without a NetworkPolicy: {set(deploys) - covered}"
        for direction, comp, peer, ports in flows(objs):
            target = comp if direction == "in" else (peer[4:] if peer.startswith("pod:") else None)
            for p in ports:
                proto, port = p.split("/")
                if target and proto == "TCP":
                    port_number(deploys[target], int(port) if port.isdigit() else port)
    assert not all_of(rendered("default"), "NetworkPolicy"), "NetworkPolicies are opt-in"


@test
def schema_rejects_bad_values():
    bad = values_file("""\
        gateway:
          replicaCount: "three"
        """)
    lint = run(HELM, "lint", "--strict", str(CHART), "-f", bad, check=False)
    assert lint.returncode != 0 and "replicaCount" in lint.stdout + lint.stderr, "helm lint accepted replicaCount: three"
    fails("-f", bad, expect="/gateway/replicaCount")
    fails("--set", "gateway.replicas=3", expect="replicas")  # a typo of replicaCount
    fails("--set", "ingress.affinity=sticky", expect="affinity")
    fails("--set", "gateway.config.logFormat=xml", expect="logFormat")
    fails("--set", "bridge.config.streamMaxAge=7days", expect="streamMaxAge")
    fails("--set", "gateway.image.digest=latest", expect="digest")


@test
def pods_are_locked_down():
    for name in ("default", "ha", "dev"):
        for deploy in all_of(rendered(name), "Deployment"):
            pod = deploy["spec"]["template"]["spec"]
            who = f"{name} {deploy['metadata']['name']}"
            assert pod.get("enableServiceLinks") is False, f"{who}: enableServiceLinks"
            assert pod.get("automountServiceAccountToken") is False, f"{who}: service account token"
            assert pod["securityContext"]["runAsNonRoot"] is True, who
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", who
            c = container(deploy)
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, who
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True, who
            assert c["resources"].get("requests") and c["resources"].get("limits", {}).get("memory"), f"{who}: resources"
            assert c["readinessProbe"] and c["livenessProbe"], f"{who}: probes"


@test
def gateways_find_bridges_through_the_bridge_service():
    objs = rendered("default")
    svc = [s for s in all_of(objs, "Service") if s["metadata"]["name"] == f"{RELEASE}-bridge"][0]
    grpc = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"][0]
    assert svc["spec"]["type"] == "ClusterIP" and "clusterIP" not in svc["spec"], "a normal ClusterIP (kube-proxy spreads connections)"
    assert grpc["targetPort"] == "grpc"
    cm = one(objs, "ConfigMap", "gateway")["data"]
    assert cm["GATEWAY_BRIDGE_URLS"] == f"http://{RELEASE}-bridge:{grpc['port']}", cm["GATEWAY_BRIDGE_URLS"]
    env = {e["name"]: e for e in container(one(objs, "Deployment", "gateway"))["env"]}
    assert env["GATEWAY_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["GATEWAY_SESSION_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "session-secret"
    assert env["GATEWAY_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"


@test
def secrets_come_from_values_or_existing_secrets():
    ha = rendered("ha")
    assert not all_of(ha, "Secret"), "with every existingSecret set the chart renders no Secret"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(one(ha, "Deployment", "gateway"))["env"] if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]}
    assert env["GATEWAY_SESSION_SECRET"] == {"name": "warren-session", "key": "session-secret"}, env
    assert env["GATEWAY_REDIS_URL"] == {"name": "warren-redis", "key": "redis-url"}, env
    secret = one(render("--set", "gateway.sessionSecret.value=s3cret,redis.url=redis://r:6379/1"), "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["session-secret"] == "s3cret" and data["redis-url"] == "redis://r:6379/1", data
    generated = base64.b64decode(one(rendered("default"), "Secret")["data"]["session-secret"]).decode()
    assert len(generated) >= 32, "a generated session secret must be long"
    dev = {k: base64.b64decode(v).decode() for k, v in one(rendered("dev"), "Secret")["data"].items()}
    assert dev["redis-url"] == f"redis://{RELEASE}-redis:6379", dev
    assert dev["amqp-url"] == f"amqp://warren:warren-dev@{RELEASE}-rabbitmq:5672/%2f", dev
    # The server API: off unless its token comes from an existing Secret.
    names = [e["name"] for e in container(one(rendered("default"), "Deployment", "gateway"))["env"]]
    assert "GATEWAY_API_TOKEN" not in names, "the API is off by default"
    api = container(one(render("--set", "gateway.api.existingSecret=warren-api"), "Deployment", "gateway"))["env"]
    token = next(e["valueFrom"]["secretKeyRef"] for e in api if e["name"] == "GATEWAY_API_TOKEN")
    assert token == {"name": "warren-api", "key": "api-token"}, token


@test
def tls_files_are_mounted_only_from_a_named_secret():
    """redis.tls and amqp.tls: the Secret's keys as files under /etc/warren/tls, and the variables naming
    them, in the Deployment of the service's client only; nothing at all without a Secret."""
    def tls_of(objs: list[dict], comp: str) -> tuple[dict, list, list]:
        deploy = one(objs, "Deployment", comp)
        c = container(deploy)
        env = {e["name"]: e.get("value") for e in c["env"] if "_TLS_" in e["name"]}
        return env, c.get("volumeMounts", []), deploy["spec"]["template"]["spec"].get("volumes", [])
    for name in ("default", "dev"):
        for comp in ("gateway", "bridge"):
            assert tls_of(rendered(name), comp) == ({}, [], []), f"{name} {comp}: TLS files without a Secret"
    mount = [{"name": "tls", "mountPath": "/etc/warren/tls", "readOnly": True}]
    env, mounts, volumes = tls_of(rendered("ha"), "gateway")
    assert env == {"GATEWAY_TLS_CA_FILE": "/etc/warren/tls/ca.pem", "GATEWAY_TLS_CLIENT_CERT": "/etc/warren/tls/client.crt",
                   "GATEWAY_TLS_CLIENT_KEY": "/etc/warren/tls/client.key"}, env
    assert mounts == mount, mounts
    items = [{"key": "ca.crt", "path": "ca.pem"}, {"key": "tls.crt", "path": "client.crt"}, {"key": "tls.key", "path": "client.key"}]
    assert volumes == [{"name": "tls", "secret": {"secretName": "warren-redis-tls", "defaultMode": 0o444, "items": items}}], volumes
    env, mounts, volumes = tls_of(rendered("ha"), "bridge")
    assert env == {"BRIDGE_TLS_CA_FILE": "/etc/warren/tls/ca.pem"} and mounts == mount, (env, mounts)
    assert volumes == [{"name": "tls", "secret": {"secretName": "warren-amqp-ca", "defaultMode": 0o444, "items": items[:1]}}], volumes
    # One service's TLS reaches only its own client.
    objs = render("--set", "redis.tls.existingSecret=redis-tls")
    assert tls_of(objs, "gateway")[0] == {"GATEWAY_TLS_CA_FILE": "/etc/warren/tls/ca.pem"}
    assert tls_of(objs, "bridge") == ({}, [], []), "the bridges do not talk to Redis"
    fails("--set", "redis.tls.existingSecret=redis-tls,redis.tls.certKey=tls.crt", expect="redis.tls.certKey and redis.tls.keyKey go together")
    fails("--set", "amqp.tls.existingSecret=ca,amqp.tls.caKey=", expect="neither amqp.tls.caKey nor amqp.tls.certKey")


@test
def config_and_secret_changes_roll_the_pods():
    def checksums(*args):
        objs = render(*args)
        return {c: one(objs, "Deployment", c)["spec"]["template"]["metadata"]["annotations"] for c in ("gateway", "bridge")}
    base = checksums()
    assert base == checksums(), "checksums must not depend on a generated secret"
    cfg = checksums("--set", "gateway.config.sessionMaxAge=12h")
    assert cfg["gateway"]["checksum/config"] != base["gateway"]["checksum/config"]
    assert cfg["bridge"] == base["bridge"], "a gateway setting must not roll the bridges"
    sec = checksums("--set", "amqp.url=amqp://other:5672/%2f")
    assert sec["bridge"]["checksum/secret"] != base["bridge"]["checksum/secret"]
    assert sec["gateway"] == base["gateway"], "the AMQP URL must not roll the gateways"


@test
def chart_upgrades_restart_no_pod_by_themselves():
    """A new chart version with the same values and image changes no pod template."""
    def pod_templates(chart: Path) -> dict:
        proc = run(HELM, "template", RELEASE, str(chart), "--kube-version", "1.32.0",
                   "--set", "image.tag=1.2.3", "--set", "redis.dev.enabled=true", "--set", "amqp.dev.enabled=true")
        return {(d["kind"], d["metadata"]["name"]): d["spec"]["template"]
                for d in docs(proc.stdout) if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")}
    with tempfile.TemporaryDirectory() as scratch:
        bumped = Path(scratch) / "warren"
        shutil.copytree(CHART, bumped)
        meta = yaml.safe_load((bumped / "Chart.yaml").read_text())
        meta["version"] = meta["version"] + "-next.1"
        meta["appVersion"] = str(meta.get("appVersion", "")) + "-next.1"
        (bumped / "Chart.yaml").write_text(yaml.safe_dump(meta))
        before, after = pod_templates(CHART), pod_templates(bumped)
    assert before and before.keys() == after.keys(), "the same workloads"
    changed = [name for name in before if before[name] != after[name]]
    assert not changed, f"a chart version bump changes these pod templates: {changed}\n{diff(before, after)}"


@test
def autoscaling_and_disruption_budgets():
    ha = rendered("ha")
    hpa = one(ha, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["minReplicas"] >= 3
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-gateway"
    assert "replicas" not in one(ha, "Deployment", "gateway")["spec"], "the HPA owns the gateway count"
    assert {component_of(p) for p in all_of(ha, "PodDisruptionBudget")} == {"gateway", "bridge"}
    assert one(ha, "Deployment", "bridge")["spec"]["replicas"] >= 3
    spread = one(ha, "Deployment", "gateway")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread[0]["whenUnsatisfiable"] == "DoNotSchedule" and spread[0]["matchLabelKeys"] == ["pod-template-hash"]
    pdb = one(render("--set", "gateway.podDisruptionBudget.minAvailable=50%"), "PodDisruptionBudget", "gateway")
    assert pdb["spec"] == {"minAvailable": "50%", "selector": pdb["spec"]["selector"]}, pdb["spec"]


@test
def service_monitor_is_opt_in_and_scrapes_admin_ports():
    assert not all_of(rendered("default"), "ServiceMonitor")
    sm = one(rendered("ha"), "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "admin" and sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    ha = rendered("ha")
    # The Services the ServiceMonitor scrapes, as prometheus-operator picks
    # them: namespace, label selector, then a port of the endpoint's name.
    sel, port = sm["spec"]["selector"], sm["spec"]["endpoints"][0]["port"]
    def selected(svc: dict) -> bool:
        labels = svc["metadata"].get("labels", {})
        return svc["metadata"].get("namespace") in sm["spec"]["namespaceSelector"]["matchNames"] \
            and all(labels.get(k) == v for k, v in sel.get("matchLabels", {}).items()) \
            and all(e["operator"] == "In" and labels.get(e["key"]) in e["values"] for e in sel.get("matchExpressions", [])) \
            and any(p["name"] == port for p in svc["spec"]["ports"])
    scraped = sorted(s["metadata"]["name"] for s in all_of(ha, "Service") if selected(s))
    assert scraped == [f"{RELEASE}-bridge-admin", f"{RELEASE}-gateway-admin"], f"the ServiceMonitor scrapes {scraped}"
    # Endpoints drop a not-ready or terminating pod unless the Service
    # publishes not-ready addresses: without it, a drain (readyz 503 from
    # SIGTERM on) is never scraped (scripts/observability-check shows it is).
    for service in all_of(ha, "Service"):
        name = service["metadata"]["name"]
        publishes = service["spec"].get("publishNotReadyAddresses", False)
        if name in scraped:
            assert publishes is True, f"{name}: scraped by the ServiceMonitor without publishNotReadyAddresses: true"
        else:
            assert not publishes, f"{name}: serves users, must not list not-ready pods"


def datasource_refs(node):
    """Every `datasource` reference in a dashboard, as found."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                yield v
            yield from datasource_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from datasource_refs(v)


def panel_exprs(panels: list) -> list[str]:
    out = []
    for p in panels:
        out += [t["expr"] for t in p.get("targets", []) if t.get("expr")]
        out += panel_exprs(p.get("panels", []))
    return out


@test
def dashboards_ship_as_a_sidecar_config_map():
    """The dashboards' contract with the chart: what the Grafana sidecar and any Prometheus need."""
    cm = [c for c in all_of(rendered("ha"), "ConfigMap") if c["metadata"]["name"].endswith("-dashboards")][0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Warren"}
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    assert sorted(cm["data"]) == files and {"warren-overview.json", "warren-bridge.json"} <= set(files), (sorted(cm["data"]), files)
    uids = set()
    for name, text in cm["data"].items():
        d = json.loads(text)
        assert d["uid"] and d["uid"] not in uids, f"{name}: a fixed, unique uid"
        uids.add(d["uid"])
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        assert {"namespace", "pod"} <= set(variables), f"{name}: namespace and pod variables"
        for ref in datasource_refs(d):
            uid = ref.get("uid") if isinstance(ref, dict) else ref
            builtin = isinstance(ref, dict) and ref.get("type") in ("grafana", "datasource")
            assert builtin or uid in ("${datasource}", "$datasource"), f"{name}: hard-coded datasource {ref}"
        exprs = panel_exprs(d["panels"])
        assert exprs and all("$namespace" in e for e in exprs), f"{name}: every query is scoped to $namespace"
        assert any("$pod" in e for e in exprs), f"{name}: the pod variable is used"
        for e in exprs:
            for window in re.findall(r"\b(?:rate|irate|increase|deriv)\([^\[]*\[([^\]]+)\]", e):
                assert window == "$__rate_interval", f"{name}: {e}"
    metrics = " ".join(cm["data"].values())
    assert "warren_gateway_sockets_open" in metrics and "warren_bridge_gateway_streams_open" in metrics
    objs = render("--set", "metrics.grafanaDashboard.enabled=true,metrics.grafanaDashboard.labelKey=dash,"
                  "metrics.grafanaDashboard.labelValue=yes,metrics.grafanaDashboard.namespace=grafana")
    cm = [c for c in all_of(objs, "ConfigMap") if c["metadata"]["name"].endswith("-dashboards")][0]
    assert cm["metadata"]["labels"]["dash"] == "yes" and cm["metadata"]["namespace"] == "grafana"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]


@test
def every_value_is_documented_and_in_the_schema():
    keys = values_keys()
    _, missing = documented_tree(keys)
    assert not missing, "\n".join(missing)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(value, node, path):
        node = resolve(schema, node)
        if isinstance(value, dict) and node.get("additionalProperties") is False:
            props = node.get("properties", {})
            extra = set(value) - set(props)
            assert not extra, f"values.yaml keys missing from values.schema.json: {[f'{path}{k}' for k in sorted(extra)]}"
            unused = set(props) - set(value) if value else set()  # an empty map ({}) leaves its keys optional
            assert not unused, f"values.schema.json keys missing from values.yaml: {[f'{path}{k}' for k in sorted(unused)]}"
            for k, v in value.items():
                walk(v, props[k], f"{path}{k}.")
    walk(values, schema, "")
    assert schema_with_descriptions(schema) == schema, "values.schema.json descriptions are stale: run scripts/k8s_invariants.py --write"
    readme = (CHART / "README.md").read_text()
    assert readme_with_table(readme) == readme, "the values table in charts/warren/README.md is stale: run scripts/k8s_invariants.py --write"


@test
def k8s_manifests_match_the_chart():
    generated = generate_k8s()
    for path, content in generated.items():
        assert path.exists() and path.read_text() == content, f"{path.relative_to(ROOT)} is stale: run scripts/k8s_invariants.py --write"
    stale = {p for p in K8S.rglob("*.yaml")} - set(generated)
    assert not stale, f"files in k8s/ the chart no longer renders: {sorted(str(p) for p in stale)}"
    base_args = [a for s in BASE_SETS for a in ("--set", s)]
    for name, chart_args in (("kustomize-base", base_args), ("kustomize-dev", ["-f", str(DEV_VALUES)])):
        a, b = normalized(rendered(name)), normalized(render(*chart_args))
        assert a == b, f"{name} differs from the chart:\n{diff(a, b)}"


# === scripts/k8s-scale-test ===


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


def main() -> int:
    global HELM, KUBECTL, RENDERS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--helm", default="helm")
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--renders", type=Path)
    ap.add_argument("--write", action="store_true", help="regenerate the README table, schema descriptions and k8s/")
    ap.add_argument("-k", dest="only", help="run only tests whose name contains this")
    args = ap.parse_args()
    HELM, KUBECTL, RENDERS = args.helm, args.kubectl, args.renders

    if args.write:
        schema_path = CHART / "values.schema.json"
        schema = schema_with_descriptions(json.loads(schema_path.read_text()))
        schema_path.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        readme = CHART / "README.md"
        readme.write_text(readme_with_table(readme.read_text()))
        for stale in K8S.rglob("*.yaml"):
            stale.unlink()
        for path, content in generate_k8s().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        print("wrote charts/warren/README.md, charts/warren/values.schema.json and k8s/")
        return 0

    assert RENDERS, "--renders DIR is required to run the tests"
    passed = failed = 0
    for fn in TESTS:
        if args.only and args.only not in fn.__name__:
            continue
        started = time.monotonic()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            failed += 1
            detail = str(e) if isinstance(e, AssertionError) else traceback.format_exc()
            print(f"FAIL {fn.__name__}: {detail}")
        else:
            passed += 1
            print(f"ok   {fn.__name__} ({time.monotonic() - started:.1f}s)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
