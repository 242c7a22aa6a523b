"""ovs-overlayctl's cluster-state commands (network, host, endpoint) against a real SQLite
store: where they find the store (--store, --lab, --config), what they print, and
``host remove`` reclaiming exactly a dead host's state (store/cluster.py)."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from ctl.main import main
from ctl.store_options import store_url
from store import open_cluster
from store.cluster import ClusterState, StoreError


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/cluster.db"


@pytest.fixture
def cluster(url):
    c = open_cluster(url)
    c.create_network("default", vni=5001, cidr="100.64.0.0/16")
    yield c
    c.close()


def ctl(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def attach(cluster: ClusterState, host: str, attachment: str, ip: str | None = None) -> str:
    """What an agent's ADD leaves in the store: an address and an endpoint record."""
    if ip is None:
        ip = cluster.allocate_ip("default", host, attachment)
    else:
        cluster.reserve_ip("default", ip, attachment)
    cid, ifname = attachment.split("/")
    mac = "0a:58:" + ":".join(f"{int(octet):02x}" for octet in ip.split("."))  # one per pod
    cluster.put_endpoint(
        "default", host, attachment, mac=mac, ip=ip, container_id=cid, ifname=ifname
    )
    return ip


# -- where the store is --------------------------------------------------------------------


def test_networks_are_created_and_listed_with_the_options_before_or_after_the_command(capsys, url):
    assert (
        ctl(
            capsys,
            "network",
            "--store",
            url,
            "create",
            "blue",
            "--cidr",
            "100.64.1.0/24",
            "--vni",
            "7",
        )[0]
        == 0
    )
    code, out, _ = ctl(capsys, "network", "list", "--store", url)
    assert code == 0
    assert out.splitlines() == [
        "NAME  VNI  INDEX  CIDR           MTU  GATEWAY",
        "blue  7    1      100.64.1.0/24  -    yes",
    ]
    code, out, _ = ctl(capsys, "network", "-o", "json", "--store", url, "list")
    assert json.loads(out) == [
        {
            "name": "blue",
            "vni": 7,
            "index": 1,
            "cidr": "100.64.1.0/24",
            "mtu": None,
            "gateway": True,
        }
    ]
    assert ctl(capsys, "network", "delete", "blue", "--store", url)[0] == 0
    assert json.loads(ctl(capsys, "network", "list", "-o", "json", "--store", url)[1]) == []


@pytest.mark.parametrize("form", ["ini", "json"])
def test_a_config_file_names_the_store_and_the_command_line_wins(capsys, tmp_path, url, form):
    open_cluster(url).create_network("blue", vni=7, cidr="100.64.1.0/24")
    conf = tmp_path / f"ctl.{form}"
    if form == "ini":
        conf.write_text(f"[ovs-overlayctl]\nstore = {url}\n")
    else:
        conf.write_text(json.dumps({"store": url}))
    code, out, _ = ctl(capsys, "network", "list", "-o", "json", "--config", str(conf))
    assert code == 0 and [n["name"] for n in json.loads(out)] == ["blue"]
    other = f"sqlite:///{tmp_path}/other.db"
    code, out, _ = ctl(
        capsys, "network", "list", "-o", "json", "--config", str(conf), "--store", other
    )
    assert code == 0 and json.loads(out) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("[ovs-overlayctl]\nstroe = x\n", "unknown option.*stroe; the options are store, lab"),
        ("[other]\nstore = x\n", r"no \[ovs-overlayctl\] section"),
        ('{"store": 5}', "store must be a non-empty string"),
        ('{"store": ', "is not valid JSON"),
    ],
)
def test_a_bad_config_file_is_named_with_the_fix(capsys, tmp_path, text, message):
    conf = tmp_path / "ctl.conf"
    conf.write_text(text)
    code, _, err = ctl(capsys, "network", "list", "--config", str(conf))
    assert code == 1
    assert f"config file {conf}" in err
    assert re.search(message, err), err


def test_exactly_one_store_is_named(capsys, url):
    for argv in (["network", "list"], ["network", "list", "--store", url, "--lab", "x"]):
        code, _, err = ctl(capsys, *argv)
        assert code == 1 and "exactly one of --store URL and --lab NAME" in err


def test_tls_files_go_into_an_etcd_urls_query_and_only_there(capsys, url):
    tls = {"cacert": "/etc/ca.pem", "cert": "/etc/c.pem", "key": "/etc/c.key"}
    assert store_url("etcd://198.18.1.1:2379,198.18.1.2:2379", tls) == (
        "etcd://198.18.1.1:2379,198.18.1.2:2379?cacert=/etc/ca.pem&cert=/etc/c.pem&key=/etc/c.key"
    )
    assert store_url("etcd://h:2379?timeout=5", {"cacert": "/ca"}) == (
        "etcd://h:2379?timeout=5&cacert=/ca"
    )
    with pytest.raises(ValueError, match="cacert is given both in the URL and as an option"):
        store_url("etcd://h:2379?cacert=/a", {"cacert": "/b"})
    code, _, err = ctl(capsys, "network", "list", "--store", url, "--etcd-cacert", "/ca")
    assert code == 1 and "apply to an etcd:// store only" in err


def test_lab_names_a_labs_store_through_its_manifest(capsys, tmp_path, cluster, url):
    state = tmp_path / "labs"
    (state / "mylab").mkdir(parents=True)
    (state / "mylab" / "lab.json").write_text(
        json.dumps({"name": "mylab", "hosts": 1, "store": {"kind": "sqlite", "url": url}})
    )
    code, out, _ = ctl(
        capsys, "network", "list", "-o", "json", "--lab", "mylab", "--state-dir", str(state)
    )
    assert code == 0 and [n["name"] for n in json.loads(out)] == ["default"]
    code, _, err = ctl(capsys, "network", "list", "--lab", "nolab", "--state-dir", str(state))
    assert code == 1 and "no lab named nolab" in err


# -- hosts and endpoints -------------------------------------------------------------------


def test_host_list_shows_live_and_dead_hosts_with_their_endpoints(capsys, cluster, url):
    cluster.register_host("h1", "198.18.0.1", ttl=30)
    gone = cluster.register_host("h2", "198.18.0.2", ttl=30)
    attach(cluster, "h1", "c1/eth0")
    attach(cluster, "h2", "c2/eth0")
    attach(cluster, "h2", "c3/eth0")
    cluster.unregister_host(gone)  # h2's agent is gone; its pods' state stays
    code, out, _ = ctl(capsys, "host", "list", "--store", url)
    assert code == 0
    # A 30 s lease just granted has 29 or 30 whole seconds left.
    assert re.sub(r"\b(29|30)s\b", "30s", out).splitlines() == [
        "NAME  ALIVE  TUNNEL IP   LEASE LEFT  ENDPOINTS  BLOCKS",
        "h1    yes    198.18.0.1  30s         1          1",
        "h2    no     -           -           2          1",
    ]
    code, out, _ = ctl(capsys, "host", "list", "-o", "json", "--store", url)
    assert json.loads(out)[1] == {
        "name": "h2",
        "alive": False,
        "tunnel_ip": None,
        "lease_left": None,
        "endpoints": 2,
        "blocks": 1,
    }


def test_host_list_shows_a_live_hosts_lease_time_left_on_either_backend(capsys, backend):
    """One lease request per live host, on SQLite (its lease's expiry) and on etcd
    (LeaseTimeToLive); the store is opened with its real clock, as the CLI opens it."""
    cluster = open_cluster(backend.url)
    try:
        cluster.create_network("default", vni=5001, cidr="100.64.0.0/16")
        cluster.register_host("h1", "198.18.0.1", ttl=30)
        cluster.register_host("h2", "198.18.0.2", ttl=3600)
        gone = cluster.register_host("h3", "198.18.0.3", ttl=30)
        attach(cluster, "h3", "c3/eth0")
        cluster.unregister_host(gone)
    finally:
        cluster.close()
    code, out, _ = ctl(capsys, "host", "list", "-o", "json", "--store", backend.url)
    assert code == 0
    left = {h["name"]: h["lease_left"] for h in json.loads(out)}
    assert 0 < left["h1"] <= 30 and 30 < left["h2"] <= 3600 and left["h3"] is None
    code, out, _ = ctl(capsys, "host", "list", "--store", backend.url)
    assert f"198.18.0.2  {left['h2']}s" in out or f"198.18.0.2  {left['h2'] - 1}s" in out


def test_endpoint_list_filters_by_network_and_host(capsys, cluster, url):
    cluster.create_network("blue", vni=7, cidr="100.64.1.0/24")
    ip1 = attach(cluster, "h1", "c1/eth0")
    attach(cluster, "h2", "c2/eth0")
    cluster.allocate_ip("blue", "h1", "c1/net1")
    cluster.put_endpoint(
        "blue",
        "h1",
        "c1/net1",
        mac="0a:58:64:40:01:02",
        ip="100.64.1.2",
        container_id="c1",
        ifname="net1",
        pod="web/api-0",
    )
    rows = json.loads(ctl(capsys, "endpoint", "list", "-o", "json", "--store", url)[1])
    assert [r["pod"] for r in rows] == ["web/api-0", None, None]
    assert [(r["network"], r["host"], r["attachment"]) for r in rows] == [
        ("blue", "h1", "c1/net1"),
        ("default", "h1", "c1/eth0"),
        ("default", "h2", "c2/eth0"),
    ]
    rows = json.loads(
        ctl(
            capsys,
            "endpoint",
            "list",
            "--network",
            "default",
            "--host",
            "h1",
            "-o",
            "json",
            "--store",
            url,
        )[1]
    )
    assert rows == [
        {
            "network": "default",
            "host": "h1",
            "attachment": "c1/eth0",
            "ip": ip1,
            "mac": "0a:58:64:40:00:02",
            "pod": None,
        }
    ]
    code, out, _ = ctl(capsys, "endpoint", "list", "--host", "h2", "--store", url)
    assert code == 0 and out.splitlines()[0].split() == [
        "NETWORK",
        "HOST",
        "ATTACHMENT",
        "IP",
        "MAC",
        "POD",
    ]
    assert len(out.splitlines()) == 2


def test_host_remove_is_refused_while_the_host_is_alive(capsys, cluster, url):
    cluster.register_host("h1", "198.18.0.1", ttl=30)
    attach(cluster, "h1", "c1/eth0")
    before = cluster.kv.range("")[0]
    code, _, err = ctl(capsys, "host", "remove", "h1", "--store", url)
    assert code == 1 and "host h1 is alive" in err and "wait for the host's TTL" in err
    assert cluster.kv.range("")[0] == before


def test_host_remove_reclaims_exactly_the_dead_hosts_state(capsys, cluster, url):
    cluster.create_network("blue", vni=7, cidr="100.64.1.0/24")
    cluster.register_host("h1", "198.18.0.1", ttl=30)
    gone = cluster.register_host("h2", "198.18.0.2", ttl=30)
    kept = attach(cluster, "h1", "c1/eth0")
    attach(cluster, "h2", "c2/eth0")
    attach(cluster, "h2", "c3/eth0", ip="100.64.200.9")  # a static IP, outside its blocks
    cluster.allocate_ip("default", "h2", "c4/eth0")  # an ADD that died before publishing
    cluster.allocate_ip("blue", "h2", "c2/net1")
    # MAC claims as task ADMISSION writes them with an endpoint, and one bare (older form).
    cluster.kv.put("macs/default/0a:00:00:00:00:02", '{"attachment": "c2/eth0", "host": "h2"}')
    cluster.kv.put("macs/default/0a:00:00:00:00:03", "c3/eth0")
    cluster.kv.put("macs/default/0a:00:00:00:00:04", '{"attachment": "c1/eth0", "host": "h1"}')
    cluster.unregister_host(gone)

    code, out, _ = ctl(capsys, "host", "remove", "h2", "-o", "json", "--store", url)
    assert code == 0, out
    assert json.loads(out) == [{"host": "h2", "endpoints": 2, "blocks": 2, "addresses": 4}]

    assert [(e.host, e.attachment) for e in cluster.list_endpoints()] == [("h1", "c1/eth0")]
    assert cluster.allocations("default") == {kept: "c1/eth0"}
    assert cluster.allocations("blue") == {}
    assert [b.host for b in cluster.list_blocks("default")] == ["h1"]
    assert cluster.list_blocks("blue") == []
    assert cluster.kv.range("attachments/")[0][0].key == "attachments/default/c1/eth0"
    assert len(cluster.kv.range("attachments/")[0]) == 1
    claims = [json.loads(kv.value) for kv in cluster.kv.range("macs/")[0] if kv.value[0] == "{"]
    assert claims and all(claim["host"] == "h1" for claim in claims)
    assert "c3/eth0" not in [kv.value for kv in cluster.kv.range("macs/")[0]]
    # The addresses are free again: the next host gets h2's old block.
    assert cluster.allocate_ip("default", "h3", "c5/eth0") == "100.64.0.64"
    code, _, err = ctl(capsys, "host", "remove", "h2", "--store", url)
    assert code == 1 and "host h2 holds nothing in the store" in err


def test_host_remove_stops_when_the_host_comes_back(cluster):
    """Every batch is guarded by the host key's absence: many addresses, several batches."""
    gone = cluster.register_host("h2", "198.18.0.2", ttl=30)
    for i in range(60):
        attach(cluster, "h2", f"c{i}/eth0")
    cluster.unregister_host(gone)
    kv = cluster.kv
    real_txn = kv.txn
    batches = []

    def txn(compares, ops):
        batches.append(len(ops))
        if len(batches) == 2:  # the agent re-registers between two batches
            cluster.register_host("h2", "198.18.0.2", ttl=30)
        return real_txn(compares, ops)

    kv.txn = txn
    try:
        with pytest.raises(StoreError, match="host h2 came back while being removed"):
            cluster.remove_host("h2")
    finally:
        del kv.txn
    assert batches[0] == 100
    assert len(cluster.list_endpoints()) == 60  # endpoints go last: still all there


# -- a real etcd over TLS (tests/etcd_server.py) -------------------------------------------


def test_the_commands_reach_a_real_etcd_over_tls_with_the_cert_options(capsys, etcd_tls, tmp_path):
    tls = etcd_tls.tls
    where = [
        "--store", f"etcd://{etcd_tls.endpoints}",
        "--etcd-cacert", str(tls.cacert),
        "--etcd-cert", str(tls.client_cert),
        "--etcd-key", str(tls.client_key),
    ]  # fmt: skip
    net = "ctl" + uuid.uuid4().hex[:8]
    code, _, err = ctl(capsys, "network", "create", net, "--cidr", "100.127.0.0/24",
                       "--vni", str(10_000_000 + uuid.uuid4().int % 1_000_000), *where)  # fmt: skip
    assert code == 0, err
    try:
        rows = json.loads(ctl(capsys, "network", "list", "-o", "json", *where)[1])
        assert net in [r["name"] for r in rows]
        conf = tmp_path / "ctl.json"
        conf.write_text(
            json.dumps(
                {
                    "store": f"etcd://{etcd_tls.endpoints}",
                    "etcd-cacert": str(tls.cacert),
                    "etcd-cert": str(tls.client_cert),
                    "etcd-key": str(tls.client_key),
                }
            )
        )
        rows = json.loads(ctl(capsys, "network", "list", "-o", "json", "--config", str(conf))[1])
        assert net in [r["name"] for r in rows]
        # Without the client certificate the server refuses, and the CLI says so in a line.
        code, _, err = ctl(capsys, "network", "list", *where[:4])
        assert code == 1 and err.startswith("ovs-overlayctl: ") and len(err.splitlines()) == 1
    finally:
        assert ctl(capsys, "network", "delete", net, *where)[0] == 0
