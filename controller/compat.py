"""The one place that imports the OpenFlow framework.

The agent's app runs under os-ken (our own launcher) or under Ryu's
``ryu-manager`` (through ``controller.ryu_launcher``).  Both have the same app
model; which one is live is decided by what was imported first: ryu-manager
imports ``ryu`` before loading our app, our launcher imports nothing of Ryu.
"""

from __future__ import annotations

import sys

if "ryu" in sys.modules:  # loaded by ryu-manager
    from ryu import cfg
    from ryu.base import app_manager
    from ryu.controller import ofp_event
    from ryu.controller.controller import datapath_connection_factory
    from ryu.controller.handler import (
        CONFIG_DISPATCHER,
        DEAD_DISPATCHER,
        MAIN_DISPATCHER,
        set_ev_cls,
    )
    from ryu.lib import hub
    from ryu.ofproto import ofproto_v1_3

    FRAMEWORK = "ryu"
    App = app_manager.RyuApp
else:
    from os_ken import cfg
    from os_ken.base import app_manager
    from os_ken.controller import ofp_event
    from os_ken.controller.controller import datapath_connection_factory
    from os_ken.controller.handler import (
        CONFIG_DISPATCHER,
        DEAD_DISPATCHER,
        MAIN_DISPATCHER,
        set_ev_cls,
    )
    from os_ken.lib import hub
    from os_ken.ofproto import ofproto_v1_3

    FRAMEWORK = "os-ken"
    App = app_manager.OSKenApp

__all__ = [
    "App",
    "CONFIG_DISPATCHER",
    "DEAD_DISPATCHER",
    "FRAMEWORK",
    "MAIN_DISPATCHER",
    "app_manager",
    "datapath_connection_factory",
    "cfg",
    "hub",
    "ofp_event",
    "ofproto_v1_3",
    "set_ev_cls",
]
