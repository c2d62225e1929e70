"""A gateway's drain as Prometheus stored it: scraped draining until its
process exited, its closes counted as its own log has them, and its users
resumed on the other gateways."""
from __future__ import annotations

import datetime
import re
import time

from . import CheckFailed
from .prom import api


def closes_logged(log_lines, since: float) -> list[tuple[float, str]]:
    """(time, close code) of every `socket closed` line of a gateway's log after `since`."""
    logged = []
    for line in log_lines:
        m = re.match(r"(\S+Z) .*socket closed .*code=(\d+)", line)
        if m:
            at = datetime.datetime.fromisoformat(m.group(1)).timestamp()
            if at > since:
                logged.append((at, m.group(2)))
    return logged


def check(prom: str, job: str, namespace: str, pod: str, term_at: float, exit_at: float, gw_log: str) -> str:
    """The drain of `pod`, as Prometheus stored it: scraped until its exit. Answers what was seen."""
    deadline = time.time() + 15  # discovery drops the exited target (updates go out every 5 s)
    targets = lambda: api(prom, "/api/v1/targets", state="active")["data"]["activeTargets"]
    while any(t["labels"].get("pod") == pod for t in targets()):
        if time.time() > deadline:
            raise CheckFailed("drain check", [f"{pod} is still a scrape target 15 s after its targets file entry was removed"])
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
    with open(gw_log) as f:
        logged = closes_logged(f, t0 - 0.1)
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
    seen = (f"{pod} as scraped: draining == 1 in {scrapes} scrapes, last up == 1 {exit_at - last_up:.2f} s before exit "
          f"(target dropped {dropped:.1f} s after); drain closes 1000: {scraped.get('1000', 0):.0f}, "
          f"1012: {scraped.get('1012', 0):.0f} (as its log; {late} after the last scrape, {len(logged)} in all); "
          f"resumes on the others: {resumes:.0f}")
    if failures:
        raise CheckFailed("drain check", [seen, *failures])
    return seen
