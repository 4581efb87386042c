#!/usr/bin/env python3
"""Writes the seeds of fuzz/corpus/ that come from inputs the repository records.

  python3 fuzz/seeds.py

- wire/extender-*.json: the request bodies of topolvm-scheduler/tests/topolvm-extender/
  (what kube-scheduler sent TopoLVM's extender), in Go's field order, compact as Go writes
  them; one also as a NodeNames request and one indented;
- capacity_annotation/extender-*: the capacity annotations of those requests' pod and nodes;
- lvm_report/fullreport-*.json: lvmd/tests/fixtures/ (real lvm2 output).

Seeds named unit-* are written by hand (from the parsers' unit tests) and left alone. The
four random clusters of 60 nodes are left out: 100 KB each, and no other shape.
"""

import glob
import json
import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
PREFIX = "capacity.topolvm.io/"

# The order Go's encoder writes ObjectMeta's fields in (k8s.io/apimachinery types.go).
META_ORDER = [
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields",
]


def go_order(obj):
    """An API object with metadata, spec and status in the order Go writes them."""
    out = {k: obj[k] for k in ("kind", "apiVersion") if k in obj}
    meta = obj.get("metadata", {})
    out["metadata"] = {k: meta[k] for k in META_ORDER if k in meta}
    out["metadata"].update({k: v for k, v in meta.items() if k not in out["metadata"]})
    out.update({k: v for k, v in obj.items() if k not in out})
    return out


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def capacity_lines(obj):
    annotations = obj.get("metadata", {}).get("annotations") or {}
    return [f"{k}={v}" for k, v in annotations.items() if k.startswith(PREFIX)]


def main():
    for old in glob.glob(os.path.join(CORPUS, "*", "extender-*")) + glob.glob(
        os.path.join(CORPUS, "lvm_report", "fullreport-*")
    ):
        os.remove(old)

    fixtures = sorted(glob.glob(os.path.join(ROOT, "topolvm-scheduler", "tests", "topolvm-extender", "default--*.json")))
    for path in fixtures:
        case = os.path.basename(path)[len("default--"):-len(".json")]
        if case.startswith("random-"):
            continue
        with open(path, encoding="utf-8") as f:
            request = json.load(f)["request"]
        pod = go_order(request["Pod"])
        nodes = request["Nodes"]
        if nodes is not None:
            nodes = {**nodes, "items": [go_order(n) for n in nodes.get("items") or []]}
        body = {"Pod": pod, "Nodes": nodes, "NodeNames": request.get("NodeNames")}
        write(os.path.join(CORPUS, "wire", f"extender-{case}.json"), compact(body))
        if case == "named-class":
            names = [n["metadata"]["name"] for n in nodes["items"]]
            by_name = {"Pod": pod, "Nodes": None, "NodeNames": names}
            write(os.path.join(CORPUS, "wire", f"extender-{case}-node-names.json"), compact(by_name))
            write(os.path.join(CORPUS, "wire", f"extender-{case}-indented.json"), json.dumps(body, indent=1))

        # One seed per distinct pair of pod and node annotations.
        seen = set()
        pod_lines = capacity_lines(pod)
        for node in (nodes or {}).get("items") or []:
            text = "\n".join(pod_lines) + "\n\n" + "\n".join(capacity_lines(node)) + "\n"
            if text in seen or len(seen) == 6:
                continue
            seen.add(text)
            write(os.path.join(CORPUS, "capacity_annotation", f"extender-{case}-{len(seen)}"), text)

    for path in sorted(glob.glob(os.path.join(ROOT, "lvmd", "tests", "fixtures", "fullreport-*.json"))):
        shutil.copy(path, os.path.join(CORPUS, "lvm_report", os.path.basename(path)))


if __name__ == "__main__":
    main()
