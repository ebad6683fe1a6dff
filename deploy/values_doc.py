#!/usr/bin/env python3
"""Writes the values reference of docs/deployment.md from the chart's
values.yaml: every key with a "# --" comment (helm-docs style) becomes a row
with its default and that comment. The table sits between the markers
<!-- values:begin --> and <!-- values:end -->.

Usage: values_doc.py VALUES.yaml DOC_IN.md DOC_OUT.md
"""

import json
import re
import sys

import yaml

BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"


def documented_values(lines):
    """(path, comment) of every "# --" key, in file order."""
    stack, block, out = [], [], []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            block = []
            continue
        if stripped.startswith("#"):
            block.append(stripped)
            continue
        comment = []
        started = False
        for c in block:
            if c.startswith("# --"):
                started = True
                comment.append(c[4:].strip())
            elif started:
                comment.append(c[1:].strip())
        block = []
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if not m or stripped.startswith("-"):
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        owned = any(d for _, _, d in stack)
        path = [k for _, k, _ in stack] + [m.group(2)]
        if started and not owned:
            out.append((path, " ".join(comment)))
        stack.append((indent, m.group(2), started))
    return out


def default_of(values, path):
    value = values
    for key in path:
        value = value[key]
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > 80:
        text = "see values.yaml"
    return text.replace("|", "\\|")


def main():
    values_path, doc_in, doc_out = sys.argv[1:4]
    with open(values_path, encoding="utf-8") as f:
        text = f.read()
    values = yaml.safe_load(text)
    rows = ["| value | default | what it does |", "|---|---|---|"]
    for path, comment in documented_values(text.splitlines()):
        comment = comment.replace("|", "\\|")
        default = default_of(values, path)
        default = default if default == "see values.yaml" else f"`{default}`"
        rows.append(f"| `{'.'.join(path)}` | {default} | {comment} |")
    with open(doc_in, encoding="utf-8") as f:
        doc = f.read()
    if BEGIN not in doc or END not in doc:
        sys.exit(f"values_doc: {doc_in} has no {BEGIN} ... {END} block")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc = f"{head}{BEGIN}\n" + "\n".join(rows) + f"\n{END}{tail}"
    with open(doc_out, "w", encoding="utf-8") as f:
        f.write(doc)


if __name__ == "__main__":
    main()
