"""The agent's admission (controller/admission.py): every refusal comes before any side
effect, with its CNI code, through EndpointManager on a real SQLite cluster state.  The
requests here are all refused before OVSDB would be asked (the manager has none), so a
check that let one through fails the test loudly; what they pass is in tests/lab."""

from __future__ import annotations

import os
import threading

import pytest

from controller import api_client, netns
from controller.admission import AttachError, AttachmentLocks
from controller.api import ApiServer
from controller.endpoints import AttachRequest, EndpointManager
from store import open_cluster
from store.kv import KvError

LIVE_NETNS = "/proc/self/ns/net"  # a real network namespace anyone can name


@pytest.fixture
def cluster(tmp_path):
    c = open_cluster(f"sqlite:///{tmp_path}/cluster.db")
    c.create_network("default", vni=5001, cidr="100.64.0.0/16")
    yield c
    c.close()


@pytest.fixture
def manager(cluster):
    def publish() -> None:
        raise AssertionError("an admitted request reached publish")

    return EndpointManager(
        "h1",
        "br-int",
        None,  # no OVSDB: every request below must be refused before it would be asked
        cluster,
        mtu_for=lambda network: 1450,
        gateway_for=lambda network: "100.64.0.1",
        publish=publish,
        missing_port_flows=lambda ofport: [],
    )


def refused(manager, cluster, **request) -> AttachError:
    req = {"network": "default", "container_id": "c1", "ifname": "eth0", "netns": LIVE_NETNS}
    req.update(request)
    before = cluster.revision()
    with pytest.raises(AttachError) as err:
        manager.attach(AttachRequest(**req))
    assert cluster.revision() == before, "a refused ADD wrote to the store"
    assert len(manager.locks) == 0
    return err.value


@pytest.mark.parametrize(
    "request_, words",
    [
        ({"container_id": "-c1"}, "CNI_CONTAINERID '-c1' is invalid"),
        ({"container_id": "c1/x"}, "CNI_CONTAINERID 'c1/x' is invalid"),
        ({"ifname": "a" * 16}, "is 16 bytes long; an interface name has at most 15"),
        ({"ifname": "a/b"}, "CNI_IFNAME 'a/b' is not a valid interface name"),
        ({"netns": "relative"}, "CNI_NETNS 'relative' is not an absolute path"),
        ({"mac": "01:00:5e:00:00:01"}, "is a multicast address"),
        ({"mac": "00:00:00:00:00:00"}, "is all zeros"),
        ({"mac": "zz:00:00:00:00:01"}, "is not a MAC address"),
        ({"mac": "0a:58:00:00:13:89"}, "keeps for MACs derived from pod addresses and gateways"),
        ({"ip": "100.64.0.1/16"}, "CNI_ARGS IP=100.64.0.1/16 is not an IPv4 address"),
        ({"ip": 7}, "CNI_ARGS IP=7 is not an IPv4 address"),  # the API has other clients
        ({"netns": "/etc/hostname"}, "CNI_NETNS /etc/hostname is not a network namespace"),
        ({"netns": "/proc/self/ns/mnt"}, "is a mount namespace"),
        ({"netns": "/proc/self/ns/net/x"}, None),  # a path through a file: nothing there
        ({"netns": "/run/netns/no-such-ns-for-sure"}, None),
    ],
)
def test_the_agent_refuses_bad_requests_before_any_side_effect(manager, cluster, request_, words):
    err = refused(manager, cluster, **request_)
    if words is None:  # missing: the container is gone, which the spec calls code 3
        assert err.code == 3 and "does not exist" in str(err), err
    else:
        assert err.code == 4 and words in str(err), err


def test_a_fifo_as_netns_is_refused_without_blocking(manager, cluster, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    err = refused(manager, cluster, netns=str(fifo))
    assert err.code == 4 and "is not a network namespace" in str(err)


def test_an_unknown_network_is_bad_config(manager, cluster):
    err = refused(manager, cluster, network="nope")
    assert err.code == 7 and "network 'nope' does not exist" in str(err)


def test_require_network_namespace_tells_netns_from_other_things(tmp_path):
    assert netns.require_network_namespace(LIVE_NETNS) == LIVE_NETNS
    for other in ("/proc/self/ns/mnt", "/proc/self/ns/uts", "/etc/hostname", "/dev/null", "/"):
        with pytest.raises(netns.NotANetworkNamespace):
            netns.require_network_namespace(other)
    with pytest.raises(FileNotFoundError):
        netns.require_network_namespace(str(tmp_path / "gone"))


def test_one_attachment_is_served_one_request_at_a_time_and_forgotten_when_idle():
    locks = AttachmentLocks()
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with locks.hold("c1/eth0"):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    def second() -> None:
        with locks.hold("c1/eth0"):
            order.append("second in")

    t1 = threading.Thread(target=first)
    t1.start()
    inside.wait(10)
    t2 = threading.Thread(target=second)
    t2.start()
    with locks.hold("c2/eth0"):  # another attachment is not held up
        assert len(locks) == 2
    release.set()
    t1.join(10)
    t2.join(10)
    assert order == ["first in", "first out", "second in"]
    assert len(locks) == 0  # bounded by what is in flight, not by history


def test_the_api_answers_a_store_failure_with_code_11_naming_the_store(tmp_path):
    def failing() -> dict:
        raise KvError("the store /var/lib/x.db failed: database is locked")

    def refusing() -> dict:
        raise AttachError("CNI_IFNAME 'a/b' is not a valid interface name", code=4)

    server = ApiServer(str(tmp_path / "api.sock"), {"attach": failing, "check": refusing})
    server.start()
    try:
        answer = api_client.call(server.path, "attach")
        assert answer["code"] == 11
        assert "/var/lib/x.db" in answer["error"]
        assert "try again when the store is back" in answer["error"]
        assert api_client.call(server.path, "check") == {
            "ok": False,
            "code": 4,
            "error": "CNI_IFNAME 'a/b' is not a valid interface name",
        }
    finally:
        server.stop()
