#!/usr/bin/env python3
"""Renders a Helm chart like `helm template`, with Helm's own engine (see install-helm.sh).

    scripts/helm-template.py CHART [--name NAME] [--namespace NS] [-f VALUES]... [--set K=V]...
    scripts/helm-template.py CHART --lint [--kube-version v1.20.0] [-f VALUES]... [--set K=V]...

Prints the manifests as one YAML stream, each document headed by `# Source: <template>`, in
Helm's install order (Namespace, ServiceAccount, ConfigMap, ..., CRDs, RBAC, Services,
workloads, webhooks; other kinds last), templates in path order within a kind. Exits non-zero
with Helm's message when a template fails. With --lint, runs `helm lint --strict` instead
(against --kube-version) and exits non-zero on any warning or error.
"""
import argparse
import os
import re
import sys

HELM_DIR = os.environ.get("TOPOLVM_HELM_DIR", "/var/cache/topolvm-rs/helm")
sys.path.insert(0, os.path.join(HELM_DIR, "lib"))

# Helm's releaseutil.InstallOrder.
INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
    "ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
    "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
    "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
    "APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chart")
    parser.add_argument("--name", default="topolvm-rs")
    parser.add_argument("--namespace", default="topolvm-system")
    parser.add_argument("-f", "--values", action="append", default=[])
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--lint", action="store_true")
    parser.add_argument("--kube-version", default="v1.20.0")
    args = parser.parse_args()
    try:
        import helm_python as helm
    except ImportError as e:
        print(f"helm-template: Helm's engine is not installed ({e}); run scripts/install-helm.sh",
              file=sys.stderr)
        return 2

    values: dict = {}
    for path in args.values:
        with open(path, encoding="utf-8") as f:
            values = merge(values, helm.values_from_yaml(f.read()))
    for item in args.set:
        values = merge(values, helm.parse_set_string(item))

    if args.lint:
        report = helm.lint(args.chart, values, strict=True, namespace=args.namespace,
                           kube_version=args.kube_version)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        for m in report["messages"]:
            print(f"helm lint: severity {m['severity']}: {m['path']}: {m['error']}", file=sys.stderr)
        for e in report["errors"]:
            print(f"helm lint: {e}", file=sys.stderr)
        return 1 if problems else 0

    try:
        with helm.Chart.load(args.chart) as chart:
            rendered = chart.render(values, name=args.name, namespace=args.namespace,
                                    is_install=True)
    except helm.HelmError as e:
        print(f"helm-template: {e}", file=sys.stderr)
        return 1

    documents = []
    for path, text in sorted(rendered.items()):
        if os.path.basename(path).startswith("_") or path.endswith("NOTES.txt"):
            continue
        for doc in re.split(r"^---[ \t]*$", text, flags=re.MULTILINE):
            if not re.search(r"^[A-Za-z]", doc, flags=re.MULTILINE):
                continue  # only comments or blank
            kind = re.search(r"^kind:\s*(\S+)", doc, flags=re.MULTILINE)
            kind = kind.group(1) if kind else ""
            rank = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
            documents.append((rank, path, len(documents), doc.strip("\n")))
    documents.sort()
    out = []
    for _, path, _, doc in documents:
        out.append(f"---\n# Source: {path}\n{doc}\n")
    sys.stdout.write("".join(out))
    return 0


def merge(base: dict, over: dict) -> dict:
    """Helm's value merge: maps merge key by key, anything else is replaced."""
    result = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


if __name__ == "__main__":
    sys.exit(main())
