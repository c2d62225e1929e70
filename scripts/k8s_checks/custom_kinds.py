"""custom_kinds.py RENDER OUT: the documents of the render RENDER that are not of
a built-in API group (the custom kinds kubernetes-validate has no schema for),
as a JSON list in OUT, for custom_kinds.mjs. Run with .tools/venv/bin/python:
it needs PyYAML."""

import json
import sys

import yaml

BUILTIN = ("v1", "apps/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1")

if __name__ == "__main__":
    render, out = sys.argv[1:]
    with open(render) as f:
        docs = [d for d in yaml.safe_load_all(f) if d and d["apiVersion"] not in BUILTIN]
    with open(out, "w") as f:
        json.dump(docs, f)
