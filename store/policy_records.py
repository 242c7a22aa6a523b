"""The store's records policy is judged over, read the one way the agent's PolicyWatch
and ``ovs-overlayctl policy check`` / ``trace`` both use: ``k8s/`` (Namespaces, Pods,
NetworkPolicies) and the endpoint records of the network Kubernetes pods are on (a
pod's address: the record that names the pod, from its CNI ADD's
``K8S_POD_NAMESPACE``/``K8S_POD_NAME``).

A record that does not parse is skipped (the agent logs it once, the CLI names it), so
one broken record never hides the rest.
"""

from __future__ import annotations

from netpol.model import Namespace, NetworkPolicy, Pod
from netpol.state import PolicyState, from_records
from store import k8s_objects
from store.cluster import RecordError, decode_endpoint
from store.kv import KeyValue, KvStore

Record = Namespace | Pod | NetworkPolicy | tuple[str, str, int]


def endpoints_prefix(network: str) -> str:
    return f"endpoints/{network}/"


def decode_record(kv: KeyValue) -> Record | None:
    """A ``k8s/`` record as its netpol.model value, an endpoint record as (pod key, IP,
    its revision), or None for an endpoint that belongs to no Kubernetes pod; RecordError
    names what is wrong with a broken one."""
    if kv.key.startswith(k8s_objects.PREFIX):
        return k8s_objects.decode(kv)
    ep = decode_endpoint(kv)
    return None if ep.pod is None else (ep.pod, ep.ip, kv.mod_revision)


def read_policy_state(kv: KvStore, network: str) -> tuple[PolicyState, tuple[str, ...]]:
    """The PolicyState the agents compile now, from one listing of each prefix, and the
    errors of the records skipped (one sentence each)."""
    objects: list[Namespace | Pod | NetworkPolicy] = []
    addresses: list[tuple[str, str, int]] = []
    skipped: list[str] = []
    for prefix in (k8s_objects.PREFIX, endpoints_prefix(network)):
        for record in kv.range(prefix)[0]:
            try:
                value = decode_record(record)
            except RecordError as exc:
                skipped.append(str(exc))
                continue
            if isinstance(value, tuple):
                addresses.append(value)
            elif value is not None:
                objects.append(value)
    return from_records(objects, addresses), tuple(skipped)
