#!/usr/bin/env python3
"""The checks scripts/observability-check runs with Python: the dashboards'
structure (no Prometheus needed), every panel's and rule's PromQL evaluated
on a real Prometheus, the alerts' states, and the drain as Prometheus saw it.

Usage: observability_check.py static|evaluate|alerts|drain|alert-state|active ARGS
(see the dispatch at the bottom; scripts/observability-check is the caller).
"""
import datetime, json, re, sys, time, urllib.parse, urllib.request

def api(prom, path, **params):
    url = f"{prom}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 400/422: bad expression; body says why
        return json.load(e)

def panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])

def static(paths):
    """Structure checks that need no Prometheus; prints the number of panels."""
    errors, count = [], 0
    for path in paths:
        d = json.load(open(path))
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
            count += 1
            targets = p.get("targets") or []
            if not targets:
                where(f"panel {p.get('title')!r} has no targets")
            if not p.get("description"):
                where(f"panel {p.get('title')!r} has no description")
            for t in targets:
                for rng in re.findall(r"\[([^\]]*)\]", t.get("expr", "")):
                    if rng != "$__rate_interval":
                        where(f"panel {p.get('title')!r}: range [{rng}] is not [$__rate_interval]")
    for e in errors:
        print(f"dashboard check: {e}", file=sys.stderr)
    if errors:
        sys.exit(1)
    print(count)

def substitute(expr, subst):
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

def numbers_of(r):
    return [s for s in r["data"]["result"] if s["value"][1] not in ("NaN", "+Inf", "-Inf")]

def evaluate(prom, at, rate_interval, namespace, paths):
    """Every panel target at one instant: parses, and returns a number."""
    subst = {"__rate_interval": rate_interval, "namespace": namespace, "pod": ".*"}
    failures, npanels, ntargets = [], 0, 0
    for path in paths:
        d = json.load(open(path))
        for v in d["templating"]["list"]:
            if v["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]["query"])
            sel, label = substitute(m.group(1), subst), m.group(2)
            r = api(prom, f"/api/v1/label/{label}/values", **{"match[]": sel, "start": at - 300, "end": at})
            values = r.get("data") or []
            print(f"  {d['uid']} variable ${v['name']}: {values}")
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
                print(f"  ok {name}: {shown}{note}" if numbers else f"  EMPTY {name}")
                if not numbers:
                    failures.append(f"{name}: {'no series' if not series else 'only NaN'} for {expr}")
                least = DRAIN_SHOWS.get((d["uid"], p["title"], t["refId"]))
                if least is not None and max((float(s["value"][1]) for s in numbers), default=0) < least \
                        or least is not None and note.startswith(" (no event"):
                    failures.append(f"{name}: does not show the drain (expected a series >= {least})")
    for f in failures:
        print(f"panel check: {f}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print(f"{npanels} {ntargets}")

def rule_exprs(path):
    # The rules file is YAML, but every expr is a `|` block or a one-liner:
    # read them without a YAML library.
    rules, cur, block = [], None, None
    for line in open(path):
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

def alerts(prom, path):
    """Every alert expression evaluates; every loaded rule is healthy."""
    failures = []
    rules = rule_exprs(path)
    for rule in rules:
        r = api(prom, "/api/v1/query", query=rule["expr"])
        n = len(r.get("data", {}).get("result", [])) if r.get("status") == "success" else None
        print(f"  {rule['alert']}: " + (f"evaluates ({n} series now)" if n is not None else r.get("error")))
        if n is None:
            failures.append(f"{rule['alert']}: {r.get('error')}")
    loaded = [x for g in api(prom, "/api/v1/rules")["data"]["groups"] for x in g["rules"]]
    for x in loaded:
        if x.get("health") == "err":
            failures.append(f"{x['name']}: rule unhealthy: {x.get('lastError')}")
    if {x["name"] for x in loaded} != {r["alert"] for r in rules}:
        failures.append(f"Prometheus loaded {sorted(x['name'] for x in loaded)}, file has {[r['alert'] for r in rules]}")
    for f in failures:
        print(f"alert check: {f}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print(len(rules))

def drain(prom, job, namespace, pod, term_at, exit_at, gw_log):
    """The drain of `pod`, as Prometheus stored it: scraped until its exit."""
    term_at, exit_at = float(term_at), float(exit_at)
    deadline = time.time() + 15  # discovery drops the exited target (updates go out every 5 s)
    targets = lambda: api(prom, "/api/v1/targets", state="active")["data"]["activeTargets"]
    while any(t["labels"].get("pod") == pod for t in targets()):
        if time.time() > deadline:
            sys.exit(f"drain check: {pod} is still a scrape target 15 s after its targets file entry was removed")
        time.sleep(0.25)
    dropped = time.time() - exit_at
    sel, span = f'namespace="{namespace}", pod="{pod}"', f"{int(time.time() - term_at) + 30}s"
    def raw(metric, sel=sel):  # every stored sample of every series: [(labels, [(t, v)])]
        r = api(prom, "/api/v1/query", query=f"{metric}{{{sel}}}[{span}]")
        return [(s["metric"], [(float(t), float(v)) for t, v in s["values"]]) for s in r["data"]["result"]]
    def before(values):  # the last sample before the SIGTERM
        return ([(t, v) for t, v in values if t <= term_at] or values[:1])[-1]
    up, draining = (next(iter(raw(m, f'{sel}, job="{job}"')), ({}, []))[1] for m in ("up", "warren_gateway_draining"))
    peak = api(prom, "/api/v1/query", query=f"max_over_time(warren_gateway_draining{{{sel}}}[{span}])", time=exit_at)
    peak = max((float(s["value"][1]) for s in peak["data"]["result"]), default=0)
    scrapes = sum(1 for t, v in draining if v == 1 and term_at <= t <= exit_at)
    last_up = max((t for t, v in up if v == 1), default=0)
    # Closes by code, scraped from the last scrape before the SIGTERM (t0) to
    # the last one (t1), against the gateway's own log of every close: all
    # the log has between them must be there (0.1 s either way is a tie).
    scraped, t0, t1 = {}, term_at, 0
    for labels, values in raw("warren_gateway_sockets_closed_total"):
        (t0, v0), (t1, v1) = before(values), values[-1]
        scraped[labels["code"]] = scraped.get(labels["code"], 0) + v1 - v0
    logged = []
    for line in open(gw_log):
        m = re.match(r"(\S+Z) .*socket closed .*code=(\d+)", line)
        if m and datetime.datetime.fromisoformat(m.group(1)).timestamp() > t0 - 0.1:
            logged.append((datetime.datetime.fromisoformat(m.group(1)).timestamp(), m.group(2)))
    count = lambda code, lo, hi: sum(1 for t, c in logged if c == code and lo < t <= hi)
    others = raw("warren_gateway_resumes_total", f'namespace="{namespace}", pod!="{pod}"')
    resumes = sum(v[-1][1] - before(v)[1] for _, v in others)
    failures = []
    if peak != 1 or scrapes < 2:
        failures.append(f"warren_gateway_draining{{pod={pod}}}: max_over_time {peak}, "
                        f"{scrapes} scrapes at 1 during the drain (want 1, >= 2)")
    if not 0 <= exit_at - last_up <= 2:
        failures.append(f"the last up == 1 sample of {pod} is {exit_at - last_up:.2f} s before "
                        "the process exited (want 0 to 2 s)")
    for code in sorted({c for _, c in logged} | set(scraped)):
        if not count(code, t0 + 0.1, t1 - 0.1) <= scraped.get(code, 0) <= count(code, t0 - 0.1, t1 + 0.1):
            failures.append(f"code {code}: {scraped.get(code, 0):.0f} closes scraped, "
                            f"{count(code, t0, t1)} in the log between the scrapes")
    if scraped.get("1000", 0) + scraped.get("1012", 0) <= 0 or resumes <= 0:
        failures.append(f"no drain close (1000 on the notice, 1012 forced) scraped on {pod}, "
                        f"or no resume on the others ({resumes})")
    late = sum(1 for t, _ in logged if t > t1 + 0.1)
    print(f"{pod} as scraped: draining == 1 in {scrapes} scrapes, last up == 1 {exit_at - last_up:.2f} s before exit "
          f"(target dropped {dropped:.1f} s after); drain closes 1000: {scraped.get('1000', 0):.0f}, "
          f"1012: {scraped.get('1012', 0):.0f} (as its log; {late} after the last scrape, {len(logged)} in all); "
          f"resumes on the others: {resumes:.0f}", file=sys.stderr if failures else sys.stdout)
    for f in failures:
        print(f"drain check: {f}", file=sys.stderr)
    if failures:
        sys.exit(1)

def alert_state(prom, name):
    states = [a["state"] for a in api(prom, "/api/v1/alerts")["data"]["alerts"] if a["labels"]["alertname"] == name]
    print("firing" if "firing" in states else (states[0] if states else "inactive"))

def active(prom):
    print(" ".join(sorted(f"{a['labels']['alertname']}({a['state']})"
                          for a in api(prom, "/api/v1/alerts")["data"]["alerts"])) or "none")

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "static": static(args)
elif cmd == "evaluate": evaluate(args[0], float(args[1]), args[2], args[3], args[4:])
elif cmd == "alerts": alerts(*args)
elif cmd == "drain": drain(*args)
elif cmd == "alert-state": alert_state(*args)
elif cmd == "active": active(*args)
else: sys.exit(f"unknown command {cmd}")
