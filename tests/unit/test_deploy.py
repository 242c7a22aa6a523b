"""deploy/: every Kubernetes manifest loads strictly into the official `kubernetes`
client's models (an unknown or misspelt field fails, as `kubectl apply --validate=strict`
would), and what the manifests hand to ovs-overlay is what it accepts: the agent's config
with the DaemonSet's environment, the init container's install-cni command, the readiness
probe's CNI STATUS request, the systemd unit's config.  No kube-apiserver runs here
(docs/operations.md): this checks the objects, not a cluster running them."""

from __future__ import annotations

import datetime
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes.client import models
from oslo_config import cfg

from cni import plugin
from controller import config, k8s_source
from ctl import cni_install
from ctl import main as ctl_main
from store.etcd_url import parse_url

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFEST = DEPLOY / "kubernetes" / "ovs-overlay.yaml"
PRIMITIVES = {
    "str": str,
    "int": int,
    "bool": bool,
    "float": (int, float),
    "object": object,
    "bytes": (str, bytes),
}


def strict(klass: str, data, path: str):
    """``data`` as model ``klass`` (a name from the models' ``openapi_types``), refusing any
    key the model does not define; the models' own setters check required fields."""
    if klass.lower().startswith("list["):  # "list[X]" or, in newer clients, "List[X]"
        assert isinstance(data, list), f"{path}: not a list"
        return [strict(klass[5:-1], d, f"{path}[{i}]") for i, d in enumerate(data)]
    if klass.lower().startswith(("dict(", "dict[")):  # "dict(str, X)" or "Dict[str, X]"
        assert isinstance(data, dict), f"{path}: not a mapping"
        inner = klass[klass.index(",") + 1 : -1].strip()
        return {k: strict(inner, v, f"{path}.{k}") for k, v in data.items()}
    if klass in PRIMITIVES:
        assert isinstance(data, PRIMITIVES[klass]), f"{path}: {data!r} is not {klass}"
        return data
    if klass == "datetime":
        assert isinstance(data, (str, datetime.datetime)), f"{path}: not a time"
        return data
    cls = getattr(models, klass)
    assert isinstance(data, dict), f"{path}: {klass} needs a mapping"
    by_json = {v: k for k, v in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json))
    assert not unknown, f"{path}: {klass} has no field {', '.join(unknown)}"
    return cls(
        **{
            by_json[k]: strict(cls.openapi_types[by_json[k]], v, f"{path}.{k}")
            for k, v in data.items()
        }
    )


def load(doc: dict):
    version = doc["apiVersion"].rpartition("/")[2].capitalize()
    return strict(f"{version}{doc['kind']}", doc, doc["kind"])


def documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def objects() -> dict[str, object]:
    return {f"{d['kind']}/{d['metadata']['name']}": load(d) for d in documents()}


def test_every_manifest_loads_strictly_into_the_clients_models():
    assert sorted(objects()) == [
        "ClusterRole/ovs-overlay",
        "ClusterRole/ovs-overlay-k8s-source",
        "ClusterRoleBinding/ovs-overlay",
        "ClusterRoleBinding/ovs-overlay-k8s-source",
        "ConfigMap/ovs-overlay-config",
        "DaemonSet/ovs-overlay-agent",
        "Deployment/ovs-overlay-k8s-source",
        "ServiceAccount/ovs-overlay",
        "ServiceAccount/ovs-overlay-k8s-source",
    ]


def test_the_strict_loader_refuses_a_misspelt_field():
    (ds,) = [d for d in documents() if d["kind"] == "DaemonSet"]
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(AssertionError, match="V1PodSpec has no field hostNetwrok"):
        load(ds)


def daemonset():
    return objects()["DaemonSet/ovs-overlay-agent"]


def test_the_agent_reads_the_configmap_with_the_nodes_name_and_address(tmp_path, monkeypatch):
    pod = daemonset().spec.template.spec
    assert pod.host_network and pod.host_pid
    (agent,) = pod.containers
    env = {e.name: e.value_from.field_ref.field_path for e in agent.env}
    assert env == {"OS_AGENT__HOST": "spec.nodeName", "OS_AGENT__TUNNEL_IP": "status.hostIP"}
    mounted = next(m for m in agent.volume_mounts if m.sub_path == "agent.conf")
    assert agent.command == ["ovs-overlay-agent", "--config-file", mounted.mount_path]
    conf_file = tmp_path / "agent.conf"
    conf_file.write_text(objects()["ConfigMap/ovs-overlay-config"].data["agent.conf"])
    monkeypatch.setenv("OS_AGENT__HOST", "node-1")  # what the kubelet sets from the fieldRefs
    monkeypatch.setenv("OS_AGENT__TUNNEL_IP", "10.0.0.21")
    agent_config = read_agent_config(conf_file)
    assert (agent_config.host, agent_config.tunnel_ip) == ("node-1", "10.0.0.21")
    assert agent_config.socket == "/run/ovs-overlay/agent.sock"
    store = parse_url(agent_config.store)
    assert len(store.endpoints) == 3 and store.cacert.startswith("/etc/ovs-overlay/etcd/")
    tls = next(m for m in agent.volume_mounts if m.name == "etcd-tls")
    assert all(p.startswith(tls.mount_path + "/") for p in (store.cacert, store.cert, store.key))


def read_agent_config(path: Path) -> config.AgentConfig:
    conf = cfg.ConfigOpts()
    config.register(conf)
    conf(args=["--config-file", str(path)])
    return config.from_conf(conf, controller_port=6653)


def test_the_init_container_installs_the_plugin_onto_the_nodes_mounts(tmp_path, capsys):
    pod = daemonset().spec.template.spec
    (init,) = pod.init_containers
    argv = init.command[1:]
    assert init.command[0] == "ovs-overlayctl" and argv[0] == "install-cni"
    root = dict(a.split("=", 1) for a in argv[1:])["--host-root"]
    # Every node path it writes is under a mount of the node's own directory.
    mounts = {m.mount_path: m.name for m in init.volume_mounts}
    volumes = {v.name: v.host_path.path for v in pod.volumes if v.host_path}
    for option in ("--bin-dir", "--conf-dir", "--copy-to"):
        target = dict(a.split("=", 1) for a in argv[1:])[option]
        mount = next(m for m in mounts if (root + target).startswith(m))
        assert target.startswith(volumes[mounts[mount]]), option
    # Run with the node's root here and the shim the image's first stage compiles (as
    # deploy/Containerfile does it): the command line is one the CLI takes.
    shim = tmp_path / "cni-shim"
    build = re.search(r"^RUN (gcc .*)$", (DEPLOY / "Containerfile").read_text(), re.M)[1]
    build = build.replace("/shim.c", cni_install.SHIM_SOURCE)
    subprocess.run(build.replace("/ovs-overlay-shim", str(shim)).split(), check=True)
    argv = [a if not a.startswith("--host-root=") else f"--host-root={tmp_path}" for a in argv]
    assert "--shim=/opt/ovs-overlay/cni-shim" in argv
    argv = [a if not a.startswith("--shim=") else f"--shim={shim}" for a in argv]
    assert ctl_main.main(argv) == 0
    assert (tmp_path / "opt/cni/bin/ovs-overlay").read_bytes() == shim.read_bytes()
    assert (tmp_path / "opt/cni/bin/ovs-overlay-python").is_file()
    assert "installed /opt/cni/bin/ovs-overlay: the shim from" in capsys.readouterr().out


def test_the_readiness_probe_asks_the_plugin_a_valid_status(monkeypatch):
    (agent,) = daemonset().spec.template.spec.containers
    script = agent.readiness_probe._exec.command[2]
    echoed, _, runs = script.partition("|")
    request = json.loads(shlex.split(echoed)[1])
    assert shlex.split(runs) == ["CNI_COMMAND=STATUS", "ovs-overlay"]
    conf = plugin.parse_config(request, "STATUS")
    assert conf["socket"] == "/run/ovs-overlay/agent.sock"


def test_the_k8s_source_reads_the_agents_store_and_may_list_and_watch_what_it_follows(
    tmp_path,
):
    deployment = objects()["Deployment/ovs-overlay-k8s-source"]
    pod = deployment.spec.template.spec
    (source,) = pod.containers
    assert source.command[0] == "ovs-overlay-k8s-source"
    args = k8s_source.build_parser().parse_args(source.command[1:])
    mounted = next(m for m in source.volume_mounts if m.sub_path == "agent.conf")
    assert args.agent_config == mounted.mount_path and not args.store
    # The store it opens is the agents' etcd (read here from the ConfigMap's agent.conf).
    conf_file = tmp_path / "agent.conf"
    conf_file.write_text(objects()["ConfigMap/ovs-overlay-config"].data["agent.conf"])
    args.agent_config = str(conf_file)
    store = parse_url(k8s_source.store_url_from(args))
    assert len(store.endpoints) == 3
    tls = next(m for m in source.volume_mounts if m.name == "etcd-tls")
    assert all(p.startswith(tls.mount_path + "/") for p in (store.cacert, store.cert, store.key))
    # The role allows exactly list and watch of each resource the source follows, and is
    # bound to the Deployment's service account.
    role = objects()["ClusterRole/ovs-overlay-k8s-source"]
    allowed = {
        (group, resource, verb)
        for rule in role.rules
        for group in rule.api_groups
        for resource in rule.resources
        for verb in rule.verbs
    }
    wanted = {
        (r.group, r.kind.resource, v) for r in k8s_source.RESOURCES for v in ("list", "watch")
    }
    assert allowed == wanted
    binding = objects()["ClusterRoleBinding/ovs-overlay-k8s-source"]
    assert binding.role_ref.name == role.metadata.name
    assert [(s.name, s.namespace) for s in binding.subjects] == [
        (pod.service_account_name, deployment.metadata.namespace)
    ]


def test_the_systemd_units_config_is_one_the_agent_reads():
    unit = (DEPLOY / "systemd" / "ovs-overlay-agent.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).split()
    assert exec_start[0].endswith("/ovs-overlay-agent") and exec_start[1] == "--config-file"
    agent_config = read_agent_config(DEPLOY / "systemd" / "agent.conf")
    assert agent_config.host == "node1" and agent_config.underlay_mtu is None
    assert len(parse_url(agent_config.store).endpoints) == 3
