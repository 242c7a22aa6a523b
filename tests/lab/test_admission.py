"""Bad and conflicting CNI requests on a two-host lab: each is refused with its CNI code and
a message naming it, leaves nothing behind on either host or in the store, and the hosts
go on adding, connecting and deleting pods afterwards (before admission, a duplicate
static MAC across hosts killed the reconciler of every host that saw both)."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from controller import api_client
from lab import agent_proc, lab, netns, pods
from tests.helpers import flows, host_veths, pod_ports, running_lab

pytestmark = pytest.mark.lab

HOSTS = ("h1", "h2")
_serial = itertools.count(1)


@pytest.fixture(scope="module", params=["sqlite", "etcd"])
def two(request):
    """Two hosts sharing a SQLite file, or one etcd member on the underlay."""
    with running_lab(2, store=request.param) as name:
        yield name


def paths(name):
    return lab.LabPaths(lab.naming.DEFAULT_STATE_ROOT, name)


def cni(name, host, command, container, **extra):
    return pods.cni_exec(paths(name), host, command, container, **extra)


def api(name, host, op, **args):
    """The agent's API directly, as a client other than the plugin would call it."""
    return api_client.call(agent_proc.socket_path(paths(name).host(host)), op, **args)


def state(name):
    """Everything a pod leaves: veths and ports on each host, and the store's addresses,
    endpoint records and MAC claims."""
    with lab.open_lab_cluster(name) as cluster:
        store = (
            cluster.allocations("default"),
            sorted(map(repr, cluster.list_endpoints("default"))),
            [(kv.key, kv.value) for kv in cluster.kv.range("macs/")[0]],
        )
    return {h: (host_veths(name, h), pod_ports(name, h)) for h in HOSTS}, store


def wait_learned(name, host, mac):
    """A pod added on one host reaches the others through their store watch, a moment
    after its ADD returned: wait for ``host``'s flows to name it."""
    deadline = time.monotonic() + 10
    while f"dl_dst={mac}" not in "\n".join(flows(name, host)):
        assert time.monotonic() < deadline, f"{host} never learned {mac}"
        time.sleep(0.05)


def still_serving(name):
    """Both hosts add a pod, the pods reach each other across the tunnel, both go."""
    n = next(_serial)
    made = {h: pods.pod_add(name, h, f"ok{n}{h}") for h in HOSTS}
    try:
        wait_learned(name, "h1", made["h2"]["mac"])
        wait_learned(name, "h2", made["h1"]["mac"])
        assert lab.ping_from(pods.pod_namespace(name, "h1", f"ok{n}h1"), made["h2"]["ip"])
        assert lab.ping_from(pods.pod_namespace(name, "h2", f"ok{n}h2"), made["h1"]["ip"])
    finally:
        for h in HOSTS:
            pods.pod_del(name, h, f"ok{n}{h}")


class Pod:
    """A namespace for one container, removed (after a DEL) at the end."""

    def __init__(self, name, host, tag):
        self.name, self.host = name, host
        self.container = pods.pod_namespace(name, host, tag)
        netns.create_namespace(self.container)

    def add(self, **extra):
        return cni(self.name, self.host, "ADD", self.container, **extra)

    def close(self):
        cni(self.name, self.host, "DEL", self.container)
        netns.delete_namespace(self.container)


@pytest.fixture
def pod_factory(two):
    made = []

    def make(host, tag):
        made.append(Pod(two, host, tag))
        return made[-1]

    yield make
    for p in reversed(made):
        p.close()


def assert_refused(rc_out, code, *words):
    rc, out = rc_out
    assert rc == 1 and out["code"] == code, out
    for w in words:
        assert w in out["msg"], out["msg"]


def test_a_static_mac_used_on_another_host_is_refused(two, pod_factory):
    holder = pod_factory("h1", "mac1")
    rc, out = holder.add(cni_args="MAC=02:00:00:00:aa:01")
    assert rc == 0, out
    before = state(two)
    other = pod_factory("h2", "mac2")
    assert_refused(
        other.add(cni_args="MAC=02:00:00:00:aa:01"),
        4,
        f"CNI_ARGS MAC=02:00:00:00:aa:01 is already used in network default by attachment "
        f"{holder.container}/eth0 on host h1; pick another MAC",
    )
    assert state(two) == before
    still_serving(two)


def test_two_hosts_racing_for_one_mac_get_one_attachment(two, pod_factory):
    racers = [pod_factory(h, "race") for h in HOSTS]
    before = state(two)
    results: dict[str, tuple] = {}

    def add(p):
        results[p.host] = p.add(cni_args="MAC=02:00:00:00:aa:02")

    threads = [threading.Thread(target=add, args=(p,)) for p in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    codes = sorted(out["code"] if rc else 0 for rc, out in results.values())
    assert codes == [0, 4], results
    [winner] = [h for h, (rc, _) in results.items() if rc == 0]
    _, store = state(two)
    assert [key for key, _ in store[2]] == ["macs/default/02:00:00:00:aa:02"]
    assert len(store[0]) == len(before[1][0]) + 1  # the loser's address went back
    for p in racers:  # the winner's DEL releases the MAC
        if p.host == winner:
            cni(two, p.host, "DEL", p.container)
    assert state(two) == before
    still_serving(two)


def test_two_concurrent_adds_of_one_attachment_give_one_whole_attachment(two, pod_factory):
    p = pod_factory("h1", "twin")
    before = state(two)
    results: list[tuple] = []
    threads = [threading.Thread(target=lambda: results.append(p.add())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    [(rc, result)] = [r for r in results if r[0] == 0]
    [(_, err)] = [r for r in results if r[0] != 0]
    assert err["code"] == 7 and "is attached already" in err["msg"], err
    # The loser's rollback took nothing of the winner's: its veth, port and address stay.
    assert cni(two, "h1", "CHECK", p.container, prevResult=result) == (0, None)
    hosts, store = state(two)
    assert len(hosts["h1"][0]) == len(before[0]["h1"][0]) + 1
    assert len(store[0]) == len(before[1][0]) + 1


def test_a_static_ip_used_on_another_host_is_refused_naming_it(two, pod_factory):
    holder = pod_factory("h1", "ip1")
    assert holder.add(cni_args="IP=100.64.250.7")[0] == 0
    before = state(two)
    assert_refused(
        pod_factory("h2", "ip2").add(cni_args="IP=100.64.250.7"),
        4,
        f"IP 100.64.250.7 in network default is already used by attachment "
        f"{holder.container}/eth0 on host h1; pick a free address",
    )
    assert state(two) == before
    still_serving(two)


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"ifname": "eth0123456789012"}, "CNI_IFNAME 'eth0123456789012' is 16 bytes long"),
        ({"ifname": "eth/0"}, "CNI_IFNAME 'eth/0' is not a valid interface name"),
        ({"cni_args": "MAC=01:00:5e:00:00:01"}, "MAC=01:00:5e:00:00:01 is a multicast address"),
        ({"cni_args": "MAC=00:00:00:00:00:00"}, "MAC=00:00:00:00:00:00 is all zeros"),
        ({"cni_args": "IP=100.64.0.999"}, "IP=100.64.0.999 is not an IPv4 address"),
        ({"ifname": "lo"}, "CNI_IFNAME lo exists already in"),  # found only at the veth
    ],
)
def test_impossible_values_are_refused_with_code_4(two, pod_factory, extra, words):
    p = pod_factory("h2", "bad")
    before = state(two)
    assert_refused(p.add(**extra), 4, words)
    assert state(two) == before
    still_serving(two)


def test_a_bad_container_id_is_refused(two):
    ns = pods.pod_namespace(two, "h1", "cid")
    netns.create_namespace(ns)
    try:
        before = state(two)
        assert_refused(
            cni(two, "h1", "ADD", "-bad.id", netns_path=f"/run/netns/{ns}"),
            4,
            "CNI_CONTAINERID '-bad.id' is invalid",
        )
        assert state(two) == before
    finally:
        netns.delete_namespace(ns)
    still_serving(two)


def test_a_netns_that_is_a_regular_file_is_refused_and_a_missing_one_is_unknown(two, tmp_path):
    plain = tmp_path / "not-a-netns"
    plain.write_text("")
    container = f"{two}-h1-file"
    before = state(two)
    assert_refused(
        cni(two, "h1", "ADD", container, netns_path=str(plain)),
        4,
        f"CNI_NETNS {plain} is not a network namespace",
    )
    assert_refused(
        cni(two, "h1", "ADD", container, netns_path=str(tmp_path / "gone")),
        3,
        "the network namespace does not exist",
    )
    assert state(two) == before
    still_serving(two)


def test_the_agent_admits_api_clients_like_the_plugin(two):
    """The API socket has clients other than the plugin: the agent checks again."""
    ns = pods.pod_namespace(two, "h2", "api")
    netns.create_namespace(ns)
    try:
        before = state(two)
        base = {"network": "default", "container_id": "c1", "ifname": "eth0"}
        for args, words in (
            ({"ifname": "a" * 20}, "is 20 bytes long"),
            ({"container_id": "a b"}, "CNI_CONTAINERID 'a b' is invalid"),
            ({"mac": "ff:ff:ff:ff:ff:ff"}, "is a multicast address"),
            ({"netns": "/proc/self/ns/mnt"}, "is a mount namespace"),  # the agent's own
        ):
            answer = api(two, "h2", "attach", **{**base, "netns": f"/run/netns/{ns}", **args})
            assert answer["ok"] is False and answer["code"] == 4, answer
            assert words in answer["error"], answer
        assert state(two) == before
    finally:
        netns.delete_namespace(ns)
    still_serving(two)
