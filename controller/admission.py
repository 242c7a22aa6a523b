"""The agent's admission of endpoint requests: the CNI plugin's checks again (the API socket
has other clients), and what only the agent can see: whether CNI_NETNS is a network
namespace.  (Whether a static IP or MAC is held by another attachment is the store's
answer: the claim transaction that is an ADD's first write.)

Every check here runs before any side effect, so a refusal changes nothing.  Codes follow
the CNI spec: 3 for a container (netns) that is gone, 4 for a bad environment or CNI_ARGS
value, 7 for bad configuration, and 11 only for what a retry can fix (the store away).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cni import admission as request_checks
from controller import netns
from controller.api import ApiError
from store.kv import KvError

ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
MIN_MTU = 576


class AttachError(ApiError):
    """An attachment request that cannot be served; ``code`` is the CNI error code."""


def admit(
    command: str,
    container_id: str,
    ifname: str,
    netns_path: str | None,
    ip: str | None = None,
    mac: str | None = None,
    mtu: object = None,
) -> tuple[str | None, str | None]:
    """The plugin's checks of one request; returns the static IP and MAC, normalised."""
    try:
        static = request_checks.check_request(command, container_id, ifname, netns_path, ip, mac)
    except request_checks.Refused as exc:
        raise AttachError(str(exc), exc.code) from None
    if mtu is not None and (type(mtu) is not int or mtu < MIN_MTU):
        raise AttachError(
            f"mtu {mtu!r} must be a whole number, {MIN_MTU} or more", ERR_INVALID_CONFIG
        )
    return static


def require_netns(path: str, not_a_netns_code: int = ERR_INVALID_ENV) -> None:
    """CNI_NETNS must be a live network namespace: missing is code 3 (the container is
    gone); anything else there (a file, a mount namespace) is ``not_a_netns_code``."""
    try:
        netns.require_network_namespace(path)
    except (FileNotFoundError, NotADirectoryError):
        raise AttachError(
            f"CNI_NETNS {path}: the network namespace does not exist (the container is "
            "gone?); pass the netns of a running container",
            code=ERR_UNKNOWN_CONTAINER,
        ) from None
    except (netns.NotANetworkNamespace, OSError) as exc:
        raise AttachError(
            f"CNI_NETNS {path} is not a network namespace ({exc}); pass the container's "
            "netns, e.g. /run/netns/NAME or /proc/PID/ns/net",
            code=not_a_netns_code,
            reason="not_a_netns" if not_a_netns_code == ERR_INVALID_ENV else "container_gone",
        ) from None


def store_unavailable(what: str, exc: KvError) -> AttachError:
    """The cluster store failing mid-request: code 11, the one thing a retry can fix.
    KvError messages name the store (its file or endpoints)."""
    return AttachError(
        f"{what} failed: the cluster store did not answer ({exc}); try again when the store "
        "is back",
        code=ERR_TRY_AGAIN,
        reason="store_unavailable",
    )


class AttachmentLocks:
    """One lock per attachment (CONTAINER_ID/IFNAME): its ADD, DEL and CHECK run one at a
    time, so two concurrent ADDs cannot both pass the "attached already" check.  An entry
    lives only while a request holds or waits for it: the table is bounded by the requests
    in flight, not by the attachments ever seen."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, list[int]]] = {}

    @contextmanager
    def hold(self, attachment: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.setdefault(attachment, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if not users[0]:
                    del self._locks[attachment]

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)
