"""``ovs-overlayctl endpoint list``: the pods' interfaces every host reaches."""

from __future__ import annotations

from ctl.store_options import add_store_options, emit, open_store


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("endpoint", help="list endpoints")
    add_store_options(p)
    sub = p.add_subparsers(dest="endpoint_command", required=True)
    ls = sub.add_parser("list", help="endpoints, optionally of one network or host")
    ls.add_argument("--network", help="only this network's")
    ls.add_argument("--host", help="only this host's")
    ls.set_defaults(func=cmd_list)
    add_store_options(ls, leaf=True)


def cmd_list(args) -> int:
    with open_store(args) as cluster:
        endpoints = cluster.list_endpoints(args.network)
    rows = [
        {
            "network": e.network,
            "host": e.host,
            "attachment": e.attachment,
            "ip": e.ip,
            "mac": e.mac,
            "pod": e.pod,
        }
        for e in endpoints
        if args.host is None or e.host == args.host
    ]
    emit(args, ("network", "host", "attachment", "ip", "mac", "pod"), rows)
    return 0
