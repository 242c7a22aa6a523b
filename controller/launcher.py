"""``ovs-overlay-agent``: start the agent's os-ken app in-process.

os-ken 4.x has no manager command, so this does what ryu-manager did, with its
flags (``--config-file``, ``--ofp-listen-host``, ``--ofp-tcp-listen-port``,
``--verbose``).  The OpenFlow listener defaults to 127.0.0.1: the controller is
never reachable from the network.  ``AppManager.run_apps`` hangs on Ctrl-C
with the native hub, so the apps are instantiated here and stopped from a
signal-set event.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

APP = "controller.app"
STOP_TIMEOUT = 3.0


def main(argv: list[str] | None = None) -> None:
    # eventlet (os-ken's hub) imports dnspython twice for its green resolver: 16 MB of the
    # idle agent's 83 MB and a good part of its imports, for names the agent never
    # resolves (its listener, OVSDB and the lab's etcd are addresses and paths).  Without
    # it, a host name in the store URL is resolved by the C library, which blocks the hub
    # for that one lookup.  Set before anything imports eventlet.
    os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")
    # The order matters: app_manager before controller (a circular import otherwise), and
    # controller before parsing, since importing it registers the --ofp-* options.
    from os_ken import cfg
    from os_ken import log as osken_log  # noqa: F401  (registers --verbose and friends)
    from os_ken.base import app_manager
    from os_ken.controller import controller  # noqa: F401

    from controller import config as agent_config
    from controller import logformat

    agent_config.register(cfg.CONF)  # log_format, before the app is loaded
    cfg.CONF.set_default("ofp_listen_host", "127.0.0.1")
    cfg.CONF(
        args=sys.argv[1:] if argv is None else argv, project="ovs-overlay", prog="ovs-overlay-agent"
    )
    logformat.install(
        cfg.CONF[agent_config.GROUP].log_format,
        logging.DEBUG if cfg.CONF.verbose else logging.INFO,
    )
    for noisy in ("os_ken.base.app_manager", "os_ken.controller.controller", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    manager = app_manager.AppManager.get_instance()
    manager.load_apps([APP])
    manager.instantiate_apps(**manager.create_contexts())
    stop.wait()
    log = logging.getLogger("ovs-overlay-agent")
    log.info("stopping")
    # Our own parts stop cleanly (API socket removed, OVSDB closed), within a bound.
    # os-ken's close() is not called: it joins hub threads that have no stop (the
    # OpenFlow listener blocks in accept()) and was seen to hang for seconds.  Exiting
    # drops the OpenFlow connections; br-int keeps its flows (fail_mode=secure).
    apps = [a for a in manager.applications.values() if hasattr(a, "agent")]
    closer = threading.Thread(target=lambda: [a.stop() for a in apps], daemon=True)
    closer.start()
    closer.join(STOP_TIMEOUT)
    if closer.is_alive():
        log.warning("the agent did not stop within %.0fs; exiting anyway", STOP_TIMEOUT)
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
