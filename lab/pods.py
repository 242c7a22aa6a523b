"""Lab pods: a namespace per pod, attached through the installed CNI plugin.

``lab pod add`` execs the plugin exactly as a runtime does (CNI_* environment,
the network configuration on stdin, a minimal PATH), so what the lab shows is
what a runtime gets: the plugin, the agent's API, IPAM, veth, OVS port, store
record and flows.

A pod given a Kubernetes name (``--k8s NAMESPACE/NAME``) is also a Kubernetes Pod: its
object (labels, named ports) is applied to the lab's store before the CNI ADD, as the API
server holds a Pod before kubelet starts it, with its Namespace if that is missing; its
labels change later with ``ovs-overlayctl apply``, and ``pod del`` deletes the object.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Sequence

from controller.netns import namespace_path
from ctl import cni_install
from lab import agent_proc, naming, netns
from lab.lab import LabError, LabPaths, open_lab_cluster
from store.k8s_objects import NAMESPACES, PODS, K8sObjects, stored_form

POD_NAME_RE = re.compile(r"^[a-z0-9]{1,8}$")
# A Kubernetes namespace and pod name: DNS labels (RFC 1123), as the API server accepts.
K8S_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
POD_IFNAME = "eth0"
PORT_RE = re.compile(r"^([^:]+):(\d+)/([A-Za-z]+)$")


def pod_namespace(lab: str, host: str, pod: str) -> str:
    return f"{lab}-{host}-{pod}"


def _record(paths: LabPaths, ns: str) -> str:
    return os.path.join(paths.root, "pods", ns + ".json")


def k8s_cni_args(k8s_pod: str) -> str:
    """The CNI_ARGS kubelet's runtime sends for the pod ``NAMESPACE/NAME``."""
    namespace, sep, name = k8s_pod.partition("/")
    if not sep or not K8S_NAME_RE.match(namespace) or not K8S_NAME_RE.match(name):
        raise LabError(
            f"Kubernetes pod {k8s_pod!r} is not NAMESPACE/NAME; use two DNS labels like "
            "default/web-1"
        )
    return f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"


def k8s_pod_object(k8s: str, labels: Sequence[str] = (), ports: Sequence[str] = ()) -> dict:
    """The Pod object a lab pod stands for: ``k8s`` NAMESPACE/NAME, ``labels`` as K=V and
    ``ports`` as NAME:PORT/PROTO (its named container ports), checked as the API server
    checks them (PolicyError names the field and value)."""
    k8s_cni_args(k8s)  # the name's form
    namespace, _, name = k8s.partition("/")
    label_map: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep:
            raise LabError(f"label {item!r} is not KEY=VALUE; use e.g. pod=a")
        label_map[key] = value
    container_ports = []
    for item in ports:
        m = PORT_RE.match(item)
        if not m:
            raise LabError(f"port {item!r} is not NAME:PORT/PROTO; use e.g. serve-80-tcp:80/TCP")
        container_ports.append({"name": m[1], "containerPort": int(m[2]), "protocol": m[3].upper()})
    container: dict = {"name": "main"}
    if container_ports:
        container["ports"] = container_ports
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": label_map},
        "spec": {"containers": [container]},
    }
    return stored_form(obj)[1]


def _apply_pod_object(lab: str, state_root: str, obj: dict) -> bool:
    """Put the Pod (and its Namespace if missing) in the lab's store; True if the Pod was
    created (so a failed ADD takes it away again)."""
    namespace = obj["metadata"]["namespace"]
    with open_lab_cluster(lab, state_root) as cluster:
        objects = K8sObjects(cluster.kv)
        if objects.get(NAMESPACES, None, namespace) is None:
            objects.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        return objects.put(obj) == "created"


def _delete_pod_object(lab: str, state_root: str, k8s: str) -> None:
    namespace, _, name = k8s.partition("/")
    with open_lab_cluster(lab, state_root) as cluster:
        K8sObjects(cluster.kv).delete(PODS, namespace, name)


def _validate(lab: str, host: str, pod: str) -> None:
    naming.validate_lab_name(lab)
    naming.host_index(host)
    if not POD_NAME_RE.match(pod):
        raise LabError(f"pod name {pod!r} is invalid; use 1-8 lower-case letters and digits")
    if not netns.namespace_exists(naming.host_namespace(lab, host)):
        raise LabError(f"lab {lab} has no host {host}; see 'ovs-overlayctl lab status --lab {lab}'")


def pod_add(
    lab: str,
    host: str,
    pod: str,
    network: str = naming.DEFAULT_NETWORK,
    state_root: str = naming.DEFAULT_STATE_ROOT,
    k8s: str | None = None,
    labels: Sequence[str] = (),
    ports: Sequence[str] = (),
    ip: str | None = None,
) -> dict:
    """Create the pod's namespace and attach it with a CNI ADD; returns the attachment.
    ``k8s`` ("NAMESPACE/NAME") reaches the plugin as a runtime under kubelet sends it,
    in CNI_ARGS, so the endpoint's record names that Kubernetes pod; its Pod object, with
    ``labels`` (K=V) and ``ports`` (NAME:PORT/PROTO), is applied to the store first.
    ``ip``: a static address (CNI_ARGS IP=), as tests that need known addresses use."""
    if (labels or ports) and not k8s:
        raise LabError("--label and --port describe a Kubernetes pod; give --k8s NAMESPACE/NAME")
    cni_args = ";".join(
        ([k8s_cni_args(k8s)] if k8s else []) + ([f"IP={ip}"] if ip is not None else [])
    )
    obj = k8s_pod_object(k8s, labels, ports) if k8s else None
    _validate(lab, host, pod)
    paths = LabPaths(state_root, lab)
    ns = pod_namespace(lab, host, pod)
    if netns.namespace_exists(ns):
        raise LabError(f"pod {pod} already exists on {host} (namespace {ns})")
    created = _apply_pod_object(lab, state_root, obj) if obj else False
    try:
        netns.create_namespace(ns)
        try:
            result = _exec_plugin(paths, host, "ADD", network, ns, cni_args)
        except BaseException:
            netns.delete_namespace(ns)
            raise
    except BaseException:
        if created:
            _delete_pod_object(lab, state_root, k8s)
        raise
    address, prefixlen = result["ips"][0]["address"].split("/")
    att = {
        "network": network,
        "ip": address,
        "prefixlen": int(prefixlen),
        "gateway": result["ips"][0].get("gateway"),
        "mac": result["interfaces"][1]["mac"],
        "host_port": result["interfaces"][0]["name"],
    }
    if k8s:
        att["k8s_pod"] = k8s
    os.makedirs(os.path.dirname(_record(paths, ns)), exist_ok=True)
    with open(_record(paths, ns), "w") as f:
        json.dump(att, f)
    return att


def pod_del(lab: str, host: str, pod: str, state_root: str = naming.DEFAULT_STATE_ROOT) -> None:
    """CNI DEL, then the namespace goes, then the Pod object if the pod had one."""
    _validate(lab, host, pod)
    paths = LabPaths(state_root, lab)
    ns = pod_namespace(lab, host, pod)
    try:
        with open(_record(paths, ns)) as f:
            att = json.load(f)
    except OSError:
        raise LabError(f"no pod {pod} on {host} in lab {lab}") from None
    _exec_plugin(paths, host, "DEL", att["network"], ns)
    netns.delete_namespace(ns)
    if att.get("k8s_pod"):
        _delete_pod_object(lab, state_root, att["k8s_pod"])
    os.unlink(_record(paths, ns))


def _exec_plugin(
    paths: LabPaths, host: str, command: str, network: str, ns: str, cni_args: str = ""
) -> dict | None:
    """Run the installed plugin as a runtime would; its CNI error becomes a LabError naming
    the error's code (11 is "try again later": a runtime would retry)."""
    rc, out = cni_exec(paths, host, command, ns, network=network, cni_args=cni_args)
    if rc != 0:
        if not out:
            raise LabError(f"CNI {command} of pod {ns} failed with no output (exit {rc})")
        raise LabError(
            f"CNI {command} of pod {ns} failed (CNI error {out.get('code')}): {out.get('msg')}"
        )
    return out


def cni_exec(
    paths: LabPaths,
    host: str,
    command: str,
    container: str,
    *,
    network: str = naming.DEFAULT_NETWORK,
    version: str = "1.0.0",
    netns_path: str | None = None,
    ifname: str = POD_IFNAME,
    cni_args: str = "",
    cni_path: str | None = None,
    plugin: str = cni_install.PLUGIN_NAME,
    **conf_extra,
) -> tuple[int, dict | None]:
    """Exec the lab's installed plugin like a runtime: CNI_* env, the config on stdin, a
    minimal PATH.  Returns its exit code and parsed output (None when it printed nothing).
    ``plugin``: which of the installed executables (the shim, or the Python plugin)."""
    conf = {
        "cniVersion": version,
        "name": "lab",
        "type": "ovs-overlay",
        "network": network,
        "agentSocket": agent_proc.socket_path(paths.host(host)),
        **conf_extra,
    }
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": namespace_path(container) if netns_path is None else netns_path,
        "CNI_IFNAME": ifname,
        "CNI_PATH": cni_path or paths.cni_bin,
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    if cni_args:
        env["CNI_ARGS"] = cni_args
    proc = subprocess.run(
        [os.path.join(paths.cni_bin, plugin)],
        input=json.dumps(conf),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


def pods(lab: str, state_root: str = naming.DEFAULT_STATE_ROOT) -> list[dict]:
    """Every pod of the lab with its attachment (namespace, network, IP, MAC)."""
    d = os.path.join(LabPaths(state_root, lab).root, "pods")
    out = []
    for entry in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        with open(os.path.join(d, entry)) as f:
            out.append({"namespace": entry.removesuffix(".json"), **json.load(f)})
    return out
