"""``policy check``: the model's verdict with its reasons, over the state read from a
real store the way the agent reads it (store/policy_records.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ctl import main as ctl_main
from ctl.policy_commands import CheckReport, RuleName, check, parse_port
from ctl.status_report import from_json
from store import open_cluster
from store.k8s_objects import K8sObjects
from store.policy_records import read_policy_state
from tests.unit.netpol_e2e import ALL, Case, ip_of, pod_label, pod_object, policy

DENY = policy("deny", "x", {}, ingress=[])
FROM_B = policy(
    "from-b", "x", pod_label("a"), ingress=[{"from": [{"podSelector": pod_label("b")}]}]
)
STATE = Case("", [DENY, FROM_B], []).state()


def test_an_allowed_connection_names_the_rule_and_an_unselected_direction_says_so():
    r = check(STATE, "x/b", "x/a", "TCP", 80)
    assert r.allowed
    assert r.ingress.allowed_by == (RuleName("x/from-b", "Ingress", 0),)
    assert r.ingress.why == "ingress: rule ingress[0] of policy x/from-b allows 80/TCP from x/b"
    assert r.egress.isolated_by == () and "no policy selects x/b for egress" in r.egress.why


def test_a_denied_connection_names_every_isolating_policy_and_no_rule():
    r = check(STATE, "x/c", "x/a", "UDP", 81)
    assert not r.allowed and r.ingress.allowed_by == ()
    assert r.ingress.isolated_by == ("x/deny", "x/from-b")
    assert r.ingress.why == (
        "ingress: x/deny, x/from-b isolate(s) x/a for ingress and no rule of theirs "
        "allows 81/UDP from x/c"
    )


def test_addresses_are_pods_when_a_pod_has_them_and_no_policy_applies_to_others():
    by_ip = check(STATE, ip_of("x/b"), ip_of("x/a"), "TCP", 80)
    assert by_ip.allowed and by_ip.ingress.pod == "x/a"
    outside = check(STATE, "100.64.200.1", "x/a", "TCP", 80)
    assert not outside.allowed and outside.egress.pod is None
    assert "no pod's" in outside.egress.why


def test_a_pod_reaching_itself_is_allowed_whatever_isolates_it():
    assert check(STATE, "x/a", "x/a", "TCP", 80).allowed


@pytest.mark.parametrize(
    "name,message",
    [
        ("x/nope", "pod x/nope is not in the policy state: it needs a Pod object"),
        ("nope", "'nope' is neither NAMESPACE/POD nor an IPv4 address"),
    ],
)
def test_an_unknown_endpoint_is_one_sentence(name, message):
    with pytest.raises(ValueError, match=message):
        check(STATE, name, "x/a", "TCP", 80)


def test_ports_name_number_and_protocol():
    assert parse_port("80/tcp") == (80, "TCP") and parse_port("53") == (53, "TCP")
    for bad, message in (("80/ICMP", "is not TCP, UDP or SCTP"), ("0/UDP", "1-65535")):
        with pytest.raises(ValueError, match=message):
            parse_port(bad)


def test_the_json_report_round_trips_through_the_typed_checker():
    r = check(STATE, "x/c", "x/a", "TCP", 80)
    assert from_json(CheckReport, json.loads(json.dumps(dataclasses.asdict(r)))) == r


@pytest.fixture
def store(tmp_path):
    """A sqlite store holding the e2e model's Namespaces, Pods (with endpoints in network
    default, one pod without), the two policies, and a broken record."""
    url = f"sqlite:///{tmp_path}/cluster.db"
    cluster = open_cluster(url)
    objects = K8sObjects(cluster.kv)
    for ns in ("x", "y", "z"):
        objects.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for i, key in enumerate(ALL):
        objects.put({"apiVersion": "v1", "kind": "Pod", **pod_object(key)})
        if key == "z/c":
            continue  # a Pod not attached yet
        record = {
            "mac": f"0a:58:00:00:00:{i + 1:02x}",
            "ip": ip_of(key),
            "container_id": f"c{i}",
            "ifname": "eth0",
            "pod": key,
        }
        cluster.kv.put(f"endpoints/default/h1/c{i}/eth0", json.dumps(record))
    for p in (DENY, FROM_B):
        objects.put({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", **p})
    cluster.kv.put("endpoints/default/h1/broken/eth0", "{not json")
    try:
        yield url, cluster
    finally:
        cluster.close()


def test_the_store_reads_into_the_state_the_agent_compiles(store):
    _, cluster = store
    state, skipped = read_policy_state(cluster.kv, "default")
    assert [p.key for p in state.pods] == [k for k in ALL if k != "z/c"]
    assert [p.key for p in state.policies] == ["x/deny", "x/from-b"]
    assert len(skipped) == 1 and "endpoints/default/h1/broken/eth0" in skipped[0]
    assert read_policy_state(cluster.kv, "other")[0].pods == ()


def test_the_command_answers_by_its_exit_status(store, capsys):
    url, _ = store
    argv = ["policy", "check", "--store", url, "--from", "x/b", "--to", "x/a", "--port", "80/TCP"]
    assert ctl_main.main(argv) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "x/b -> x/a 80/TCP: allowed"
    assert "rule ingress[0] of policy x/from-b" in out and "skipped a broken record" in err
    argv[5] = "x/c"
    assert ctl_main.main([*argv, "-o", "json"]) == 1
    report = from_json(CheckReport, json.loads(capsys.readouterr().out))
    assert report.ingress.isolated_by == ("x/deny", "x/from-b")
    assert ctl_main.main([*argv[:6], "--to", "z/c", "--port", "80"]) == 1
    assert "pod z/c is not in the policy state" in capsys.readouterr().err


def test_the_agent_polices_a_new_pod_known_from_its_ovsdb_before_the_stores_watch(store):
    """z/c's record has not reached the policy watch (the ADD publishes before the watch
    event): its port's ofport and pod name from OVSDB go with the port's flows, so its
    first packet already meets its policy."""
    from controller.policy_watch import PolicyWatch
    from netpol.incremental import PolicyCompiler

    _, cluster = store
    submitted = []
    watch = PolicyWatch(cluster, "default", lambda name: 1, lambda c: submitted.append(c) or 1)
    watch.load()
    watch.submit_with([], {ip_of("z/c"): (7, "z/c")})
    compiler = PolicyCompiler(generation=1)
    for batch in submitted:
        compiler.update(i for c in batch for i in c.inputs)
    program = compiler.program()
    assert ("z/c", ip_of("z/c")) in [(p.key, p.ip) for p in program.state.pods]
    assert [(lp.key, lp.ofport) for lp in program.view.local] == [("z/c", 7)]
    # A second submit with nothing new hands nothing on.
    watch.submit_with([], {ip_of("z/c"): (7, "z/c")})
    assert submitted[-1] == []
