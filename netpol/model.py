"""Kubernetes Namespaces, Pods and NetworkPolicies as the policy code needs them: frozen
values parsed from the objects' own JSON (``networking.k8s.io/v1``, ``v1``), checked as
the API server checks them, so a policy that reaches the compiler means what it says.

Parsing is the door (``ovs-overlayctl apply`` and the Kubernetes source refuse with
the error); a record that reaches the store anyway is parsed again by each agent, which
logs and skips it (``PolicyError`` names the object, the field path and the value).
Only what policy needs is kept: a Pod's namespace, name, labels and named container
ports; a Namespace's labels, with ``kubernetes.io/metadata.name`` as the API server sets
it (policies select namespaces by it).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

NAME_LABEL = "kubernetes.io/metadata.name"
PROTOCOLS = ("TCP", "UDP", "SCTP")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
POLICY_TYPES = ("Ingress", "Egress")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # RFC 1123 label, <= 63
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")  # <= 63
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # IANA_SVC_NAME, <= 15


class PolicyError(ValueError):
    """An object that is not valid, naming it, the field path and the value."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # one of OPERATORS
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSelector:
    """Kubernetes' label selector: every requirement must hold; empty selects all."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels):
            return False
        for r in self.match_expressions:
            present = r.key in labels
            if r.operator == "In" and not (present and labels[r.key] in r.values):
                return False
            if r.operator == "NotIn" and present and labels[r.key] in r.values:
                return False
            if r.operator == "Exists" and not present:
                return False
            if r.operator == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ContainerPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    ports: tuple[ContainerPort, ...] = ()  # the named ones (a named policy port's targets)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class IPBlock:
    cidr: str
    except_: tuple[str, ...] = ()


@dataclass(frozen=True)
class Peer:
    """One ``from``/``to`` entry: pods (by selectors, both given: AND) or an ipBlock.
    A missing namespace selector means the policy's own namespace; a missing pod selector
    with a namespace selector means every pod of those namespaces."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    protocol: str = "TCP"
    port: int | str | None = None  # None: every port of the protocol; str: a named port
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    """An ingress or egress rule: empty ``peers`` is every peer, empty ``ports`` every
    port (Kubernetes' omitted or empty lists)."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: frozenset[str]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# -- parsing ----------------------------------------------------------------------------


def parse_namespace(obj: object) -> Namespace:
    meta = _metadata(obj, "namespace", namespaced=False)
    labels = _labels(meta, "namespace " + meta["name"])
    return Namespace(meta["name"], {**labels, NAME_LABEL: meta["name"]})


def parse_pod(obj: object) -> Pod:
    meta = _metadata(obj, "pod", namespaced=True)
    what = f"pod {meta['namespace']}/{meta['name']}"
    labels = _labels(meta, what)
    spec = _object(obj.get("spec", {}), what, "spec")
    ports = []
    for i, c in enumerate(_list(spec.get("containers", []), what, "spec.containers")):
        path = f"spec.containers[{i}]"
        c = _object(c, what, path)
        for j, p in enumerate(_list(c.get("ports", []), what, f"{path}.ports")):
            p = _object(p, what, f"{path}.ports[{j}]")
            number = _port(p.get("containerPort"), what, f"{path}.ports[{j}].containerPort")
            protocol = _protocol(p.get("protocol", "TCP"), what, f"{path}.ports[{j}].protocol")
            if "name" in p:
                name = _port_name(p["name"], what, f"{path}.ports[{j}].name")
                ports.append(ContainerPort(name, number, protocol))
    return Pod(meta["namespace"], meta["name"], labels, tuple(ports))


def parse_network_policy(obj: object) -> NetworkPolicy:
    meta = _metadata(obj, "networkpolicy", namespaced=True)
    what = f"networkpolicy {meta['namespace']}/{meta['name']}"
    spec = _object(obj.get("spec"), what, "spec")
    if "podSelector" not in spec:
        raise PolicyError(f"{what}: spec.podSelector is required ({{}} selects every pod)")
    selector = _selector(spec["podSelector"], what, "spec.podSelector")
    ingress = tuple(
        _rule(r, what, f"spec.ingress[{i}]", "from")
        for i, r in enumerate(_list(spec.get("ingress") or [], what, "spec.ingress"))
    )
    egress = tuple(
        _rule(r, what, f"spec.egress[{i}]", "to")
        for i, r in enumerate(_list(spec.get("egress") or [], what, "spec.egress"))
    )
    types = spec.get("policyTypes")
    if types is None:  # the API server's default
        kinds = frozenset({"Ingress", "Egress"} if egress else {"Ingress"})
    else:
        for i, t in enumerate(_list(types, what, "spec.policyTypes")):
            if t not in POLICY_TYPES:
                raise PolicyError(f"{what}: spec.policyTypes[{i}]: {t!r} is not Ingress or Egress")
        kinds = frozenset(types)
    return NetworkPolicy(meta["namespace"], meta["name"], selector, kinds, ingress, egress)


def _rule(obj: object, what: str, path: str, direction: str) -> Rule:
    obj = _object(obj, what, path)
    peers = tuple(
        _peer(p, what, f"{path}.{direction}[{i}]")
        for i, p in enumerate(_list(obj.get(direction) or [], what, f"{path}.{direction}"))
    )
    ports = tuple(
        _policy_port(p, what, f"{path}.ports[{i}]")
        for i, p in enumerate(_list(obj.get("ports") or [], what, f"{path}.ports"))
    )
    return Rule(peers, ports)


def _peer(obj: object, what: str, path: str) -> Peer:
    obj = _object(obj, what, path)
    pods = obj.get("podSelector")
    namespaces = obj.get("namespaceSelector")
    block = obj.get("ipBlock")
    if block is not None and (pods is not None or namespaces is not None):
        raise PolicyError(f"{what}: {path}: ipBlock may not be combined with a selector")
    if block is None and pods is None and namespaces is None:
        raise PolicyError(
            f"{what}: {path}: give podSelector, namespaceSelector or ipBlock (an empty peer "
            "selects nothing)"
        )
    return Peer(
        None if pods is None else _selector(pods, what, f"{path}.podSelector"),
        None if namespaces is None else _selector(namespaces, what, f"{path}.namespaceSelector"),
        None if block is None else _ip_block(block, what, f"{path}.ipBlock"),
    )


def _ip_block(obj: object, what: str, path: str) -> IPBlock:
    obj = _object(obj, what, path)
    cidr = _cidr(obj.get("cidr"), what, f"{path}.cidr")
    net = ipaddress.ip_network(cidr)
    excepts = []
    for i, e in enumerate(_list(obj.get("except") or [], what, f"{path}.except")):
        sub = ipaddress.ip_network(_cidr(e, what, f"{path}.except[{i}]"))
        if sub.version != net.version or not sub.subnet_of(net) or sub == net:
            raise PolicyError(f"{what}: {path}.except[{i}]: {e} is not strictly within {cidr}")
        excepts.append(str(sub))
    return IPBlock(str(net), tuple(excepts))


def _policy_port(obj: object, what: str, path: str) -> PolicyPort:
    obj = _object(obj, what, path)
    protocol = _protocol(obj.get("protocol", "TCP"), what, f"{path}.protocol")
    port = obj.get("port")
    end = obj.get("endPort")
    if isinstance(port, str):
        port = _port_name(port, what, f"{path}.port")
    elif port is not None:
        port = _port(port, what, f"{path}.port")
    if end is not None:
        if not isinstance(port, int):
            raise PolicyError(f"{what}: {path}.endPort: needs a numeric port, not {port!r}")
        end = _port(end, what, f"{path}.endPort")
        if end < port:
            raise PolicyError(f"{what}: {path}.endPort: {end} is below port {port}")
    return PolicyPort(protocol, port, end)


def _selector(obj: object, what: str, path: str) -> LabelSelector:
    obj = _object(obj, what, path)
    labels = obj.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise PolicyError(f"{what}: {path}.matchLabels: must be an object, not {labels!r}")
    for k, v in labels.items():
        _label(k, v, what, f"{path}.matchLabels")
    requirements = []
    for i, r in enumerate(
        _list(obj.get("matchExpressions") or [], what, f"{path}.matchExpressions")
    ):
        here = f"{path}.matchExpressions[{i}]"
        r = _object(r, what, here)
        key, op, values = r.get("key"), r.get("operator"), r.get("values") or []
        _label(key, "", what, f"{here}.key")
        if op not in OPERATORS:
            raise PolicyError(
                f"{what}: {here}.operator: {op!r} is not one of {', '.join(OPERATORS)}"
            )
        values = _list(values, what, f"{here}.values")
        if op in ("In", "NotIn") and not values:
            raise PolicyError(f"{what}: {here}.values: {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            raise PolicyError(f"{what}: {here}.values: {op} takes no values, not {values!r}")
        for v in values:
            _label(key, v, what, f"{here}.values")
        requirements.append(Requirement(key, op, tuple(values)))
    return LabelSelector(tuple(sorted(labels.items())), tuple(requirements))


# -- fields -------------------------------------------------------------------------------


def _metadata(obj: object, kind: str, namespaced: bool) -> dict:
    if not isinstance(obj, dict):
        raise PolicyError(f"a {kind} must be a JSON object, not {type(obj).__name__}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise PolicyError(f"{kind}: metadata must be an object with a name")
    name = meta.get("name")
    ns = meta.get("namespace")
    if not isinstance(name, str) or not _dns(name, subdomain=kind != "namespace"):
        raise PolicyError(f"{kind}: metadata.name {name!r} is not a valid DNS name")
    if namespaced and (not isinstance(ns, str) or not _dns(ns, subdomain=False)):
        raise PolicyError(f"{kind} {name}: metadata.namespace {ns!r} is not a valid namespace name")
    return meta


def _labels(meta: dict, what: str) -> dict[str, str]:
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise PolicyError(f"{what}: metadata.labels must be an object, not {labels!r}")
    for k, v in labels.items():
        _label(k, v, what, "metadata.labels")
    return dict(labels)


def _label(key: object, value: object, what: str, path: str) -> None:
    """Kubernetes' label syntax: [prefix/]name, name and value <= 63 of [-A-Za-z0-9_.]."""
    if not isinstance(key, str):
        raise PolicyError(f"{what}: {path}: label key {key!r} must be a string")
    prefix, _, name = key.rpartition("/")
    if (prefix and not _dns(prefix, subdomain=True)) or not (
        len(name) <= 63 and _LABEL_NAME.match(name)
    ):
        raise PolicyError(f"{what}: {path}: {key!r} is not a valid label key")
    if not isinstance(value, str) or (
        value and not (len(value) <= 63 and _LABEL_NAME.match(value))
    ):
        raise PolicyError(f"{what}: {path}: {value!r} is not a valid label value for {key}")


def _dns(name: str, subdomain: bool) -> bool:
    if subdomain:
        return len(name) <= 253 and bool(_DNS_SUBDOMAIN.match(name))
    return len(name) <= 63 and bool(_DNS_LABEL.match(name))


def _object(obj: object, what: str, path: str) -> dict:
    if not isinstance(obj, dict):
        raise PolicyError(f"{what}: {path} must be an object, not {obj!r}")
    return obj


def _list(obj: object, what: str, path: str) -> list:
    if not isinstance(obj, list):
        raise PolicyError(f"{what}: {path} must be a list, not {obj!r}")
    return obj


def _port(value: object, what: str, path: str) -> int:
    if type(value) is not int or not 1 <= value <= 65535:
        raise PolicyError(f"{what}: {path}: {value!r} is not a port number in 1..65535")
    return value


def _port_name(value: object, what: str, path: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) > 15
        or not _PORT_NAME.match(value)
        or "--" in value
        or not any(c.isalpha() for c in value)
    ):
        raise PolicyError(
            f"{what}: {path}: {value!r} is not a port name (at most 15 of a-z, 0-9 and '-', "
            "with a letter)"
        )
    return value


def _protocol(value: object, what: str, path: str) -> str:
    if value not in PROTOCOLS:
        raise PolicyError(f"{what}: {path}: {value!r} is not one of {', '.join(PROTOCOLS)}")
    return value


def _cidr(value: object, what: str, path: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except (TypeError, ValueError):
        raise PolicyError(f"{what}: {path}: {value!r} is not a CIDR") from None
