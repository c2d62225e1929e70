"""The values.yaml comment parser: the values table in charts/warren/README.md
and the descriptions in values.schema.json come from the `# --` comments."""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import os
import re
import subprocess
import shutil
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

import yaml

from .toolkit import *  # noqa: F403

def values_file(content: str) -> str:
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    f.write(textwrap.dedent(content))
    f.close()
    return f.name


# === values.yaml `# --` comments ===


class Key:
    """One key of values.yaml: its dotted path, `# --` text and default."""

    def __init__(self, path: str, doc: str | None, line: int):
        self.path, self.doc, self.line = path, doc, line
        self.children: list[Key] = []


def parse_values_doc(text: str) -> list[Key]:
    """Keys in file order with their `# --` docs; keys inside list items are skipped."""
    keys: list[Key] = []
    stack: list[tuple[int, str]] = []  # (indent, path) of open mapping keys
    list_indent: int | None = None  # inside a list item deeper than this: skip
    comment: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if not stripped:
            comment = []
            continue
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        if list_indent is not None and indent > list_indent:
            comment = []
            continue
        list_indent = None
        if stripped.startswith("- "):
            list_indent = indent - 1
            comment = []
            continue
        m = re.match(r"([A-Za-z0-9_]+):(\s.*|$)", stripped)
        if not m:
            comment = []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([p for _, p in stack] + [m.group(1)])
        doc = None
        for i, c in enumerate(comment):
            if c.startswith("# --"):
                doc = " ".join([c[4:].strip()] + [x.lstrip("#").strip() for x in comment[i + 1:]]).strip()
                break
        keys.append(Key(path, doc, n))
        stack.append((indent, m.group(1)))
        if m.group(2).strip() == "":
            # A block value follows: a list of items when the next lines start with "-".
            list_indent = None
        comment = []
    by_path = {k.path: k for k in keys}
    for k in keys:
        parent = k.path.rpartition(".")[0]
        if parent in by_path:
            by_path[parent].children.append(k)
    return keys


def values_keys() -> list[Key]:
    return parse_values_doc((CHART / "values.yaml").read_text())


def documented_tree(keys: list[Key]) -> tuple[list[Key], list[str]]:
    """The keys that are documented values (leaves of the doc tree), and the undocumented keys.

    A documented key whose children carry no `# --` is one value (a Kubernetes
    object such as resources or a probe); once one child is documented, all must be.
    """
    by_path = {k.path: k for k in keys}
    rows, missing = [], []
    for k in keys:
        parent = by_path.get(k.path.rpartition(".")[0])
        opaque_parent = parent is not None and not any(c.doc for c in parent.children)
        if parent is not None and (opaque_parent or is_inside_opaque(parent, by_path)):
            continue
        if not k.doc:
            missing.append(f"values.yaml:{k.line}: {k.path} has no `# --` comment")
            continue
        rows.append(k)
    return rows, missing


def is_inside_opaque(key: Key, by_path: dict[str, Key]) -> bool:
    while True:
        parent = by_path.get(key.path.rpartition(".")[0])
        if parent is None:
            return False
        if not any(c.doc for c in parent.children):
            return True
        key = parent


def lookup(values: dict, path: str):
    node = values
    for part in path.split("."):
        node = node[part]
    return node


def schema_node(schema: dict, path: str) -> dict | None:
    node = schema
    for part in path.split("."):
        node = resolve(schema, node)
        props = node.get("properties", {})
        if part not in props:
            return None
        node = props[part]
    return node


def resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def schema_type(schema: dict, node: dict) -> str:
    node = resolve(schema, node)
    if "enum" in node:
        return "string"
    if "oneOf" in node:
        return " or ".join(schema_type(schema, n) for n in node["oneOf"])
    t = node.get("type", "any")
    t = " or ".join(t) if isinstance(t, list) else t
    return {"array": "list", "object": "object", "null": "null"}.get(t, t)


def values_table() -> str:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    rows, _ = documented_tree(values_keys())
    out = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for k in rows:
        node = schema_node(schema, k.path) or {}
        value = lookup(values, k.path)
        with_children = any(c.doc for c in k.children)
        default = "" if with_children else f"`{json.dumps(value, separators=(',', ':'))}`"
        doc = k.doc.replace("|", "\\|")
        out.append(f"| `{k.path}` | {schema_type(schema, node) if node else '?'} | {default} | {doc} |")
    return "\n".join(out) + "\n"


TABLE_BEGIN = "<!-- values-table:begin (generated by scripts/k8s_invariants.py --write) -->\n"
TABLE_END = "<!-- values-table:end -->\n"


def readme_with_table(readme: str) -> str:
    head, _, rest = readme.partition(TABLE_BEGIN)
    _, _, tail = rest.partition(TABLE_END)
    assert rest, "charts/warren/README.md has no values-table markers"
    return head + TABLE_BEGIN + values_table() + TABLE_END + tail


def schema_with_descriptions(schema: dict) -> dict:
    """The schema with each key's `# --` text as its description.

    Keys under a shared definition ($ref) keep the definition's own text: the
    definition serves more than one key.
    """
    schema = copy.deepcopy(schema)
    for k in values_keys():
        if not k.doc:
            continue
        node = schema
        parts = k.path.split(".")
        for part in parts[:-1]:
            node = node.get("properties", {}).get(part, {})
        if "$ref" in node:
            continue
        prop = node.get("properties", {}).get(parts[-1])
        if prop is not None:
            prop["description"] = k.doc
    return schema


# === k8s/ generated from the chart ===
