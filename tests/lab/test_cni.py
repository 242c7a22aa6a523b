"""The installed CNI plugin, exec'd as a runtime does, against a lab host's agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from cni.plugin import SUPPORTED_VERSIONS
from lab import agent_proc, lab, netns, pods
from store import open_cluster
from store.cluster import is_gateway_attachment
from tests.helpers import host_paths, ovs, running_lab, scrape

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def host():
    with running_lab(1) as name:
        yield name


def cni(name, command, container, version="1.0.0", netns_path=None, **extra):
    paths = lab.LabPaths(lab.naming.DEFAULT_STATE_ROOT, name)
    return pods.cni_exec(
        paths, "h1", command, container, version=version, netns_path=netns_path, **extra
    )


def leftovers(name):
    """Host-side veths, OVS endpoint ports and the pods' address allocations on the host
    (not the host gateway's: it is no pod's and stays)."""
    links = netns.run_in_namespace(f"{name}-h1", ["ip", "-br", "link"]).stdout
    ports = netns.run_in_namespace(
        f"{name}-h1", ["ovs-vsctl", "list-ports", "br-int"], env=lab.host_env(name, "h1")
    ).stdout
    cluster = open_cluster(lab.LabPaths(lab.naming.DEFAULT_STATE_ROOT, name).store_url)
    try:
        allocations = {
            ip: att
            for ip, att in cluster.allocations("default").items()
            if not is_gateway_attachment(att)
        }
    finally:
        cluster.close()
    return (
        {w.split("@")[0] for w in links.split() if w.startswith("ovo")},
        {p for p in ports.split() if p.startswith("ovo")},
        allocations,
    )


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_check_del_in_every_version(host, version):
    container = f"{host}-h1-v{version.replace('.', '')}"
    netns.create_namespace(container)
    try:
        rc, result = cni(host, "ADD", container, version)
        assert rc == 0, result
        assert result["cniVersion"] == version
        assert ("version" in result["ips"][0]) == version.startswith("0.")
        if version != "0.3.0":  # CHECK came with 0.4.0
            assert cni(host, "CHECK", container, version, prevResult=result)[0] == 0
        assert cni(host, "DEL", container, version) == (0, None)
        assert cni(host, "DEL", container, version) == (0, None)  # again: a no-op
    finally:
        netns.delete_namespace(container)
    assert leftovers(host) == (set(), set(), {})


def test_a_second_add_of_a_live_attachment_is_refused_and_changes_nothing(host):
    container = f"{host}-h1-twice"
    netns.create_namespace(container)
    try:
        rc, result = cni(host, "ADD", container)
        assert rc == 0, result
        before = leftovers(host)
        rc, err = cni(host, "ADD", container)
        assert rc == 1 and err["code"] == 7 and "attached already" in err["msg"], err
        assert leftovers(host) == before
        assert cni(host, "CHECK", container, prevResult=result)[0] == 0
    finally:
        cni(host, "DEL", container)
        netns.delete_namespace(container)


def test_del_with_empty_netns_and_a_vanished_namespace(host):
    container = f"{host}-h1-gone"
    netns.create_namespace(container)
    assert cni(host, "ADD", container)[0] == 0
    netns.delete_namespace(container)  # the runtime removed the netns first
    assert cni(host, "DEL", container) == (0, None)
    assert cni(host, "DEL", container, netns_path="") == (0, None)  # containerd's second DEL
    assert leftovers(host) == (set(), set(), {})


def test_a_failed_add_changes_nothing(host):
    container = f"{host}-h1-bad"
    netns.create_namespace(container)
    try:
        before = leftovers(host)
        rc, err = cni(host, "ADD", container, network="nope")
        assert rc == 1 and err["code"] == 7 and "nope" in err["msg"]
        rc, err = cni(host, "ADD", f"{host}-h1-missing")  # no such netns
        assert rc == 1 and err["code"] == 3
        assert leftovers(host) == before
    finally:
        netns.delete_namespace(container)


BREAKAGES = {
    "address": (["ip", "addr", "flush", "dev", "eth0"], "lacks address"),
    "route": (["ip", "route", "del", "default"], "no route to 0.0.0.0/0 via 100.64.0.1"),
    "flows": (None, "lacks flows of"),
}


@pytest.mark.parametrize("broken", sorted(BREAKAGES))
def test_check_notices_a_broken_attachment(host, broken):
    container = f"{host}-h1-chk{broken[:2]}"
    argv, message = BREAKAGES[broken]
    netns.create_namespace(container)
    try:
        rc, result = cni(host, "ADD", container)
        assert rc == 0 and cni(host, "CHECK", container, prevResult=result)[0] == 0
        if argv is not None:
            netns.run_in_namespace(container, argv)
        else:  # a flow lost from br-int behind the agent's back
            mac = result["interfaces"][result["ips"][0]["interface"]]["mac"]
            ovs(
                host,
                "h1",
                "ovs-ofctl",
                "-O",
                "OpenFlow13",
                "del-flows",
                "br-int",
                f"table=l2_forward,dl_dst={mac}",
            )
        rc, err = cni(host, "CHECK", container, prevResult=result)
        assert rc == 1 and err["code"] == 3 and message in err["msg"], err
    finally:
        cni(host, "DEL", container)
        netns.delete_namespace(container)


def test_a_pod_on_two_networks_and_an_exhausted_pool(host):
    """eth0 on default, net1 on a /30 network (room for one pod): the second network adds
    no second default route; a second pod finds the /30 full (code 11, naming the network
    and the fix) and leaves nothing; each attachment is deleted on its own."""
    cluster = open_cluster(lab.LabPaths(lab.naming.DEFAULT_STATE_ROOT, host).store_url)
    cluster.create_network("tiny", 5077, "100.65.0.0/30")
    pod, other = f"{host}-h1-two", f"{host}-h1-full"
    netns.create_namespace(pod)
    netns.create_namespace(other)
    try:
        rc, first = cni(host, "ADD", pod)
        assert rc == 0, first
        rc, second = cni(host, "ADD", pod, network="tiny", ifname="net1")
        assert rc == 0, second
        assert second["ips"][0]["address"] == "100.65.0.2/30" and second["routes"] == []
        assert first["interfaces"][0]["name"] != second["interfaces"][0]["name"]
        routes = netns.run_in_namespace(pod, ["ip", "-4", "route"]).stdout
        assert "default via 100.64.0.1 dev eth0" in routes and "100.65.0.0/30 dev net1" in routes
        for ifname, result, net in (("eth0", first, "default"), ("net1", second, "tiny")):
            assert cni(host, "CHECK", pod, network=net, ifname=ifname, prevResult=result)[0] == 0

        before = leftovers(host)
        rc, err = cni(host, "ADD", other, network="tiny")
        assert rc == 1 and err["code"] == 11, err
        assert "tiny" in err["msg"] and "create a larger network" in err["msg"]
        assert leftovers(host) == before

        assert cni(host, "DEL", pod, network="tiny", ifname="net1") == (0, None)
        assert cni(host, "CHECK", pod, prevResult=first)[0] == 0  # eth0 untouched
        assert "net1" not in netns.run_in_namespace(pod, ["ip", "-br", "link"]).stdout
        assert cni(host, "DEL", pod) == (0, None)
    finally:
        cni(host, "DEL", pod, network="tiny", ifname="net1")
        cni(host, "DEL", pod)
        for ns in (pod, other):
            netns.delete_namespace(ns)
        cluster.delete_network("tiny")
        cluster.close()
    assert leftovers(host) == (set(), set(), {})


def test_status_and_gc(host):
    assert cni(host, "STATUS", "-", version="1.1.0") == (0, None)
    keep, drop = f"{host}-h1-keep", f"{host}-h1-drop"
    for c in (keep, drop):
        netns.create_namespace(c)
        assert cni(host, "ADD", c)[0] == 0
    try:
        valid = [{"containerID": keep, "ifname": "eth0"}]
        rc, _ = cni(host, "GC", "-", version="1.1.0", **{"cni.dev/valid-attachments": valid})
        assert rc == 0
        links, ports, allocations = leftovers(host)
        assert len(ports) == 1 and list(allocations.values()) == [f"{keep}/eth0"]
    finally:
        cni(host, "DEL", keep)
        for c in (keep, drop):
            netns.delete_namespace(c)


def test_fifty_parallel_adds_get_fifty_addresses_and_ports(host):
    from concurrent.futures import ThreadPoolExecutor

    containers = [f"{host}-h1-par{i}" for i in range(50)]
    for c in containers:
        netns.create_namespace(c)
    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(lambda c: cni(host, "ADD", c), containers))
        assert all(rc == 0 for rc, _ in results), [r for r in results if r[0]][:3]
        ips = {r["ips"][0]["address"] for _, r in results}
        assert len(ips) == 50
        links, ports, allocations = leftovers(host)
        assert len(ports) == 50 and len(links) == 50 and len(allocations) == 50
        with ThreadPoolExecutor(max_workers=50) as pool:
            dels = list(pool.map(lambda c: cni(host, "DEL", c), containers))
        assert [d for d in dels if d != (0, None)] == []
    finally:
        for c in containers:
            netns.delete_namespace(c)
    assert leftovers(host) == (set(), set(), {})


def test_a_restarted_agent_removes_orphans_and_keeps_live_pods(host):
    paths = host_paths(host)
    live, vanished = f"{host}-h1-live", f"{host}-h1-vanish"
    for c in (live, vanished):
        netns.create_namespace(c)
        assert cni(host, "ADD", c)[0] == 0
    agent_proc.stop(paths, signal.SIGKILL)
    # While the agent is away: a pod's namespace vanishes without a DEL (its veth goes
    # with it), a half-done ADD leaves a veth, another leaves an address.
    netns.delete_namespace(vanished)
    netns.run_in_namespace(
        f"{host}-h1",
        ["ip", "link", "add", "ovo0123456789ab", "type", "veth", "peer", "name", "strayp"],
    )
    cluster = open_cluster(lab.LabPaths(lab.naming.DEFAULT_STATE_ROOT, host).store_url)
    try:
        ghost_ip = cluster.allocate_ip("default", "h1", "ghost/eth0")
    finally:
        cluster.close()
    lab.agent_control(host, "h1", "start")
    links, ports, allocations = leftovers(host)
    assert links == ports and len(ports) == 1  # only the live pod's veth and port
    assert ghost_ip not in allocations
    assert list(allocations.values()) == [f"{live}/eth0"]
    assert cni(host, "CHECK", live)[0] == 0
    assert cni(host, "DEL", live) == (0, None)
    netns.delete_namespace(live)


def test_static_ip_mac_and_mtu(host):
    container = f"{host}-h1-static"
    netns.create_namespace(container)
    try:
        args = "IgnoreUnknown=1;K8S_POD_NAME=x;IP=100.64.200.7;MAC=02:58:aa:bb:cc:dd"
        rc, out = cni(host, "ADD", container, mtu=1400, cni_args=args)
        assert rc == 0, out
        out = netns.run_in_namespace(container, ["ip", "addr", "show", "eth0"]).stdout
        assert "100.64.200.7/16" in out and "02:58:aa:bb:cc:dd" in out and "mtu 1400" in out
        # The same address for another container is refused, and changes nothing.
        before = leftovers(host)
        other = f"{host}-h1-static2"
        netns.create_namespace(other)
        try:
            rc, err = cni(host, "ADD", other, **{})  # dynamic: fine, then DEL
            assert rc == 0
            assert cni(host, "DEL", other) == (0, None)
            rc, err = cni(host, "ADD", other, mtu=1400, cni_args=args)
            assert rc == 1 and "already used" in err["msg"]
            assert leftovers(host) == before
        finally:
            netns.delete_namespace(other)
    finally:
        cni(host, "DEL", container)
        netns.delete_namespace(container)


def test_delegated_host_local_ipam(host, tmp_path):
    paths = lab.LabPaths(lab.naming.DEFAULT_STATE_ROOT, host)
    cni_path = f"{paths.cni_bin}:/usr/lib/cni"  # Debian's containernetworking-plugins
    data = tmp_path / "host-local"
    ipam = {
        "type": "host-local",
        "dataDir": str(data),
        "ranges": [
            [
                {
                    "subnet": "100.64.0.0/16",
                    "rangeStart": "100.64.250.10",
                    "rangeEnd": "100.64.250.20",
                }
            ]
        ],
    }
    container = f"{host}-h1-hl"
    netns.create_namespace(container)
    try:
        rc, result = cni(host, "ADD", container, cni_path=cni_path, ipam=ipam)
        assert rc == 0, result
        ip = result["ips"][0]["address"].split("/")[0]
        assert ip.startswith("100.64.250.")
        assert (data / "default" / ip).exists() or any(p.name == ip for p in data.rglob("*"))
        out = netns.run_in_namespace(container, ["ip", "-br", "addr", "show", "eth0"]).stdout
        assert ip in out
        assert cni(host, "DEL", container, cni_path=cni_path, ipam=ipam) == (0, None)
        assert not any(p.name == ip for p in data.rglob("*"))  # host-local released it
        # A refused ADD gives host-local's address back as well.
        rc, err = cni(host, "ADD", container, cni_path=cni_path, ipam=ipam, network="nope")
        assert rc == 1 and "nope" in err["msg"]
        assert not [p for p in data.rglob("*") if p.name.startswith("100.64.")]
    finally:
        netns.delete_namespace(container)
    assert leftovers(host) == (set(), set(), {})


def run_chain(host_name, command, container, plugins, prev=None):
    """Exec a conflist's plugins in the host's namespace the way libcni does: ADD in order
    with each one's result as the next one's prevResult, DEL in reverse."""
    paths = lab.LabPaths(lab.naming.DEFAULT_STATE_ROOT, host_name)
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_IFNAME": "eth0",
        "CNI_NETNS": f"/run/netns/{container}",
        "CNI_PATH": f"{paths.cni_bin}:/usr/lib/cni",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    result = prev
    for conf in plugins if command == "ADD" else list(reversed(plugins)):
        conf = {"cniVersion": "1.0.0", "name": "chain", **conf}
        if result is not None:
            conf["prevResult"] = result
        exe = os.path.join(
            paths.cni_bin if conf["type"] == "ovs-overlay" else "/usr/lib/cni", conf["type"]
        )
        proc = subprocess.run(
            [exe],
            input=json.dumps(conf),
            env=env,
            capture_output=True,
            text=True,
            preexec_fn=lambda: netns.enter_namespace(f"{host_name}-h1"),
        )
        assert proc.returncode == 0, (conf["type"], proc.stdout, proc.stderr)
        if command == "ADD":
            result = json.loads(proc.stdout)
    return result


def test_chained_with_reference_plugins(host):
    container = f"{host}-h1-chain"
    netns.create_namespace(container)
    plugins = [
        {
            "type": "ovs-overlay",
            "network": "default",
            "agentSocket": agent_proc.socket_path(host_paths(host)),
        },
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}},
        {
            "type": "bandwidth",
            "ingressRate": 100_000_000,
            "ingressBurst": 1_000_000,
            "egressRate": 100_000_000,
            "egressBurst": 1_000_000,
        },
        {
            "type": "portmap",
            "capabilities": {"portMappings": True},
            "runtimeConfig": {
                "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
            },
        },
    ]
    try:
        result = run_chain(host, "ADD", container, plugins)
        assert result["ips"][0]["address"].startswith("100.64.")  # ours, passed along
        sysctl = netns.run_in_namespace(
            container, ["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"]
        )
        assert sysctl.stdout.strip() == "1"  # tuning found our interface in the pod
        host_port = result["interfaces"][0]["name"]
        qdisc = netns.run_in_namespace(f"{host}-h1", ["tc", "qdisc", "show", "dev", host_port])
        assert "tbf" in qdisc.stdout  # bandwidth shaped our host-side veth
        # portmap's CHECK (Debian 12's containernetworking-plugins 1.1.1) looks for its
        # IPv6 DNAT chain even when the result has no IPv6 address and fails ("chain
        # CNI-DN-... not found in iptables table nat"); the rest of the chain is checked.
        run_chain(host, "CHECK", container, plugins[:-1], prev=result)
        run_chain(host, "DEL", container, plugins, prev=result)
    finally:
        netns.delete_namespace(container)
    assert leftovers(host) == (set(), set(), {})


# Requests a runtime may send, each refused or answered without changing anything: the
# CNI command, env and config changes, and whether the refusal is the plugin's own check
# (True) or the agent's (False; None: not refused).
SAME_ANSWERS = [
    ("VERSION", {}, {}, None),
    ("STATUS", {}, {"cniVersion": "1.1.0"}, None),
    ("ADD", {"CNI_CONTAINERID": "-bad"}, {}, True),
    ("ADD", {"CNI_IFNAME": ""}, {}, True),
    ("ADD", {}, {"cniVersion": "0.2.0"}, True),
    ("ADD", {}, {"type": "bridge"}, True),
    ("ADD", {}, {"mtu": 70000}, True),
    ("ADD", {"CNI_ARGS": "FOO=1"}, {}, True),
    ("ADD", {"CNI_ARGS": "IP=100.64.0.300"}, {}, True),
    ("ADD", {"CNI_NETNS": "/run/netns/no-such-netns"}, {}, False),
    ("ADD", {}, {"network": "no-such-network"}, False),
    ("FROB", {}, {}, True),
]


def test_the_shim_and_the_python_plugin_answer_alike_and_every_refusal_is_counted(host):
    """The compiled shim (what runtimes exec) and the Python plugin give the same exit code
    and answer for each request; through the shim, the agent logs and counts the refusals
    the plugin's own checks make (the Python plugin makes them with no agent to tell)."""
    paths = lab.LabPaths(lab.naming.DEFAULT_STATE_ROOT, host)
    before = scrape(host, "h1")
    for command, env, conf, _ in SAME_ANSWERS:
        netns_path = env.get("CNI_NETNS", "/proc/self/ns/net")
        args = dict(
            network=conf.pop("network", "default"),
            version=conf.pop("cniVersion", "1.0.0"),
            netns_path=netns_path,
            ifname=env.get("CNI_IFNAME", "eth0"),
            cni_args=env.get("CNI_ARGS", ""),
            **conf,
        )
        container = env.get("CNI_CONTAINERID", "same-answers")
        shim = pods.cni_exec(paths, "h1", command, container, **args)
        python = pods.cni_exec(paths, "h1", command, container, plugin="ovs-overlay-python", **args)
        assert shim == python, (command, env, conf)
    after = scrape(host, "h1")
    refused = sum(
        2 if own is False else 1 for _, _, _, own in SAME_ANSWERS if own is not None
    )  # the agent's refusals twice (shim and plugin), the plugin's own once (shim)
    assert refused_total(after) - refused_total(before) == refused
    assert leftovers(host) == (set(), set(), {})


def refused_total(values: dict) -> float:
    return sum(
        v for (metric, _), v in values.items() if metric == "ovs_overlay_refused_requests_total"
    )
