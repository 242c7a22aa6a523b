"""The agent as an OpenFlow 1.3 app: the same class under os-ken and under Ryu.

The framework calls our handlers on its event thread and swallows their
exceptions, so every handler is wrapped to log loudly with context.  If the
agent cannot start (no OVSDB, a bad config), the process exits non-zero
instead of idling as a controller that programs nothing.
"""

from __future__ import annotations

import functools
import logging
import os
import socket

from controller import config as agent_config
from controller import logformat
from controller.agent import Agent
from controller.compat import (
    CONFIG_DISPATCHER,
    DEAD_DISPATCHER,
    FRAMEWORK,
    MAIN_DISPATCHER,
    App,
    cfg,
    datapath_connection_factory,
    hub,
    ofp_event,
    ofproto_v1_3,
    set_ev_cls,
)
from controller.switch import SwitchLink

LOG = logging.getLogger(__name__)
DEFAULT_OFP_PORT = 6653

agent_config.register(cfg.CONF)


def loud(handler):
    @functools.wraps(handler)
    def wrapper(self, ev):
        try:
            return handler(self, ev)
        except Exception:
            LOG.exception("handler %s failed on %s", handler.__name__, type(ev).__name__)

    return wrapper


class _UnixSocket:
    """A unix socket for os-ken's Datapath, which sets TCP_NODELAY on every connection: the
    option means nothing here and a unix socket refuses it, so it is skipped."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def setsockopt(self, level, *args):
        if level != socket.IPPROTO_TCP:
            self._sock.setsockopt(level, *args)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class OverlayAgentApp(App):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        port = cfg.CONF.ofp_tcp_listen_port or DEFAULT_OFP_PORT
        config = agent_config.from_conf(cfg.CONF, port)
        # ovs-overlay-agent installed it already; under ryu-manager this is the first time.
        logformat.install(config.log_format)
        self.agent = Agent(config, self.connect_unix)
        # One link per OpenFlow connection: br-int can be connected twice at once, over
        # its management socket (dialled by the agent) and over our listener (dialled by
        # ovs-vswitchd).  ``active`` is the one the reconciler uses.
        self.links: dict[object, SwitchLink] = {}  # by os-ken Datapath
        self.active: SwitchLink | None = None

    def start(self):
        thread = super().start()
        LOG.info("starting the agent under %s", FRAMEWORK)
        try:
            self.agent.start()
        except Exception as exc:
            LOG.critical(
                "the agent cannot start: %s", exc, exc_info=LOG.isEnabledFor(logging.DEBUG)
            )
            logging.shutdown()
            os._exit(1)
        return thread

    def connect_unix(self, path: str) -> None:
        """Connect to a switch's management socket, as ovs-ofctl does; the switch then
        comes in through the same handlers as one that connected to our listener."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        hub.spawn(datapath_connection_factory, _UnixSocket(sock), path)

    def stop(self):
        self.agent.stop()

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    @loud
    def switch_features(self, ev):
        dp = ev.msg.datapath
        dp.id = ev.msg.datapath_id  # os-ken's handler sets it too, on its own thread
        link = SwitchLink(dp)
        self.links[dp] = link
        active = self.active
        if active is not None and _spare(active, link):
            # The switch the reconciler talks to, connected a second way (vswitchd dialled
            # our listener while the agent's connection to its management socket is up,
            # or the other way round): the reconciler keeps its link (no second full sync)
            # and this one stays open as a spare.
            LOG.info("switch %#x connected a second way; kept as a spare", dp.id)
            return
        self.active = link
        if active is not None:  # vswitchd redialled: the connection it replaces is dead
            self.links.pop(active.dp, None)
            active.close()
        LOG.info("switch %#x connected", dp.id)
        self.agent.reconciler.connected(link)

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    @loud
    def switch_gone(self, ev):
        link = self.links.pop(ev.datapath, None)
        if link is None:
            return
        link.close()
        if link is not self.active:
            return
        LOG.warning("switch %#x disconnected", ev.datapath.id)
        self.agent.reconciler.disconnected(link)
        spare = next((s for s in self.links.values() if s.datapath_id == link.datapath_id), None)
        self.active = spare
        if spare is not None:
            LOG.info("switch %#x: going on over its other connection", spare.datapath_id)
            self.agent.reconciler.connected(spare)

    def _link(self, msg) -> SwitchLink | None:
        return self.links.get(msg.datapath)

    # Replies are delivered in the state the connection had when they arrived; the
    # reconciler asks right after the features reply, which can be before os-ken's own
    # handler has moved the connection to MAIN, so listen in both states.
    @set_ev_cls(ofp_event.EventOFPBarrierReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    @loud
    def barrier_reply(self, ev):
        link = self._link(ev.msg)
        if link is not None:
            link.on_barrier_reply(ev.msg.xid)

    @set_ev_cls(
        [ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPGroupDescStatsReply],
        [CONFIG_DISPATCHER, MAIN_DISPATCHER],
    )
    @loud
    def multipart_reply(self, ev):
        link = self._link(ev.msg)
        if link is not None:
            more = bool(ev.msg.flags & ev.msg.datapath.ofproto.OFPMPF_REPLY_MORE)
            link.on_multipart_reply(ev.msg.xid, ev.msg.body, more)

    @set_ev_cls(ofp_event.EventOFPAggregateStatsReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    @loud
    def aggregate_reply(self, ev):
        """One body, not a list (the flow count after a full sync)."""
        link = self._link(ev.msg)
        if link is not None:
            link.on_multipart_reply(ev.msg.xid, [ev.msg.body], False)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    @loud
    def error(self, ev):
        link = self._link(ev.msg)
        if link is not None:
            link.on_error(ev.msg.xid, ev.msg.type, ev.msg.code)
        else:
            LOG.error(
                "OFPT_ERROR from an unknown switch: type=%s code=%s", ev.msg.type, ev.msg.code
            )


def _spare(active: SwitchLink, new: SwitchLink) -> bool:
    """Whether ``new`` is a second connection of the switch ``active`` talks to rather than
    its replacement: one of the two goes through the management socket the agent dialled,
    the other through our listener.  (vswitchd keeps one connection per controller target,
    so a new one over the listener means its old one over the listener is gone.)"""
    return active.datapath_id == new.datapath_id and isinstance(
        active.dp.socket, _UnixSocket
    ) != isinstance(new.dp.socket, _UnixSocket)
