"""The etcd store's URL: which members, TLS files and request timeout (store/etcd.py).

``etcd://HOST:PORT[,HOST:PORT...][?cacert=PATH&cert=PATH&key=PATH&timeout=SECONDS]``:
several members for failover; ``cacert`` switches to https and verifies the members
against that CA; ``cert`` and ``key`` give a client certificate.  Parsing does no I/O.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

SCHEME = "etcd"
DEFAULT_TIMEOUT = 2.0  # seconds, per request to one endpoint
_QUERY_OPTIONS = ("cacert", "cert", "key", "timeout")


@dataclass(frozen=True)
class EtcdOptions:
    """Where the etcd cluster is and how to talk to it (from an ``etcd://`` URL)."""

    endpoints: tuple[tuple[str, int], ...]
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @property
    def names(self) -> str:
        return ",".join(endpoint_name(host, port) for host, port in self.endpoints)

    @property
    def protocol(self) -> str:
        return "https" if self.cacert else "http"


def endpoint_name(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_url(url: str) -> EtcdOptions:
    """``etcd://HOST:PORT[,HOST:PORT...][?cacert=PATH&cert=PATH&key=PATH&timeout=SECONDS]``;
    ValueError naming what is wrong."""
    usage = "use etcd://HOST:PORT[,HOST:PORT...][?cacert=PATH&cert=PATH&key=PATH&timeout=S]"
    scheme, _, rest = url.partition("://")
    if scheme != SCHEME or not rest:
        raise ValueError(f"store URL {url!r} is not an etcd URL; {usage}")
    netloc, _, query = rest.partition("?")
    netloc = netloc.rstrip("/")
    if "/" in netloc:
        raise ValueError(f"store URL {url!r} has a path; etcd URLs have none: {usage}")
    endpoints = tuple(_parse_endpoint(url, item, usage) for item in netloc.split(","))
    try:
        params = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"store URL {url!r} has a malformed query; {usage}") from None
    unknown = sorted(set(params) - set(_QUERY_OPTIONS))
    if unknown:
        raise ValueError(
            f"store URL {url!r} has unknown option(s) {', '.join(unknown)}; "
            f"the options are {', '.join(_QUERY_OPTIONS)}"
        )
    options: dict[str, str] = {}
    for name, values in params.items():
        if len(values) != 1 or not values[0]:
            raise ValueError(f"store URL {url!r}: give option {name} exactly one value")
        options[name] = values[0]
    timeout = DEFAULT_TIMEOUT
    if "timeout" in options:
        try:
            timeout = float(options["timeout"])
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 600:
            raise ValueError(
                f"store URL {url!r}: timeout {options['timeout']!r} must be seconds in (0, 600]"
            )
    cert, key = options.get("cert"), options.get("key")
    if (cert is None) != (key is None):
        raise ValueError(f"store URL {url!r}: give cert and key together (a client certificate)")
    if cert is not None and "cacert" not in options:
        raise ValueError(
            f"store URL {url!r}: a client certificate needs cacert (the CA the server's "
            "certificate is verified against)"
        )
    return EtcdOptions(endpoints, options.get("cacert"), cert, key, timeout)


def _parse_endpoint(url: str, item: str, usage: str) -> tuple[str, int]:
    if item.startswith("["):
        host, sep, port = item[1:].partition("]:")
    else:
        host, sep, port = item.rpartition(":")
    if not host or not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"store URL {url!r}: endpoint {item!r} is not HOST:PORT; {usage}")
    return host, int(port)
