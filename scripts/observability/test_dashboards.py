"""dashboards: the structure rules and the variable substitution."""
import copy
import json
import os
import tempfile
import unittest

from . import CheckFailed, dashboards
from .run import DASHBOARDS

GOOD = {
    "uid": "demo",
    "schemaVersion": 39,
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus"},
        {"name": "namespace", "type": "query"},
        {"name": "pod", "type": "query"},
    ]},
    "panels": [
        {"type": "row", "title": "Sockets", "panels": []},
        {"type": "timeseries", "title": "Open", "description": "Sockets open now.",
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "targets": [{"refId": "A", "expr": "sum(rate(x_total[$__rate_interval]))"}]},
    ],
}


def problems(dashboard: dict, path: str = "dashboards/demo.json") -> list[str]:
    errors: list[str] = []
    dashboards.structure(dashboard, path, errors)
    return errors


class Structure(unittest.TestCase):
    def test_a_good_dashboard_passes(self):
        self.assertEqual(problems(GOOD), [])

    def test_each_rule_is_reported(self):
        cases = [
            (lambda d: d.update(uid="other"), "uid is 'other'"),
            (lambda d: d["panels"][1].update(datasource={"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}),
             "is not ${datasource}"),
            (lambda d: d["panels"][1]["targets"][0].update(expr="rate(x_total[5m])"), "range [5m]"),
            (lambda d: d["panels"].pop(0), "the first panel must be a row"),
            (lambda d: d["panels"][1].pop("description"), "has no description"),
            (lambda d: d["templating"]["list"].pop(2), "no pod query variable"),
        ]
        for spoil, expected in cases:
            dashboard = copy.deepcopy(GOOD)
            spoil(dashboard)
            found = problems(dashboard)
            self.assertTrue(any(expected in p for p in found), f"{expected!r} not in {found}")

    def test_the_shipped_dashboards_pass(self):
        self.assertGreater(dashboards.static(DASHBOARDS), 20)

    def test_static_raises_with_every_problem(self):
        with tempfile.TemporaryDirectory() as dir:
            path = os.path.join(dir, "other.json")
            with open(path, "w") as f:
                json.dump({**GOOD, "schemaVersion": 12}, f)
            with self.assertRaises(CheckFailed) as caught:
                dashboards.static([path])
        found = caught.exception.problems
        self.assertEqual(len(found), 2, found)  # the uid (not the file's name) and the schema version


class Substitute(unittest.TestCase):
    def test_both_spellings_are_replaced(self):
        subst = {"namespace": "ns", "__rate_interval": "15s"}
        self.assertEqual(dashboards.substitute('x{namespace="$namespace"}[${__rate_interval}]', subst),
                         'x{namespace="ns"}[15s]')

    def test_an_unknown_variable_is_an_error(self):
        with self.assertRaises(ValueError):
            dashboards.substitute("x{pod=~\"$pod\"}", {"namespace": "ns"})


if __name__ == "__main__":
    unittest.main()
