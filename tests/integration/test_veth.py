"""A pod's veth (controller/veth.py over controller/rtnl.py) in real namespaces."""

from __future__ import annotations

import secrets

import pytest

from controller import netns, veth
from controller.admission import ERR_INVALID_ENV, AttachError
from lab import netns as lab_netns
from tests.helpers import run

pytestmark = pytest.mark.integration


@pytest.fixture
def spaces():
    """A "host" and two "pod" namespaces of this test's own."""
    prefix = "t" + secrets.token_hex(3)
    names = [f"{prefix}-host", f"{prefix}-pod", f"{prefix}-pod2"]
    try:
        for name in names:
            lab_netns.create_namespace(name)
        yield names
    finally:
        for name in names:
            lab_netns.delete_namespace(name)


def create(host: str, pod: str, host_port: str, ip: str, gateway: str | None = "100.64.9.1"):
    with netns.in_namespace(host):
        return veth.create(
            pod,
            host_port=host_port,
            ifname="eth0",
            mac="0a:58:64:40:09:02",
            ip=ip,
            prefixlen=24,
            gateway=gateway,
            mtu=1400,
        )


def ip(namespace: str, *argv: str) -> str:
    return run(["ip", "netns", "exec", namespace, "ip", *argv]).stdout


def test_both_ends_as_the_pod_and_the_switch_need_them(spaces):
    host, pod, _ = spaces
    host_mac, default_route = create(host, pod, "ovotest1", "100.64.9.2")
    assert default_route
    host_end = ip(host, "-d", "link", "show", "ovotest1")
    # Up, NOARP (the host's stack must not answer the pod's ARP) and promiscuous before
    # vswitchd opens it, with the MAC it reported and the pod's MTU.
    flags = host_end.split("<", 1)[1].split(">", 1)[0].split(",")
    assert {"UP", "NOARP", "PROMISC"} <= set(flags)
    assert f"link/ether {host_mac} " in host_end
    assert "mtu 1400 " in host_end
    assert int(host_mac.split(":")[0], 16) & 0x03 == 0x02  # unicast, locally administered
    pod_end = ip(pod, "-d", "addr", "show", "eth0")
    assert "link/ether 0a:58:64:40:09:02 " in pod_end
    assert "mtu 1400 " in pod_end and ",UP," in pod_end
    assert "inet 100.64.9.2/24 scope global eth0" in pod_end
    assert "brd" not in pod_end.split("inet ", 1)[1].split("\n")[0]
    assert (
        ip(pod, "route", "show", "default").strip()
        == "default via 100.64.9.1 dev eth0 proto static"
    )
    assert ",UP," in ip(pod, "link", "show", "lo")
    tx = run(["ip", "netns", "exec", pod, "ethtool", "-k", "eth0"]).stdout
    assert "tx-checksumming: off" in tx


def test_a_second_attachment_keeps_the_pods_default_route(spaces):
    host, pod, _ = spaces
    create(host, pod, "ovotest1", "100.64.9.2")
    with netns.in_namespace(host):
        _, default_route = veth.create(
            pod,
            host_port="ovotest2",
            ifname="net1",
            mac="0a:58:64:41:09:02",
            ip="100.65.9.2",
            prefixlen=24,
            gateway="100.65.9.1",
            mtu=1400,
        )
    assert not default_route
    assert ip(pod, "route", "show", "default").split()[:3] == ["default", "via", "100.64.9.1"]
    assert "inet 100.65.9.2/24" in ip(pod, "addr", "show", "net1")


def test_an_interface_name_the_pod_uses_is_refused_and_delete_is_idempotent(spaces):
    host, pod, pod2 = spaces
    refusal = pytest.raises(AttachError, match="CNI_IFNAME lo exists already in")
    with refusal as refused, netns.in_namespace(host):
        veth.create(
            pod,
            host_port="ovotest3",
            ifname="lo",
            mac="0a:58:64:40:09:03",
            ip="100.64.9.3",
            prefixlen=24,
            gateway=None,
            mtu=1400,
        )
    assert refused.value.code == ERR_INVALID_ENV
    assert "ovotest3" not in ip(host, "link")  # the kernel made neither end
    # The host end's name taken is not the pod's fault: the kernel's error as it is.
    create(host, pod, "ovotest1", "100.64.9.2")
    with pytest.raises(FileExistsError):
        create(host, pod2, "ovotest1", "100.64.9.4")
    with netns.in_namespace(host):
        veth.delete("ovotest1")
        veth.delete("ovotest1")  # gone already: fine
    assert "ovotest1" not in ip(host, "link")
    assert "eth0" not in ip(pod, "link")  # its peer went with it
