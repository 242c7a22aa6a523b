"""Crafting and catching packets inside lab namespaces, with scapy in a child process
(scapy must open its sockets inside the namespace, so it runs there)."""

from __future__ import annotations

import subprocess
import sys

from lab import netns

SNIFF = r"""
import sys
from scapy.all import sniff, UDP, Raw
ready = lambda: print("READY", flush=True)
last = sys.argv[3].encode()
pkts = sniff(iface=sys.argv[1], filter="udp and dst port 9999", timeout=float(sys.argv[2]),
             started_callback=ready, stop_filter=lambda p: Raw in p and p[Raw].load == last)
for p in pkts:
    print(bytes(p[Raw].load).decode(errors="replace"), flush=True)
"""


class Sniffer:
    """Collect the payloads of UDP packets to port 9999 arriving on ``iface`` in ``namespace``,
    until one carries ``last`` (the test's closing, legitimate packet) or ``seconds`` pass."""

    def __init__(self, namespace: str, last: str, iface: str = "eth0", seconds: float = 20.0):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SNIFF, iface, str(seconds), last],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: netns.enter_namespace(namespace),
        )
        assert self.proc.stdout.readline().strip() == "READY"

    def payloads(self) -> list[str]:
        out, _ = self.proc.communicate(timeout=30)
        return [line for line in out.splitlines() if line]


def send(namespace: str, code: str) -> None:
    """Run scapy ``code`` (with ``from scapy.all import *``) inside ``namespace``."""
    netns.run_in_namespace(
        namespace, [sys.executable, "-c", "from scapy.all import *\nconf.verb = 0\n" + code]
    )
