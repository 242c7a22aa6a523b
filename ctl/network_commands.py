"""``ovs-overlayctl network ...``: the operator's networks in the cluster state."""

from __future__ import annotations

from lab import naming
from lab.lab import LabPaths
from store import open_cluster


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("network", help="create, list and delete networks")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--lab", help="the cluster state of this lab")
    where.add_argument("--store", help="a cluster state URL (sqlite:///PATH)")
    p.add_argument("--state-dir", default=naming.DEFAULT_STATE_ROOT, help="where labs live")
    sub = p.add_subparsers(dest="network_command", required=True)

    create = sub.add_parser("create", help="create a network")
    create.add_argument("name")
    create.add_argument("--cidr", required=True, help="inside 100.64.0.0/10")
    create.add_argument("--vni", type=int, required=True)
    create.add_argument("--mtu", type=int)
    create.add_argument("--no-gateway", action="store_true", help="pods get no default route")
    create.set_defaults(func=cmd_create)

    ls = sub.add_parser("list", help="list networks")
    ls.set_defaults(func=cmd_list)

    delete = sub.add_parser("delete", help="delete a network (refused while it has endpoints)")
    delete.add_argument("name")
    delete.set_defaults(func=cmd_delete)


def _cluster(args):
    if args.lab:
        return open_cluster(LabPaths(args.state_dir, naming.validate_lab_name(args.lab)).store_url)
    return open_cluster(args.store)


def cmd_create(args) -> int:
    cluster = _cluster(args)
    try:
        cluster.create_network(
            args.name, vni=args.vni, cidr=args.cidr, mtu=args.mtu, gateway=not args.no_gateway
        )
    finally:
        cluster.close()
    return 0


def cmd_list(args) -> int:
    cluster = _cluster(args)
    try:
        print(f"{'name':<16} {'vni':>8}  {'cidr':<18} {'mtu':>5}  gateway")
        for n in cluster.list_networks():
            mtu = n.mtu if n.mtu else "-"
            print(f"{n.name:<16} {n.vni:>8}  {n.cidr:<18} {mtu:>5}  {'yes' if n.gateway else 'no'}")
    finally:
        cluster.close()
    return 0


def cmd_delete(args) -> int:
    cluster = _cluster(args)
    try:
        cluster.delete_network(args.name)
    finally:
        cluster.close()
    return 0
