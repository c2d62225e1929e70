"""The alerting rules (charts/warren/alerts/warren-rules.yaml): the copies
promtool and the run need, every alert expression evaluated on a real
Prometheus, and alert states."""
from __future__ import annotations

import re
import sys

from . import CheckFailed
from .prom import api


def without_annotations(text: str) -> str:
    """The rules without their annotations: promtool's unit tests compare annotations whole,
    and the tests check only which alerts fire, with which labels."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        if re.match(r"^        annotations:", line):
            skipping = True
            continue
        if skipping and re.match(r"^ {0,8}[^ ]", line):
            skipping = False
        if not skipping:
            out.append(line)
    return "".join(out)


def with_for_zero(text: str) -> str:
    """The rules with every `for:` set to 0s, so that an alert fires within seconds of its
    condition in the run (the shipped rules keep their real durations)."""
    rewritten, count = re.subn(r"(?m)^([ \t]*)for:[ \t].*$", r"\1for: 0s", text)
    if not count:
        raise CheckFailed("rules copy", ["no `for:` found to rewrite"])
    return rewritten


def alert_names(text: str) -> list[str]:
    """The names of the alerts in a rules file."""
    return re.findall(r"(?m)^\s*- alert: (\S+)", text)


def rule_exprs(path: str) -> list[dict]:
    """Each alert's name and expression. The file is YAML, but every expr is a `|` block or a
    one-liner: read without a YAML library (the check runs on the machine's bare python3)."""
    rules, cur, block = [], None, None
    with open(path) as f:
        lines = f.readlines()
    for line in lines:
        m = re.match(r"\s*- alert: (\S+)", line)
        if m:
            cur = {"alert": m.group(1), "expr": ""}
            rules.append(cur)
            block = None
            continue
        m = re.match(r"(\s*)expr: ?(.*)$", line)
        if m and cur is not None:
            if m.group(2).strip() == "|":
                block = len(m.group(1))
            else:
                cur["expr"] = m.group(2).strip()
            continue
        if block is not None:
            indent = len(line) - len(line.lstrip())
            if line.strip() and indent <= block:
                block = None
            else:
                cur["expr"] += line
    return rules

def evaluate(prom: str, path: str) -> int:
    """Every alert expression evaluates; every loaded rule is healthy. Answers how many."""
    failures = []
    rules = rule_exprs(path)
    for rule in rules:
        r = api(prom, "/api/v1/query", query=rule["expr"])
        n = len(r.get("data", {}).get("result", [])) if r.get("status") == "success" else None
        print(f"  {rule['alert']}: " + (f"evaluates ({n} series now)" if n is not None else r.get("error")),
              file=sys.stderr)
        if n is None:
            failures.append(f"{rule['alert']}: {r.get('error')}")
    loaded = [x for g in api(prom, "/api/v1/rules")["data"]["groups"] for x in g["rules"]]
    for x in loaded:
        if x.get("health") == "err":
            failures.append(f"{x['name']}: rule unhealthy: {x.get('lastError')}")
    if {x["name"] for x in loaded} != {r["alert"] for r in rules}:
        failures.append(f"Prometheus loaded {sorted(x['name'] for x in loaded)}, file has {[r['alert'] for r in rules]}")
    if failures:
        raise CheckFailed("alert check", failures)
    return len(rules)


def state(prom: str, name: str) -> str:
    """firing, pending or inactive."""
    states = [a["state"] for a in api(prom, "/api/v1/alerts")["data"]["alerts"] if a["labels"]["alertname"] == name]
    return "firing" if "firing" in states else (states[0] if states else "inactive")


def active(prom: str) -> str:
    """The active alerts and their states, for the log."""
    return " ".join(sorted(f"{a['labels']['alertname']}({a['state']})"
                           for a in api(prom, "/api/v1/alerts")["data"]["alerts"])) or "none"
