#!/usr/bin/env python3
"""Offline tests of charts/warren, k8s/ and scripts/k8s-scale-test.

    k8s_invariants.py --all [-k NAME]                      all of scripts/k8s-check (below)
    k8s_invariants.py --helm H --kubectl K --renders DIR   run the tests on DIR/*.yaml
    k8s_invariants.py --helm H --kubectl K --write         regenerate what is derived:
        the values table in charts/warren/README.md, the descriptions in
        values.schema.json (both from the `# --` comments in values.yaml) and
        the manifests in k8s/ (from the chart)

--all (what scripts/k8s-check runs, on the bare python3) installs the tools
into .tools/ unless they are there, lints the chart, renders it and the k8s/
kustomizations into .tools/renders, validates the renders, then runs the tests
on them with the venv's python (which has PyYAML) and the installed helm and
kubectl; its last line says OK, or FAILED and the step, and -k NAME goes to
the tests. The other modes need PyYAML and the helm and kubectl binaries.

Layout, one module a job in scripts/k8s_checks/: `tools` (installs the pinned
helm, kubectl, kubernetes-validate and CRD models), `renders` (lint, render,
validate; with `custom_kinds.py` and `custom_kinds.mjs` for the CRD-schema
validation), `toolkit` (paths, helm and YAML helpers, the test registry),
`values_doc` (the values.yaml comment parser), `manifests` (the k8s/
generator), and the checks beside them, `test_chart` and `test_scale_test`
(one function per `@test`, run in order); the tests' last line is "N passed,
N failed". `tools` and `renders` need only the standard library.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from k8s_checks import renders, tools  # the standard library only, as --all needs

STARTED = time.monotonic()


def check_all(only: str | None) -> int:
    """scripts/k8s-check: every step, logged; the last line says OK or where it FAILED."""
    def invariants():
        tools.log("scripts/k8s_invariants.py")
        sys.stdout.flush()
        tools.run(tools.VENV_PYTHON, Path(__file__).resolve(), "--helm", tools.HELM, "--kubectl", tools.KUBECTL,
                  "--renders", renders.RENDERS, *(["-k", only] if only else []))

    steps = [
        ("setup", lambda: tools.TOOLS.mkdir(parents=True, exist_ok=True)),
        ("install helm and kubectl", tools.install_helm_kubectl),
        ("install kubernetes-validate", tools.install_python_tools),
        ("install CRD models", lambda: (tools.install_crd_models(), tools.log(tools.versions()))),
        ("helm lint", renders.lint_all),
        ("helm template", renders.template_all),
        ("kubectl kustomize", renders.kustomize_all),
        ("kubernetes-validate", renders.validate_all),
        ("invariants", invariants),
    ]
    step = "setup"
    try:
        for step, run in steps:
            run()
    except tools.StepFailed as e:
        rc = e.rc
        if str(e):
            print(str(e), file=sys.stderr)
    except KeyboardInterrupt:
        rc = 130
    except Exception:  # noqa: BLE001 - a bug here fails the step it happened in
        traceback.print_exc()
        rc = 1
    else:
        print(f"k8s-check: OK (lint, {len(renders.NAMES)} renders validated, invariants) in {int(time.monotonic() - STARTED)}s")
        return 0
    print(f'k8s-check: FAILED in step "{step}" (exit {rc})', flush=True)
    return rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all", action="store_true", help="install the tools, lint, render and validate, run the tests")
    ap.add_argument("--helm", default="helm")
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--renders", type=Path)
    ap.add_argument("--write", action="store_true", help="regenerate the README table, schema descriptions and k8s/")
    ap.add_argument("-k", dest="only", help="run only tests whose name contains this")
    args = ap.parse_args()
    if args.all:
        if args.write or args.renders:
            ap.error("--all makes its own renders; it takes no --write or --renders")
        return check_all(args.only)

    # These need PyYAML: --all runs on the bare python3, the tests under the venv's.
    from k8s_checks import test_chart, test_scale_test, toolkit  # noqa: F401 - the tests register themselves
    from k8s_checks.manifests import generate_k8s
    from k8s_checks.toolkit import CHART, K8S
    from k8s_checks.values_doc import readme_with_table, schema_with_descriptions

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
