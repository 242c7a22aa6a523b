"""``ovs-overlayctl network ...``: the operator's networks in the cluster state."""

from __future__ import annotations

from ctl.store_options import add_store_options, emit, open_store


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("network", help="create, list and delete networks")
    add_store_options(p)
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
    for leaf in (create, ls, delete):
        add_store_options(leaf, leaf=True)


def cmd_create(args) -> int:
    with open_store(args) as cluster:
        cluster.create_network(
            args.name, vni=args.vni, cidr=args.cidr, mtu=args.mtu, gateway=not args.no_gateway
        )
    return 0


def cmd_list(args) -> int:
    with open_store(args) as cluster:
        networks = cluster.list_networks()
    rows = [
        {
            "name": n.name,
            "vni": n.vni,
            "index": n.index,
            "cidr": n.cidr,
            "mtu": n.mtu,
            "gateway": n.gateway,
        }
        for n in networks
    ]
    emit(args, ("name", "vni", "index", "cidr", "mtu", "gateway"), rows)
    return 0


def cmd_delete(args) -> int:
    with open_store(args) as cluster:
        cluster.delete_network(args.name)
    return 0
