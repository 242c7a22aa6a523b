"""The Kubernetes network model on a 3-host lab: every node reaches every pod (through its
gateway's own address), and replies come back to it, not to the pod's own host."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import pytest

from lab import lab, naming, netns, pods
from tests.helpers import running_lab

pytestmark = pytest.mark.lab

HOSTS = ("h1", "h2", "h3")
PORT = 7100

# Reads everything a client sends until it closes its side, then answers its SHA-256: the
# client knows every byte arrived and the answer came back.
ECHO_SERVER = """
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening", flush=True)
c, peer = s.accept()
h = hashlib.sha256()
while (data := c.recv(65536)):
    h.update(data)
c.sendall((peer[0] + " " + h.hexdigest()).encode())
c.close()
"""
CLIENT = """
import os, socket, sys
timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 10
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=timeout)
data = bytes(range(256)) * 8192  # 2 MiB
c.sendall(data)
c.shutdown(socket.SHUT_WR)
print(c.recv(200).decode())
"""
SENT = hashlib.sha256(bytes(range(256)) * 8192).hexdigest()


@pytest.fixture(scope="module")
def cluster3():
    with running_lab(3) as name:
        made = {h: pods.pod_add(name, h, "p1", "default") for h in HOSTS}
        yield name, made


def host_ns(name, host):
    return naming.host_namespace(name, host)


def transfer(
    server_ns: str,
    server_ip: str,
    client_ns: str,
    port: int = PORT,
    connect_to: tuple[str, int] | None = None,
) -> str:
    """2 MiB over TCP from ``client_ns`` to a server in ``server_ns`` (at ``connect_to``,
    say a ClusterIP, when given); returns what the server saw as the client's address (and
    checks every byte arrived)."""
    to_ip, to_port = connect_to or (server_ip, port)
    server = subprocess.Popen(
        [sys.executable, "-c", ECHO_SERVER, server_ip, str(port)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: netns.enter_namespace(server_ns),
    )
    try:
        assert server.stdout.readline().strip() == "listening"
        client = netns.run_in_namespace(
            client_ns, [sys.executable, "-c", CLIENT, to_ip, str(to_port)], timeout=30, check=False
        )
        if client.returncode != 0:
            raise ConnectionError(f"{client_ns} -> {to_ip}:{to_port}: {client.stderr[-300:]}")
        out = client.stdout.split()
        assert out[1] == SENT, out
        return out[0]
    finally:
        server.kill()
        server.wait()


def gateway_of(name: str, host: str) -> str:
    with lab.open_lab_cluster(name) as cluster:
        [h] = [h for h in cluster.list_hosts() if h.name == host]
    return h.gateways[0].ip


def test_every_host_pings_every_pod(cluster3):
    name, made = cluster3
    for host in HOSTS:
        for dst in HOSTS:
            assert lab.ping_from(host_ns(name, host), made[dst]["ip"]), f"{host} -> {dst}/p1"


def test_a_host_network_process_reaches_pods_on_other_hosts_from_its_own_address(cluster3):
    """TCP from h1's namespace to pods on h2 and h3: the pod sees h1's gateway address (so its
    reply goes back to h1 through the tunnel, not to the pod's own host)."""
    name, made = cluster3
    mine = gateway_of(name, "h1")
    for dst in ("h2", "h3"):
        pod_ns = pods.pod_namespace(name, dst, "p1")
        assert transfer(pod_ns, made[dst]["ip"], host_ns(name, "h1")) == mine


def test_pods_reach_other_hosts_and_keep_their_default_gateway_local(cluster3):
    name, made = cluster3
    for dst in ("h1", "h3"):
        assert lab.ping_from(pods.pod_namespace(name, "h2", "p1"), gateway_of(name, dst))
    # The anycast gateway is answered by the pod's own host's switch: its gateway's MAC
    # (and not by the host's stack through the pod's veth: controller/endpoints.py, NOARP).
    pod_ns = pods.pod_namespace(name, "h2", "p1")
    assert lab.ping_from(pod_ns, "100.64.0.1")
    neigh = netns.run_in_namespace(pod_ns, ["ip", "neigh", "show", "100.64.0.1"]).stdout
    h2_mac = netns.run_in_namespace(
        host_ns(name, "h2"), ["ip", "-br", "link", "show", "overlay-gw0"]
    ).stdout.split()[2]
    assert h2_mac in neigh, neigh


def test_a_gateway_address_survives_an_agent_restart(cluster3):
    name, made = cluster3
    before = gateway_of(name, "h3")
    lab.agent_control(name, "h3", "restart")
    assert gateway_of(name, "h3") == before
    assert lab.ping_from(host_ns(name, "h1"), made["h3"]["ip"])


# -- egress: pods reach the outside (L-ext) SNATed to their host; nothing outside gets in ---

UDP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
data, peer = s.recvfrom(100)
s.sendto(peer[0].encode() + b" " + data, peer)
"""
UDP_CLIENT = """
import socket, sys
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(5)
c.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
print(c.recv(100).decode())
"""


def udp_exchange(server_ns: str, server_ip: str, client_ns: str, port: int = PORT) -> str:
    server = subprocess.Popen(
        [sys.executable, "-c", UDP_SERVER, server_ip, str(port)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: netns.enter_namespace(server_ns),
    )
    try:
        assert server.stdout.readline().strip() == "listening"
        peer, data = netns.run_in_namespace(
            client_ns, [sys.executable, "-c", UDP_CLIENT, server_ip, str(port)], timeout=30
        ).stdout.split()
        assert data == "hello"
        return peer
    finally:
        server.kill()
        server.wait()


def ctl(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "ctl.main", *argv], check=True, capture_output=True)


def egress_rules(name: str, host: str) -> str:
    return netns.run_in_namespace(
        host_ns(name, host), ["nft", "list", "table", "ip", "ovs_overlay"]
    ).stdout


def wait_rules(name: str, predicate) -> None:
    """Every host's agent rewrote its table after a network change reached it by watch."""
    deadline = time.monotonic() + 10
    while not all(predicate(egress_rules(name, h)) for h in HOSTS):
        assert time.monotonic() < deadline, {h: egress_rules(name, h) for h in HOSTS}
        time.sleep(0.05)


def test_pods_reach_the_outside_as_their_host(cluster3):
    """ICMP, TCP and UDP from pods on h1 and h2 to L-ext: what L-ext sees is the pod's
    host's underlay address, and the replies come back to the pod."""
    name, made = cluster3
    ext = naming.ext_namespace(name)
    for host in ("h1", "h2"):
        pod_ns = pods.pod_namespace(name, host, "p1")
        host_ip = naming.underlay_ip(naming.host_index(host))
        assert lab.ping_from(pod_ns, naming.EXT_IP), host
        assert transfer(ext, naming.EXT_IP, pod_ns) == host_ip
        assert udp_exchange(ext, naming.EXT_IP, pod_ns) == host_ip


def test_a_network_without_egress_reaches_nothing_outside(cluster3):
    name, made = cluster3
    pod_ns = pods.pod_namespace(name, "h3", "p1")
    ctl("network", "--lab", name, "set", "default", "--no-egress")
    try:
        wait_rules(name, lambda rules: "masquerade" not in rules)
        listed = subprocess.run(
            [sys.executable, "-m", "ctl.main", "network", "--lab", name, "list", "-o", "json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert '"egress": false' in listed
        assert not lab.ping_from(pod_ns, naming.EXT_IP)
        with pytest.raises(ConnectionError):
            transfer(naming.ext_namespace(name), naming.EXT_IP, pod_ns)
        # Everything inside the overlay is untouched.
        assert lab.ping_from(pod_ns, made["h1"]["ip"])
        assert lab.ping_from(host_ns(name, "h1"), made["h3"]["ip"])
    finally:
        ctl("network", "--lab", name, "set", "default", "--egress")
    wait_rules(name, lambda rules: "masquerade" in rules)
    assert lab.ping_from(pod_ns, naming.EXT_IP)


def test_the_outside_cannot_open_a_connection_to_a_pod(cluster3):
    """Even with a route to the pod network through h1, L-ext reaches no pod, on h1 or
    behind it; the pods' own connections out still work."""
    name, made = cluster3
    ext = naming.ext_namespace(name)
    netns.run_in_namespace(
        ext, ["ip", "route", "add", "100.64.0.0/10", "via", naming.underlay_ip(1)]
    )
    try:
        for host in ("h1", "h2"):
            pod_ip = made[host]["ip"]
            assert not lab.ping_from(ext, pod_ip), host
            server = subprocess.Popen(
                [sys.executable, "-c", ECHO_SERVER, pod_ip, str(PORT)],
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=lambda h=host: netns.enter_namespace(pods.pod_namespace(name, h, "p1")),
            )
            try:
                assert server.stdout.readline().strip() == "listening"
                client = netns.run_in_namespace(
                    ext, [sys.executable, "-c", CLIENT, pod_ip, str(PORT), "3"], check=False
                )
                assert client.returncode != 0, client.stdout
            finally:
                server.kill()
                server.wait()
        assert lab.ping_from(pods.pod_namespace(name, "h1", "p1"), naming.EXT_IP)
    finally:
        netns.run_in_namespace(ext, ["ip", "route", "del", "100.64.0.0/10"], check=False)


# -- kube-proxy: ClusterIPs as DNAT in the hosts' namespaces, no masquerade ---------------

CLUSTER_IP, CLUSTER_PORT = "100.96.0.10", 80  # in the pod range, in no overlay network
KUBE_PROXY_TABLE = "kubeproxy_test"


def kube_proxy_rules(endpoint_ip: str, endpoint_port: int) -> str:
    """What kube-proxy's nftables mode writes for a one-endpoint ClusterIP, reduced: DNAT in
    prerouting (pods) and output (the host itself: unused here, lab hosts have no route
    toward a ClusterIP, which a node's default route gives it), no masquerade."""
    dnat = f"ip daddr {CLUSTER_IP} tcp dport {CLUSTER_PORT} dnat to {endpoint_ip}:{endpoint_port}"
    return "\n".join(
        [
            f"table ip {KUBE_PROXY_TABLE} {{",
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            f"    {dnat}",
            "  }",
            "  chain output {",
            "    type nat hook output priority -100; policy accept;",
            f"    {dnat}",
            "  }",
            "}",
        ]
    )


def test_a_kube_proxy_cluster_ip_works_from_pods_on_every_host(cluster3):
    """The ClusterIP's endpoint is the pod on h2; clients are pods on h1 and h3 (the
    endpoint on another host) and a second pod on h2 (on the same host).  The server sees
    each client pod's own address (no masquerade), and the replies reach the clients from
    the ClusterIP: br-int sends them back through the client's host (host_conntrack)."""
    name, made = cluster3
    endpoint = made["h2"]["ip"]
    client2 = pods.pod_add(name, "h2", "p2", "default")
    rules = kube_proxy_rules(endpoint, PORT)
    try:
        for host in HOSTS:
            subprocess.run(
                ["ip", "netns", "exec", host_ns(name, host), "nft", "-f", "-"],
                input=rules,
                text=True,
                check=True,
            )
        server_ns = pods.pod_namespace(name, "h2", "p1")
        for host, pod, ip in (
            ("h1", "p1", made["h1"]["ip"]),
            ("h3", "p1", made["h3"]["ip"]),
            ("h2", "p2", client2["ip"]),
        ):
            client_ns = pods.pod_namespace(name, host, pod)
            seen = transfer(server_ns, endpoint, client_ns, connect_to=(CLUSTER_IP, CLUSTER_PORT))
            assert seen == ip, (host, pod)
    finally:
        for host in HOSTS:
            netns.run_in_namespace(
                host_ns(name, host),
                ["nft", "delete", "table", "ip", KUBE_PROXY_TABLE],
                check=False,
            )
        pods.pod_del(name, "h2", "p2")
