"""``ovs-overlay-agent``: the per-host agent.

For now it only starts and stops cleanly; the OpenFlow app, the reconciler and
the CNI server arrive with the pipeline issue.  The flags already follow
ryu-manager's so that one command line serves both launchers later.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

LOG = logging.getLogger("ovs-overlay-agent")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ovs-overlay-agent", description=__doc__)
    p.add_argument("--config-file", action="append", default=[])
    p.add_argument("--ofp-listen-host", default="127.0.0.1")
    p.add_argument("--ofp-tcp-listen-port", type=int, default=6653)
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    LOG.info(
        "started (OpenFlow listener %s:%d arrives with the pipeline)",
        args.ofp_listen_host,
        args.ofp_tcp_listen_port,
    )
    stop.wait()
    LOG.info("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
