"""``ovs-overlayctl lab ...``: build, inspect and remove one-machine labs."""

from __future__ import annotations

import argparse
import itertools
import signal
import sys

from lab import containerd, docker, lab, naming, pods, running
from lab.progress import Progress


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("lab", help="one-machine multi-host lab")
    p.add_argument(
        "--state-dir",
        default=naming.DEFAULT_STATE_ROOT,
        help="where labs keep their files (default: %(default)s)",
    )
    sub = p.add_subparsers(dest="lab_command", required=True)

    up = sub.add_parser("up", help="build a lab")
    up.add_argument("--name", required=True)
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument("--tunnel-type", default="vxlan", choices=["vxlan", "geneve", "gre"])
    up.add_argument(
        "--store",
        default="sqlite",
        choices=lab.STORES,
        help="the cluster state: a SQLite file in the state dir, or etcd members in the lab "
        "(default: %(default)s)",
    )
    up.add_argument("--etcd-members", type=int, help="etcd members with --store etcd (default 1)")
    up.add_argument(
        "--host-ttl",
        type=int,
        default=lab.DEFAULT_HOST_TTL,
        help="seconds a host stays in the store after its agent dies (default: %(default)s)",
    )
    up.add_argument(
        "--underlay-mtu",
        type=int,
        default=naming.UNDERLAY_MTU,
        help="MTU of every underlay link; pods get it minus the tunnel overhead "
        "(default: %(default)s)",
    )
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="remove a lab and everything it made")
    down.add_argument("--name", required=True)
    down.set_defaults(func=cmd_down)

    st = sub.add_parser("status", help="show a lab's hosts, daemons and bridges")
    st.add_argument("--lab")
    st.set_defaults(func=cmd_status)

    ls = sub.add_parser("list", help="list labs")
    ls.set_defaults(func=cmd_list)

    ex = sub.add_parser("exec", help="run a command in a lab host (OVS tools address its daemons)")
    ex.add_argument("--lab", required=True)
    ex.add_argument("host")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    ex.set_defaults(func=cmd_exec)

    host = sub.add_parser("host", help="add a host to a running lab")
    host_sub = host.add_subparsers(dest="host_command", required=True)
    host_add = host_sub.add_parser("add", help="add host h<N+1> (namespace, OVS, agent)")
    host_add.add_argument("--lab", required=True)
    host_add.set_defaults(func=cmd_host_add)

    agent = sub.add_parser(
        "agent", help="stop (SIGTERM), kill (SIGKILL), start or restart a host's agent"
    )
    agent.add_argument("action", choices=lab.AGENT_ACTIONS)
    agent.add_argument("--lab", required=True)
    agent.add_argument("host")
    agent.set_defaults(func=cmd_agent)

    etcd = sub.add_parser("etcd", help="stop, start or restart etcd members (fault tests)")
    etcd.add_argument("action", choices=running.ETCD_ACTIONS)
    etcd.add_argument("--lab", required=True)
    etcd.add_argument(
        "--signal",
        default="KILL",
        help="the signal 'stop' and 'restart' send (default KILL: a crash; TERM: a clean stop)",
    )
    etcd.add_argument(
        "--no-wait", action="store_true", help="do not wait for started members to be healthy"
    )
    etcd.add_argument("members", nargs="+", metavar="etcd<k>")
    etcd.set_defaults(func=cmd_etcd)

    ctrd = sub.add_parser(
        "containerd",
        help="containerd with its CRI plugin on a lab host (private root, state, socket)",
    )
    ctrd.add_argument("action", choices=containerd.ACTIONS)
    ctrd.add_argument("--lab", required=True)
    ctrd.add_argument("host")
    ctrd.set_defaults(func=cmd_containerd)

    dock = sub.add_parser(
        "docker",
        help="dockerd on a lab host (private roots, socket and plugin discovery), its CLI",
    )
    dock_sub = dock.add_subparsers(dest="docker_command", required=True)
    for action in docker.ACTIONS:
        what = {
            "start": "start dockerd in the host (imports ovs-overlay-lab/busybox the first time)",
            "stop": "stop dockerd (SIGTERM: its containers stop first)",
            "restart": "stop dockerd if it runs, then start it",
            "kill": "kill dockerd (SIGKILL: a crash; its containers live on until it restarts)",
        }[action]
        a = dock_sub.add_parser(action, help=what)
        a.add_argument("--lab", required=True)
        a.add_argument("host")
        a.set_defaults(func=cmd_docker, docker_action=action)
    dex = dock_sub.add_parser(
        "exec", help="run the docker CLI (or any command) against the host's dockerd"
    )
    dex.add_argument("--lab", required=True)
    dex.add_argument("host")
    dex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- docker ARGS ...")
    dex.set_defaults(func=cmd_docker_exec)

    pod = sub.add_parser("pod", help="lab pods: a namespace attached through the host's agent")
    pod_sub = pod.add_subparsers(dest="pod_command", required=True)
    pod_add = pod_sub.add_parser("add", help="create a pod and attach it; prints its IP")
    pod_del = pod_sub.add_parser("del", help="detach and remove a pod")
    for p_ in (pod_add, pod_del):
        p_.add_argument("--lab", required=True)
        p_.add_argument("--host", required=True)
        p_.add_argument("--name", required=True)
    pod_add.add_argument("--network", default=naming.DEFAULT_NETWORK)
    pod_add.add_argument(
        "--k8s",
        metavar="NAMESPACE/NAME",
        help="the Kubernetes pod it stands for (CNI_ARGS K8S_POD_NAMESPACE, K8S_POD_NAME); "
        "its Pod object is applied to the lab's store",
    )
    pod_add.add_argument(
        "--label", action="append", default=[], metavar="K=V", help="a label of the Pod object"
    )
    pod_add.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="NAME:PORT/PROTO",
        help="a named container port of the Pod object (e.g. serve-80-tcp:80/TCP)",
    )
    pod_add.set_defaults(func=cmd_pod_add)
    pod_del.set_defaults(func=cmd_pod_del)
    pod_ls = pod_sub.add_parser("list", help="the lab's pods")
    pod_ls.add_argument("--lab", required=True)
    pod_ls.set_defaults(func=cmd_pod_list)

    demo = sub.add_parser("demo", help="lab up, show it, prove underlay reachability, lab down")
    demo.add_argument("--name", default="demo")
    demo.add_argument("--hosts", type=int, default=3)
    demo.set_defaults(func=cmd_demo)


def cmd_up(args) -> int:
    print_status(
        lab.up(
            args.name,
            args.hosts,
            args.state_dir,
            args.tunnel_type,
            store=args.store,
            etcd_members=args.etcd_members,
            host_ttl=args.host_ttl,
            underlay_mtu=args.underlay_mtu,
            progress=Progress(),
        )
    )
    return 0


def cmd_host_add(args) -> int:
    h = running.host_add(args.lab, args.state_dir)
    print(f"added {h.name}: namespace {h.namespace}, underlay {h.underlay_ip}")
    return 0


def cmd_etcd(args) -> int:
    name = args.signal.upper().removeprefix("SIG")
    try:
        sig = signal.Signals["SIG" + name]
    except KeyError:
        raise ValueError(f"signal {args.signal!r} is unknown; use e.g. KILL or TERM") from None
    running.etcd_control(args.lab, args.members, args.action, sig, args.state_dir, not args.no_wait)
    return 0


def cmd_containerd(args) -> int:
    containerd.control(args.lab, args.host, args.action, args.state_dir)
    if args.action != "stop":
        paths = containerd.ContainerdPaths.of_host(
            lab.LabPaths(args.state_dir, args.lab).host(args.host)
        )
        print(f"containerd of {args.host}: socket {paths.socket}, log {paths.log}")
    return 0


def cmd_docker(args) -> int:
    pid = docker.control(args.lab, args.host, args.docker_action, args.state_dir)
    if pid is not None:
        paths = docker.DockerPaths.of_host(lab.LabPaths(args.state_dir, args.lab).host(args.host))
        print(
            f"dockerd of {args.host}: pid {pid}, socket {paths.socket}, log {paths.log}; "
            f"'ovs-overlayctl lab docker exec --lab {args.lab} {args.host} -- docker ps'"
        )
    return 0


def cmd_docker_exec(args) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    docker.exec_cli(args.lab, args.host, argv, args.state_dir)
    return 0  # not reached: exec replaced this process


def cmd_down(args) -> int:
    if not lab.exists(args.name, args.state_dir):
        raise lab.LabError(f"no lab named {args.name}; 'ovs-overlayctl lab list' shows the labs")
    for line in lab.down(args.name, args.state_dir):
        print(f"removed {line}")
    return 0


def cmd_status(args) -> int:
    names = [args.lab] if args.lab else lab.list_labs(args.state_dir)
    if not names:
        print("no labs")
    for name in names:
        print_status(lab.status(name, args.state_dir))
    return 0


def cmd_list(args) -> int:
    for name in lab.list_labs(args.state_dir):
        print(name)
    return 0


def cmd_exec(args) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    lab.exec_in_host(args.lab, args.host, argv, args.state_dir)
    return 0  # not reached: exec replaced this process


def cmd_agent(args) -> int:
    lab.agent_control(args.lab, args.host, args.action, args.state_dir)
    return 0


def cmd_pod_add(args) -> int:
    att = pods.pod_add(
        args.lab,
        args.host,
        args.name,
        args.network,
        args.state_dir,
        k8s=args.k8s,
        labels=args.label,
        ports=args.port,
    )
    print(att["ip"])
    return 0


def cmd_pod_del(args) -> int:
    pods.pod_del(args.lab, args.host, args.name, args.state_dir)
    return 0


def cmd_pod_list(args) -> int:
    for p in pods.pods(args.lab, args.state_dir):
        print(f"{p['namespace']}  {p['network']}  {p['ip']}/{p['prefixlen']}  {p['mac']}")
    return 0


def cmd_demo(args) -> int:
    print(f"== lab up --name {args.name} --hosts {args.hosts}")
    failures = 0
    progress = Progress()  # on stderr, when it is a terminal
    # refuses a name in use, untouched
    status = lab.up(args.name, args.hosts, args.state_dir, progress=progress)
    try:
        print_status(status)
        print("== underlay reachability (every host pings every other host's br-phy IP)")
        for src, dst in itertools.permutations(status.hosts, 2):
            ok = lab.ping(args.name, src.name, dst.underlay_ip)
            failures += not ok
            print(f"  {src.name} -> {dst.name} {dst.underlay_ip}: {'ok' if ok else 'FAILED'}")
        print("== 2 pods per host, attached through each host's agent")
        made = []
        for h in status.hosts:
            for i in (1, 2):
                att = pods.pod_add(args.name, h.name, f"p{i}", state_root=args.state_dir)
                made.append((h.name, f"p{i}", att["ip"]))
                print(f"  {h.name}/p{i}: {att['ip']}/{att['prefixlen']} mac {att['mac']}")
        print("== every pod pings every other pod (across hosts over VXLAN)")
        for (sh, sp, _), (dh, dp, dip) in itertools.permutations(made, 2):
            ok = lab.ping_from(pods.pod_namespace(args.name, sh, sp), dip)
            failures += not ok
            print(f"  {sh}/{sp} -> {dh}/{dp} {dip}: {'ok' if ok else 'FAILED'}")
        print("== every host pings every other host's pods (from its own gateway address)")
        for h in status.hosts:
            for dh, dp, dip in made:
                if dh != h.name and dp == "p1":
                    ok = lab.ping_from(naming.host_namespace(args.name, h.name), dip)
                    failures += not ok
                    print(f"  {h.name} -> {dh}/{dp} {dip}: {'ok' if ok else 'FAILED'}")
        print(f"== every pod pings the outside ({naming.EXT_IP} in {args.name}-ext), SNATed")
        for sh, sp, _ in made:
            ok = lab.ping_from(pods.pod_namespace(args.name, sh, sp), naming.EXT_IP)
            failures += not ok
            print(f"  {sh}/{sp} -> outside {naming.EXT_IP}: {'ok' if ok else 'FAILED'}")
        print("== named flows on h1's br-int (excerpt)")
        for line in lab.dump_flows(args.name, "h1", args.state_dir)[:14]:
            print("  " + line)
    finally:
        print(f"== lab down --name {args.name}")
        with progress.timed(f"lab {args.name}: down"):
            removed = lab.down(args.name, args.state_dir)
        print(f"  removed {len(removed)} items; no {args.name}-* namespace or daemon remains")
    if failures:
        print(f"demo failed: {failures} pings unanswered", file=sys.stderr)
        return 1
    print("demo ok")
    return 0


def print_status(status: lab.LabStatus) -> None:
    print(
        f"lab {status.name}: {len(status.hosts)} hosts, tunnel {status.tunnel_type}, "
        f"state {status.state_dir}, store {status.store_url}"
    )
    for m in status.etcd:
        state = f"pid {m.pid}" if m.pid else "DOWN"
        print(f"  {m.name}  {m.namespace}  {m.ip}:{naming.ETCD_CLIENT_PORT}  {state}")
    daemons = sorted({d for h in status.hosts for d in h.daemons}, key=_daemon_order)
    rows = [("host", "namespace", "underlay ip", "bridges (datapath)", *daemons)]
    for h in status.hosts:
        rows.append(
            (
                h.name,
                h.namespace if h.namespace_present else f"{h.namespace} (MISSING)",
                f"{h.underlay_ip}/{naming.underlay_prefixlen()}",
                ", ".join(f"{b} ({dp})" for b, dp in h.bridges.items()) or "-",
                *(f"pid {h.daemons[d]}" if h.daemons.get(d) else "DOWN" for d in daemons),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _daemon_order(daemon: str) -> int:
    return ["ovsdb-server", "ovs-vswitchd", "ovs-overlay-agent", "dockerd"].index(daemon)
