"""The upstream NetworkPolicy e2e model in the lab, probed by real connections.

Kubernetes' e2e suite (test/e2e/network/netpol: model.go, probe.go, truthtable.go) puts
pods a, b and c in namespaces x, y and z, every pod serving TCP and UDP on ports 80 and
81, and judges a policy by the whole reachability matrix: for each port and protocol,
from every pod to every pod.  Here each pod is a lab pod (a namespace attached by the
real CNI plugin, spread over the lab's hosts) running ``SERVER``; ``Matrix.probe`` runs
``PROBER`` in every source pod at once, each probing every destination concurrently, so
a matrix costs about one probe timeout, not 81 of them.

A TCP probe is allowed when the connection is accepted and the server names itself; a
UDP probe when the reply names the server.  Denied ones are dropped (no reset), so
they end at the timeout.  Like upstream's probe, a denied result is tried again before
it counts (a first packet can lose its ARP race on a pod that just started); an allowed
one never is: a single allowed connection is enough to show a policy leaks.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from controller.netns import namespace_path

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
PORTS = (80, 81)
PROTOCOLS = ("TCP", "UDP")
PROBE_TIMEOUT = 1.0  # seconds a denied probe waits; allowed ones answer in milliseconds
DENIED_TRIES = 2

# Serves TCP and UDP on each port given: answers the pod's name.  Ready once it prints.
SERVER = r"""
import socket, sys, threading
name = sys.argv[1].encode()
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept()
        try: c.sendall(name)
        finally: c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        _, peer = s.recvfrom(64); s.sendto(name, peer)
threads = [threading.Thread(target=f, args=(int(p),), daemon=True)
           for p in sys.argv[2:] for f in (tcp, udp)]
for t in threads: t.start()
print("ready", flush=True)
threading.Event().wait()
"""

# Probes every (ip, port, proto) given as JSON in argv at once; prints what answered.  (Not
# on stdin: every prober must start probing at once, not when its turn to be read comes.)
PROBER = r"""
import asyncio, json, socket, sys
timeout = float(sys.argv[1])
async def tcp(ip, port):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout)
        data = await asyncio.wait_for(r.read(64), timeout); w.close()
        return data.decode()
    except (OSError, asyncio.TimeoutError):
        return None
async def udp(ip, port):
    loop = asyncio.get_running_loop(); got = loop.create_future()
    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if not got.done(): got.set_result(data.decode())
    t, _ = await loop.create_datagram_endpoint(P, remote_addr=(ip, port))
    try:
        t.sendto(b"?")
        return await asyncio.wait_for(got, timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    finally:
        t.close()
async def main():
    targets = json.loads(sys.argv[2])
    answers = await asyncio.gather(*((tcp if p == "TCP" else udp)(ip, port) for ip, port, p in targets))
    print(json.dumps(answers))
asyncio.run(main())
"""


@dataclass(frozen=True)
class ModelPod:
    namespace: str  # Kubernetes namespace: x, y, z
    name: str  # a, b, c
    netns: str  # its network namespace in the lab
    ip: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


Matrix = dict[tuple[str, str], bool]  # (from "x/a", to "y/b") -> allowed


def start_servers(pods: Iterable[ModelPod], ports: Sequence[int] = PORTS) -> list[subprocess.Popen]:
    """A server in each pod; returns the processes (stop them with ``stop_servers``)."""
    procs = []
    try:
        for pod in pods:
            proc = subprocess.Popen(
                ["nsenter", f"--net={namespace_path(pod.netns)}", "--", sys.executable, "-c"]
                + [SERVER, pod.key, *map(str, ports)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the server in {pod.key} did not start: {proc.stderr.read()}")
    except BaseException:
        stop_servers(procs)
        raise
    return procs


def stop_servers(procs: Iterable[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()  # the PID we started
        proc.wait()


def _probe_from(src: ModelPod, targets: Sequence[tuple[str, int, str]], timeout: float):
    return subprocess.Popen(
        ["nsenter", f"--net={namespace_path(src.netns)}", "--", sys.executable, "-c"]
        + [PROBER, str(timeout), json.dumps(targets)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def probe(
    pods: Sequence[ModelPod], port: int, protocol: str, timeout: float = PROBE_TIMEOUT
) -> Matrix:
    """The reachability matrix on one port and protocol, every source probing at once."""
    result: Matrix = {}
    pending = [(s, d) for s, d in itertools.product(pods, pods)]
    for _ in range(DENIED_TRIES):
        by_source: dict[ModelPod, list[ModelPod]] = {}
        for s, d in pending:
            by_source.setdefault(s, []).append(d)
        running = []
        for src, dsts in by_source.items():
            proc = _probe_from(src, [(d.ip, port, protocol) for d in dsts], timeout)
            running.append((src, dsts, proc))
        for src, dsts, proc in running:
            out, err = proc.communicate(timeout=30 + 4 * timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"probing from {src.key} failed: {err.strip()}")
            for dst, answer in zip(dsts, json.loads(out), strict=True):
                if answer is not None and answer != dst.key:
                    raise AssertionError(f"{src.key} -> {dst.ip} answered {answer}, not {dst.key}")
                result[(src.key, dst.key)] = answer is not None
        pending = [(s, d) for s, d in pending if not result[(s.key, d.key)]]
        if not pending:
            break
    return result


def expect_all(pods: Sequence[ModelPod], allowed: bool = True) -> Matrix:
    return {(s.key, d.key): allowed for s in pods for d in pods}


def differences(got: Matrix, want: Mapping[tuple[str, str], bool]) -> list[str]:
    """The cells that differ, as upstream's truth table prints them."""
    return [
        f"{s} -> {d}: {'allowed' if got[(s, d)] else 'denied'}, expected "
        f"{'allowed' if want[(s, d)] else 'denied'}"
        for (s, d) in sorted(want)
        if got[(s, d)] != want[(s, d)]
    ]
