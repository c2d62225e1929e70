"""The chart's invariants: drain numbers, probes, affinity, network policies,
secrets, rollouts, monitoring, dashboards, the values' documentation and the
k8s/ manifests matching the chart. Each `@test` runs in order."""

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

from . import toolkit
from .toolkit import *  # noqa: F403
from .values_doc import *  # noqa: F403
from .manifests import *  # noqa: F403


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
    lint = run(toolkit.HELM, "lint", "--strict", str(CHART), "-f", bad, check=False)
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
def redis_is_a_node_sentinels_or_a_cluster():
    """redis.sentinel and redis.cluster become the gateway's variables, one or the other, never both."""
    def redis_env(*args):
        c = container(one(render(*args), "Deployment", "gateway"))
        return {e["name"]: e.get("value") for e in c["env"] if e["name"].startswith(("GATEWAY_REDIS_S", "GATEWAY_REDIS_C"))}
    assert redis_env() == {}, "one node by default"
    assert redis_env("--set", "redis.sentinel.hosts={s0:26379,s1:26379}") == {
        "GATEWAY_REDIS_SENTINELS": "s0:26379,s1:26379", "GATEWAY_REDIS_SENTINEL_MASTER": "mymaster"}
    assert redis_env("--set", "redis.cluster.nodes={c0:6379,c1:6379,c2:6379}") == {
        "GATEWAY_REDIS_CLUSTER_NODES": "c0:6379,c1:6379,c2:6379"}
    fails("--set", "redis.cluster.nodes={c0:6379},redis.sentinel.hosts={s0:26379}", expect="exclude each other")
    fails("--set", "redis.cluster.nodes={no-port}", expect="/redis/cluster/nodes/0")


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
        proc = run(toolkit.HELM, "template", RELEASE, str(chart), "--kube-version", "1.32.0",
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
