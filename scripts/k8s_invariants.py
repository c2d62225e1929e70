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

Layout, one module a job in scripts/k8s_checks/: `toolkit` (paths, helm and
YAML helpers, the test registry), `values_doc` (the values.yaml comment
parser), `manifests` (the k8s/ generator), and the checks beside them,
`test_chart` and `test_scale_test` (one function per `@test`, run in
order); the last line is "N passed, N failed".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from k8s_checks import test_chart, test_scale_test, toolkit  # noqa: F401 - the tests register themselves
from k8s_checks.manifests import generate_k8s
from k8s_checks.toolkit import CHART, K8S
from k8s_checks.values_doc import readme_with_table, schema_with_descriptions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--helm", default="helm")
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--renders", type=Path)
    ap.add_argument("--write", action="store_true", help="regenerate the README table, schema descriptions and k8s/")
    ap.add_argument("-k", dest="only", help="run only tests whose name contains this")
    args = ap.parse_args()
    toolkit.HELM, toolkit.KUBECTL, toolkit.RENDERS = args.helm, args.kubectl, args.renders

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

    assert toolkit.RENDERS, "--renders DIR is required to run the tests"
    passed = failed = 0
    for fn in toolkit.TESTS:
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
