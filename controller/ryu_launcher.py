"""Run the agent's app under Ryu's ``ryu-manager`` (Ryu 4.34) on Python 3.11.

    python -m controller.ryu_launcher --config-file agent.conf --ofp-tcp-listen-port 6653

Ryu 4.34 imports ``eventlet.wsgi.ALREADY_HANDLED``, which eventlet 0.30+ no
longer has; setting it before ``ryu.cmd.manager`` is imported is the whole
shim.  Importing ``ryu`` first is also what makes controller.compat pick Ryu's
classes for our app.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    import eventlet.wsgi

    if not hasattr(eventlet.wsgi, "ALREADY_HANDLED"):
        eventlet.wsgi.ALREADY_HANDLED = object()
    from ryu.cmd import manager

    args = sys.argv[1:] if argv is None else argv
    sys.argv = ["ryu-manager", "--ofp-listen-host", "127.0.0.1", *args, "controller.app"]
    manager.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
