"""``ovs-overlayctl apply|delete -f FILE`` and ``get KIND``: Kubernetes Namespaces, Pods
and NetworkPolicies in the cluster state, as kubectl shows them (store/k8s_objects.py)."""

from __future__ import annotations

import json
import sys

import yaml

from ctl.manifests import DEFAULT_NAMESPACE, parse_manifests, read_source
from ctl.store_options import add_store_options, open_store
from store.k8s_objects import NAMESPACES, NETWORK_POLICIES, K8sObjects, kind_named


def add_parser(subparsers) -> None:
    apply = subparsers.add_parser(
        "apply", help="create or replace Namespaces, Pods and NetworkPolicies from YAML/JSON"
    )
    delete = subparsers.add_parser("delete", help="delete the objects a YAML/JSON file names")
    for p in (apply, delete):
        p.add_argument(
            "-f", "--filename", required=True, help="a file of one or more documents; - for stdin"
        )
        p.add_argument("-n", "--namespace", help="the namespace of objects that name none")
        add_store_options(p, output=False)
    delete.add_argument(
        "--ignore-not-found", action="store_true", help="an object already gone is not an error"
    )
    apply.set_defaults(func=cmd_apply)
    delete.set_defaults(func=cmd_delete)

    get = subparsers.add_parser("get", help="show stored Namespaces, Pods or NetworkPolicies")
    get.add_argument("kind", help="namespaces|ns, pods|po, networkpolicies|netpol")
    get.add_argument("name", nargs="?", help="one object only")
    where = get.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", help=f"this namespace (default {DEFAULT_NAMESPACE})")
    where.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    get.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")
    add_store_options(get, output=False)
    get.set_defaults(func=cmd_get)


def _manifests(args, validate: bool):
    text = read_source(args.filename, sys.stdin.read() if args.filename == "-" else None)
    source = "standard input" if args.filename == "-" else args.filename
    return parse_manifests(text, source, args.namespace, validate=validate)


def cmd_apply(args) -> int:
    manifests = _manifests(args, validate=True)  # all checked before the first write
    with open_store(args) as cluster:
        objects = K8sObjects(cluster.kv)
        for m in manifests:
            print(f"{m.display} {objects.put(m.obj)}")
    return 0


def cmd_delete(args) -> int:
    manifests = _manifests(args, validate=False)
    missing = 0
    with open_store(args) as cluster:
        objects = K8sObjects(cluster.kv)
        # A Namespace's delete takes its objects with it: delete them first, so each line
        # says what its own delete did (as kubectl, whose namespace delete is asynchronous).
        for m in sorted(manifests, key=lambda m: m.kind is NAMESPACES):
            if objects.delete(m.kind, m.namespace, m.name):
                print(f"{m.display} deleted")
            elif not args.ignore_not_found:
                missing += 1
                where = f" in namespace {m.namespace}" if m.namespace else ""
                print(
                    f"ovs-overlayctl: {m.display} not found{where}; nothing to delete "
                    "(--ignore-not-found makes that no error)",
                    file=sys.stderr,
                )
    return 1 if missing else 0


def cmd_get(args) -> int:
    kind = kind_named(args.kind)
    if args.all_namespaces and args.name:
        raise ValueError("a name is looked up in one namespace; drop -A or the name")
    namespace = None
    if kind.namespaced and not args.all_namespaces:
        namespace = args.namespace or DEFAULT_NAMESPACE
    with open_store(args) as cluster:
        objects = K8sObjects(cluster.kv)
        if args.name:
            obj = objects.get(kind, namespace, args.name)
            if obj is None:
                where = f" in namespace {namespace}" if namespace else ""
                raise ValueError(
                    f"{kind.group_name}/{args.name} is not stored{where}; "
                    f"'get {kind.resource}' lists them"
                )
            found = [obj]
        else:
            found = objects.list(kind, namespace)
    if args.output != "table":
        doc = found[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": found}
        if args.output == "json":
            print(json.dumps(doc, indent=2))
        else:
            sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))
        return 0
    if not found:
        where = f" in {namespace} namespace" if namespace else ""
        print(f"No resources found{where}.", file=sys.stderr)
        return 0
    _table(kind, found, with_namespace=kind.namespaced and args.all_namespaces)
    return 0


def _table(kind, found: list[dict], with_namespace: bool) -> None:
    headers = (["NAMESPACE"] if with_namespace else []) + ["NAME"]
    headers.append("POD-SELECTOR" if kind is NETWORK_POLICIES else "LABELS")
    rows = []
    for obj in found:
        meta = obj["metadata"]
        row = ([meta["namespace"]] if with_namespace else []) + [meta["name"]]
        if kind is NETWORK_POLICIES:
            row.append(_selector(obj["spec"].get("podSelector") or {}))
        else:
            labels = meta.get("labels") or {}
            row.append(",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>")
        rows.append(row)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for r in [headers, *rows]:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _selector(selector: dict) -> str:
    """kubectl's rendering of a label selector: ``k=v,k2 in (a,b)``, ``<none>`` for all."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for r in selector.get("matchExpressions") or []:
        op, key, values = r["operator"], r["key"], ",".join(r.get("values") or [])
        parts.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }[op]
        )
    return ",".join(parts) or "<none>"
