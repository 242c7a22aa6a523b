"""``ovs-overlayctl host ...``: the hosts of a cluster, and reclaiming one that is gone.

A host is alive while its agent keeps its lease (``hosts/NAME``); when the agent stops
renewing it, the key goes after the host's TTL and every other host drops the host's
endpoints and tunnel flows, but its address blocks, addresses and endpoint records stay,
so a host that comes back keeps its pods' addresses.  ``host remove`` is the operator
saying the host will not come back: it reclaims all of that (refused while alive).
"""

from __future__ import annotations

from ctl.store_options import add_store_options, emit, open_store


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("host", help="list hosts; reclaim a host that is gone")
    add_store_options(p)
    sub = p.add_subparsers(dest="host_command", required=True)

    ls = sub.add_parser(
        "list",
        help="hosts, alive or not, with tunnel IP, lease time left, endpoint and block counts",
    )
    ls.set_defaults(func=cmd_list)

    remove = sub.add_parser(
        "remove",
        help="reclaim a dead host's blocks, addresses and endpoints (refused while alive)",
    )
    remove.add_argument("name")
    remove.set_defaults(func=cmd_remove)
    for leaf in (ls, remove):
        add_store_options(leaf, leaf=True)


def cmd_list(args) -> int:
    with open_store(args) as cluster:
        hosts = cluster.host_summaries()
    rows = [
        {
            "name": h.name,
            "alive": h.alive,
            "tunnel_ip": h.tunnel_ip,
            "lease_left": h.lease_left,  # seconds; JSON keeps the number
            "endpoints": h.endpoints,
            "blocks": h.blocks,
        }
        for h in hosts
    ]
    if args.output != "json":
        rows = [{**r, "lease_left": _seconds(r["lease_left"])} for r in rows]
    emit(args, ("name", "alive", "tunnel_ip", "lease_left", "endpoints", "blocks"), rows)
    return 0


def _seconds(value: int | None) -> str | None:
    return None if value is None else f"{value}s"


def cmd_remove(args) -> int:
    with open_store(args) as cluster:
        removed = cluster.remove_host(args.name)
    row = {
        "host": removed.host,
        "endpoints": removed.endpoints,
        "blocks": removed.blocks,
        "addresses": removed.addresses,
    }
    if args.output == "json":
        emit(args, tuple(row), [row])
    else:
        print(
            f"removed host {removed.host}: {removed.endpoints} endpoint(s), "
            f"{removed.blocks} block(s), {removed.addresses} address(es)"
        )
    return 0
