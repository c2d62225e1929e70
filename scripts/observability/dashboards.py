"""The dashboards (charts/warren/dashboards/*.json): their structure, checked
without Prometheus, and every panel's query evaluated on a real one."""
from __future__ import annotations

import json
import re
import sys

from . import CheckFailed
from .prom import api


def panels(dash: dict):
    """Every panel, those inside collapsed rows too."""
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def static(paths: list[str]) -> int:
    """Structure checks that need no Prometheus; the number of panels."""
    errors, count = [], 0
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        structure(d, path, errors)
        count += sum(1 for p in panels(d) if p.get("type") != "row")
    if errors:
        raise CheckFailed("dashboard check", errors)
    return count


def structure(d: dict, path: str, errors: list[str]) -> None:
    """What every dashboard must have: its file's uid, a datasource variable used everywhere,
    namespace and pod variables, rows, descriptions and `$__rate_interval` ranges."""
    uid = path.rsplit("/", 1)[-1].removesuffix(".json")
    where = lambda msg: errors.append(f"{path}: {msg}")
    if d.get("uid") != uid:
        where(f"uid is {d.get('uid')!r}, expected {uid!r}")
    if not 36 <= d.get("schemaVersion", 0) <= 41:
        where("schemaVersion should be about 39")
    tvars = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = tvars.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        where("no datasource variable of type datasource querying prometheus")
    for name in ("namespace", "pod"):
        if tvars.get(name, {}).get("type") != "query":
            where(f"no {name} query variable")
    def walk(node, trail):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "datasource" and isinstance(v, dict) and v.get("type") != "grafana" \
                        and v.get("uid") != "${datasource}":
                    where(f"{trail}: datasource {v} is not ${{datasource}}")
                if k == "datasource" and isinstance(v, str) and v != "${datasource}":
                    where(f"{trail}: datasource {v!r} is not ${{datasource}}")
                walk(v, f"{trail}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{trail}[{i}]")
    walk(d, d.get("uid", path))
    ps = list(panels(d))
    if not ps or ps[0].get("type") != "row":
        where("the first panel must be a row (one row per subsystem)")
    for p in ps:
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            where(f"panel {p.get('title')!r} has no targets")
        if not p.get("description"):
            where(f"panel {p.get('title')!r} has no description")
        for t in targets:
            for rng in re.findall(r"\[([^\]]*)\]", t.get("expr", "")):
                if rng != "$__rate_interval":
                    where(f"panel {p.get('title')!r}: range [{rng}] is not [$__rate_interval]")


def substitute(expr: str, subst: dict[str, str]) -> str:
    """Grafana's variables replaced; a variable left over is an error."""
    for k, v in subst.items():
        expr = expr.replace("${" + k + "}", v).replace("$" + k, v)
    if "$" in expr:
        raise ValueError(f"unknown variable left in {expr!r}")
    return expr

# Panels that must show the drain itself, not just any number: (dashboard,
# panel, refId) -> the least value of their largest series. For a target with
# `or on() vector(0)` the expression without that fallback must reach it.
DRAIN_SHOWS = {
    ("warren-overview", "Draining gateways", "A"): 1,
    ("warren-overview", "Draining", "A"): 1,
    ("warren-overview", "Resumes per pod", "A"): 1e-9,
    ("warren-overview", "Resumes and replayed messages", "A"): 1e-9,
}
FALLBACK = " or on() vector(0)"

def numbers_of(r: dict) -> list[dict]:
    """The series of a query answer whose value is a number."""
    return [s for s in r["data"]["result"] if s["value"][1] not in ("NaN", "+Inf", "-Inf")]

def evaluate(prom: str, at: float, rate_interval: str, namespace: str, paths: list[str]) -> tuple[int, int]:
    """Every panel target at one instant: parses, and returns a number; the drain panels show
    the drain. Prints each result; answers (panels, queries)."""
    subst = {"__rate_interval": rate_interval, "namespace": namespace, "pod": ".*"}
    failures, npanels, ntargets = [], 0, 0
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        for v in d["templating"]["list"]:
            if v["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]["query"])
            sel, label = substitute(m.group(1), subst), m.group(2)
            r = api(prom, f"/api/v1/label/{label}/values", **{"match[]": sel, "start": at - 300, "end": at})
            values = r.get("data") or []
            print(f"  {d['uid']} variable ${v['name']}: {values}", file=sys.stderr)
            if r.get("status") != "success" or not values:
                failures.append(f"{d['uid']} variable ${v['name']}: no values ({r.get('error', 'empty')})")
        for p in panels(d):
            if p.get("type") == "row":
                continue
            npanels += 1
            for t in p["targets"]:
                ntargets += 1
                name = f"{d['uid']} / {p['title']} [{t['refId']}]"
                expr = substitute(t["expr"], subst)
                r = api(prom, "/api/v1/query", query=expr, time=at)
                if r.get("status") != "success":
                    failures.append(f"{name}: {r.get('errorType')}: {r.get('error')}")
                    continue
                series = r["data"]["result"]
                numbers = numbers_of(r)
                shown = ", ".join(
                    f"{','.join(f'{k}={v}' for k, v in s['metric'].items()) or '{}'}={float(s['value'][1]):.4g}"
                    for s in numbers[:4])
                note = ""
                if expr.endswith(FALLBACK):  # say whether the real series were there
                    bare = numbers_of(api(prom, "/api/v1/query", query=expr[: -len(FALLBACK)], time=at))
                    note = " (real series)" if bare else " (no event yet: the vector(0) fallback)"
                    if bare:
                        numbers = bare
                print(f"  ok {name}: {shown}{note}" if numbers else f"  EMPTY {name}", file=sys.stderr)
                if not numbers:
                    failures.append(f"{name}: {'no series' if not series else 'only NaN'} for {expr}")
                least = DRAIN_SHOWS.get((d["uid"], p["title"], t["refId"]))
                if least is not None and max((float(s["value"][1]) for s in numbers), default=0) < least \
                        or least is not None and note.startswith(" (no event"):
                    failures.append(f"{name}: does not show the drain (expected a series >= {least})")
    if failures:
        raise CheckFailed("panel check", failures)
    return npanels, ntargets
