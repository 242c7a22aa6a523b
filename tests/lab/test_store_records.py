"""Bad and conflicting records written straight into a lab's store (what slips past
admission: another writer, an older version, etcdctl) stop no agent: each is logged once
and skipped, and pods on every host still ADD, reach each other and DEL."""

from __future__ import annotations

import itertools
import json
import os
import time

import pytest

from lab import agent_proc, lab, naming, pods
from store import open_kv
from tests.helpers import host_paths, running_lab

pytestmark = pytest.mark.lab

HOSTS = ("h1", "h2", "h3")
SEEN_WITHIN = 30.0  # how long an agent may take to see a record (a wait, not a measure)


def agent_log(name: str, host: str) -> str:
    with open(os.path.join(host_paths(name, host).logdir, "agent.log"), errors="replace") as f:
        return f.read()


def wait_logged(name: str, host: str, text: str) -> str:
    deadline = time.monotonic() + SEEN_WITHIN
    while time.monotonic() < deadline:
        log = agent_log(name, host)
        if text in log:
            return log
        time.sleep(0.1)
    pytest.fail(f"{host}'s agent never logged {text!r}")


def test_bad_and_conflicting_records_stop_no_agent():
    with running_lab(len(HOSTS)) as name:
        first = pods.pod_add(name, "h1", "a")
        second = pods.pod_add(name, "h2", "b")
        pids = {h: agent_proc.agent_pid(host_paths(name, h)) for h in HOSTS}
        kv = open_kv(lab.LabPaths(naming.DEFAULT_STATE_ROOT, name).store_url)
        try:
            # A pod on h3 with b's MAC (b on h2 is older and wins), garbage JSON, a host
            # with a bad tunnel IP, and a network with the default network's VNI.
            evil = "endpoints/default/h3/evil/eth0"
            kv.put(
                evil,
                json.dumps(
                    {
                        "mac": second["mac"],
                        "ip": "100.64.250.5",
                        "container_id": "evil",
                        "ifname": "eth0",
                    }
                ),
            )
            kv.put("endpoints/default/h2/garbage", "{not json")
            kv.put("hosts/bogus", json.dumps({"tunnel_ip": "999.1.1.1"}))
            kv.put(
                "networks/twin", json.dumps({"vni": naming.DEFAULT_VNI, "cidr": "100.65.0.0/16"})
            )
        finally:
            kv.close()
        for host in ("h1", "h2"):  # h3's own endpoints come from its OVSDB, not the store
            wait_logged(name, host, evil)
        for host in HOSTS:
            wait_logged(name, host, "networks/twin")
            wait_logged(name, host, "endpoints/default/h2/garbage")
            wait_logged(name, host, "hosts/bogus")

        made = {"h1/a": first, "h2/b": second}
        for host in HOSTS:
            made[f"{host}/c"] = pods.pod_add(name, host, "c")
        for src, dst in itertools.permutations(made, 2):
            host, pod = src.split("/")
            assert lab.ping_from(pods.pod_namespace(name, host, pod), made[dst]["ip"]), (
                f"{src} -> {dst}"
            )
        for host in HOSTS:
            pods.pod_del(name, host, "c")

        assert {h: agent_proc.agent_pid(host_paths(name, h)) for h in HOSTS} == pids
        for host in HOSTS:
            log = agent_log(name, host)
            for key in ("endpoints/default/h2/garbage", "hosts/bogus", "networks/twin"):
                assert log.count(key) == 1, f"{host} logged {key} {log.count(key)} times"
            assert "Traceback" not in log, f"{host}'s agent logged an exception"
        assert agent_log(name, "h1").count(evil) == 1
