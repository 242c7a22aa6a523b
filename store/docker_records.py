"""What a host's agent keeps about Docker's networks and endpoints (controller/cnm/).

Keys::

    docker/HOST/networks/DOCKER_NETWORK_ID   {"network", "created", "deleted"}
    docker/HOST/endpoints/DOCKER_ENDPOINT_ID {"docker_network", "network", "attachment",
                                              "ip", "mac", "joined", "sandbox", "created"}

Docker's networks are local-scoped (controller/cnm/network.py says why), so a Docker
network id means something on one host only: each host keeps its own records, under its
name.  They live in the store rather than in the agent's memory so that a restarted agent
(or a restarted dockerd, which does not replay CreateNetwork) still knows which ovs-overlay
network a Docker network is, and which endpoints are Docker's.

Records are decoded tolerantly: one that does not parse (another writer, a later version)
is skipped by the readers here and named in the log, never a reason to fail a request.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from dataclasses import asdict, dataclass

from store.kv import KvStore

LOG = logging.getLogger(__name__)

ATTACHMENT_PREFIX = "docker:"  # an endpoint's attachment: docker:DOCKER_ENDPOINT_ID/IFNAME
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class DockerNetwork:
    """A Docker network id mapped onto an ovs-overlay network; ``created``: the driver
    made the ovs-overlay network for it (and deletes it with it); ``deleted``: Docker
    deleted it, but the network it made was kept (something still held an address in
    it), so the record stays until the agent's Docker cleanup deletes that network."""

    docker_id: str
    network: str
    created: bool = False
    deleted: bool = False


@dataclass(frozen=True)
class DockerEndpoint:
    """A Docker endpoint: its address claim (``attachment``), and once joined its port."""

    docker_id: str
    docker_network: str
    network: str
    attachment: str
    ip: str
    mac: str
    joined: bool = False
    sandbox: str | None = None  # the SandboxKey Join named (for operators)
    created: float = 0.0  # epoch seconds of CreateEndpoint: the age of an unjoined one


def _prefix(host: str, kind: str) -> str:
    return f"docker/{host}/{kind}/"


def put_network(kv: KvStore, host: str, net: DockerNetwork) -> None:
    kv.put(
        _prefix(host, "networks") + net.docker_id,
        json.dumps({"network": net.network, "created": net.created, "deleted": net.deleted}),
    )


def get_network(kv: KvStore, host: str, docker_id: str) -> DockerNetwork | None:
    found = kv.get(_prefix(host, "networks") + docker_id)
    return None if found is None else _decode_network(docker_id, found.value)


def list_networks(kv: KvStore, host: str) -> list[DockerNetwork]:
    return _list(kv, host, "networks", _decode_network)


def delete_network(kv: KvStore, host: str, docker_id: str) -> bool:
    return kv.delete(_prefix(host, "networks") + docker_id)


def put_endpoint(kv: KvStore, host: str, ep: DockerEndpoint) -> None:
    record = asdict(ep)
    del record["docker_id"]
    kv.put(_prefix(host, "endpoints") + ep.docker_id, json.dumps(record))


def get_endpoint(kv: KvStore, host: str, docker_id: str) -> DockerEndpoint | None:
    found = kv.get(_prefix(host, "endpoints") + docker_id)
    return None if found is None else _decode_endpoint(docker_id, found.value)


def list_endpoints(kv: KvStore, host: str) -> list[DockerEndpoint]:
    return _list(kv, host, "endpoints", _decode_endpoint)


def _list(kv: KvStore, host: str, kind: str, decode) -> list:
    """This host's records of ``kind``, decoded; a broken one is skipped (logged)."""
    prefix = _prefix(host, kind)
    found = (decode(item.key[len(prefix) :], item.value) for item in kv.range(prefix)[0])
    return [record for record in found if record is not None]


def delete_endpoint(kv: KvStore, host: str, docker_id: str) -> bool:
    return kv.delete(_prefix(host, "endpoints") + docker_id)


def _load(kind: str, docker_id: str, value: str) -> dict | None:
    try:
        d = json.loads(value)
    except ValueError:
        d = None
    if not isinstance(d, dict):
        LOG.warning(
            "skipping Docker %s record %s: not a JSON object: %.60r", kind, docker_id, value
        )
        return None
    return d


def _decode_network(docker_id: str, value: str) -> DockerNetwork | None:
    d = _load("network", docker_id, value)
    if d is None:
        return None
    network = d.get("network")
    if not isinstance(network, str) or not network:
        LOG.warning("skipping Docker network record %s: no network name", docker_id)
        return None
    return DockerNetwork(docker_id, network, d.get("created") is True, d.get("deleted") is True)


def _decode_endpoint(docker_id: str, value: str) -> DockerEndpoint | None:
    d = _load("endpoint", docker_id, value)
    if d is None:
        return None
    fields = ("docker_network", "network", "attachment", "ip", "mac")
    if not all(isinstance(d.get(f), str) and d.get(f) for f in fields):
        LOG.warning("skipping Docker endpoint record %s: one of %s is missing", docker_id, fields)
        return None
    # What the handlers and the cleanup derive names from (the MAC's claim, the port's
    # name, the lock) must be well formed, or a request or the agent's start would fail on it.
    problem = _endpoint_problem(docker_id, d["attachment"], d["ip"], d["mac"])
    if problem:
        LOG.warning("skipping Docker endpoint record %s: %s", docker_id, problem)
        return None
    sandbox = d.get("sandbox")
    created = d.get("created")
    return DockerEndpoint(
        docker_id,
        *(d[f] for f in fields),
        joined=d.get("joined") is True,
        sandbox=sandbox if isinstance(sandbox, str) else None,
        created=float(created) if isinstance(created, int | float) else 0.0,
    )


def _endpoint_problem(docker_id: str, attachment: str, ip: str, mac: str) -> str | None:
    """What is wrong with an endpoint record's names, None when nothing."""
    owner, _, ifname = attachment.rpartition("/")
    if owner != ATTACHMENT_PREFIX + docker_id or not ifname:
        return f"attachment {attachment!r} is not {ATTACHMENT_PREFIX}{docker_id}/IFNAME"
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        return f"ip {ip!r} is not an IPv4 address"
    if not _MAC_RE.match(mac):
        return f"mac {mac!r} is not a MAC address like 0a:58:64:41:00:02"
    return None
