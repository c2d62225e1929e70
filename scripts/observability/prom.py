"""The Prometheus HTTP API, and a private Prometheus process."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def api(prom: str, path: str, **params) -> dict:
    """GET `path` with `params`; a 400/422 answer's body says why, so it is returned too."""
    url = f"{prom}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def scalar(prom: str, query: str) -> float:
    """The first series' value of an instant query, 0 without one."""
    result = api(prom, "/api/v1/query", query=query).get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else 0.0


def wait_until(what: str, ready, limit: float, every: float = 0.25) -> None:
    """Polls `ready()` until it is true; raises naming `what` after `limit` seconds."""
    deadline = time.time() + limit
    while not ready():
        if time.time() > deadline:
            raise RuntimeError(f"{what} (waited {limit:.0f} s)")
        time.sleep(every)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return 200 <= r.status < 300
    except (OSError, urllib.error.URLError):
        return False


def config(work: Path, rules: Path, endpoints: Path, namespace: str, bridges: list[dict]) -> str:
    """prometheus.yml: scrape every second; gateways found through a targets file (as the chart's
    ServiceMonitor finds them through the gateway-admin Service's Endpoints), bridges statically;
    the labels Kubernetes scraping adds (namespace, pod)."""
    static = "\n".join(
        f'      - targets: ["{b["admin"]}"]\n        labels: {{namespace: "{namespace}", pod: {b["name"]}}}'
        for b in bridges)
    return f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: warren-gateway-admin # as the chart's ServiceMonitor names it
    file_sd_configs:
      - files: ["{endpoints}"]
  - job_name: warren-bridge
    static_configs:
{static}
"""
