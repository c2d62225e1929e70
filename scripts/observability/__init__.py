"""The observability check (scripts/observability-check): Warren's Grafana
dashboards and alerting rules proven against a real Prometheus scraping a
real stack. One module per job:

- prom: the Prometheus HTTP API, and Prometheus itself as a process.
- dashboards: the dashboards' structure, and every panel evaluated.
- alerts: the rules files (copies for promtool and for the run), every alert
  expression evaluated, alert states.
- drain: a gateway's drain as Prometheus stored it.
- run: the whole check, in order (the stack from warren-dev).

Their unit tests are test_*.py beside them (python3 -m unittest discover).
"""


class CheckFailed(Exception):
    """A check found problems: one line each."""

    def __init__(self, what: str, problems: list[str]):
        super().__init__(f"{what}:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems
