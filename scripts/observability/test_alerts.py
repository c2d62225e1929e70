"""alerts: the rules copies and the expression reader."""
import tempfile
import unittest

from . import CheckFailed, alerts
from .run import RULES

RULES_TEXT = """groups:
  - name: warren
    rules:
      - alert: First
        expr: up == 0
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: down
          description: |
            long text
      - alert: Second
        expr: |
          sum(rate(x_total[5m]))
            > 1
        for: 10m
        annotations:
          summary: busy
"""


class Copies(unittest.TestCase):
    def test_annotations_go_and_the_rest_stays(self):
        bare = alerts.without_annotations(RULES_TEXT)
        self.assertNotIn("annotations", bare)
        self.assertNotIn("long text", bare)
        self.assertIn("severity: critical", bare)
        self.assertEqual(alerts.alert_names(bare), ["First", "Second"])

    def test_every_for_becomes_zero(self):
        rewritten = alerts.with_for_zero(RULES_TEXT)
        self.assertEqual(rewritten.count("for: 0s"), 2)
        self.assertNotIn("for: 5m", rewritten)
        with self.assertRaises(CheckFailed):
            alerts.with_for_zero("groups: []\n")


class Expressions(unittest.TestCase):
    def test_one_liners_and_blocks_are_read(self):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(RULES_TEXT)
            f.flush()
            rules = alerts.rule_exprs(f.name)
        self.assertEqual([r["alert"] for r in rules], ["First", "Second"])
        self.assertEqual(rules[0]["expr"], "up == 0")
        self.assertEqual(" ".join(rules[1]["expr"].split()), "sum(rate(x_total[5m])) > 1")

    def test_the_shipped_rules_each_have_an_expression(self):
        rules = alerts.rule_exprs(str(RULES))
        self.assertEqual([r["alert"] for r in rules], alerts.alert_names(RULES.read_text()))
        self.assertTrue(all(r["expr"].strip() for r in rules))


if __name__ == "__main__":
    unittest.main()
