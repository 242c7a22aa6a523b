"""The agent's options, in the oslo.config group ``[agent]``.

One config file serves both launchers: ours and ryu-manager read the same
``--config-file``.  The options are read once, into a frozen AgentConfig that
is passed down; nothing below the app reads the global CONF.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from oslo_config import cfg

from ovsdb.tunnel import TUNNEL_TYPES

GROUP = "agent"

OPTS = [
    cfg.StrOpt("host", help="this host's name in the cluster state (required)"),
    cfg.StrOpt("tunnel_ip", help="this host's underlay IP, the tunnels' source (required)"),
    cfg.StrOpt(
        "store",
        default="sqlite:////var/lib/ovs-overlay/cluster.db",
        help="cluster state: sqlite:///PATH (one machine) or "
        "etcd://HOST:PORT[,HOST:PORT...][?cacert=&cert=&key=&timeout=]",
    ),
    cfg.StrOpt("ovsdb_sock", default="/var/run/openvswitch/db.sock", help="ovsdb-server socket"),
    cfg.StrOpt("bridge", default="br-int", help="the integration bridge the agent programs"),
    cfg.StrOpt(
        "tunnel_type",
        default="vxlan",
        choices=list(TUNNEL_TYPES),
        help="the tunnel between hosts; pods lose its overhead from the underlay MTU "
        "(50 bytes for VXLAN, 58 for Geneve, 38 for GRE); every host must use the same",
    ),
    cfg.StrOpt(
        "datapath_type",
        choices=["system", "netdev"],
        help="force the datapath type (default: system if the kernel module is loaded)",
    ),
    cfg.StrOpt("socket", default="/run/ovs-overlay/agent.sock", help="the CNI server's socket"),
    cfg.IntOpt(
        "underlay_mtu",
        min=576,
        max=65535,
        help="MTU of the underlay network (unset: the MTU of the interface holding tunnel_ip, "
        "read at start; pods get it minus the tunnel's overhead)",
    ),
    cfg.StrOpt(
        "underlay_cidr",
        help="the underlay network (e.g. 198.18.0.0/16); with the userspace datapath the "
        "agent keeps an OVS route to it via underlay_bridge, for ovs-vswitchd run with "
        "--disable-system-route (unset: OVS uses the kernel's routes)",
    ),
    cfg.StrOpt("underlay_bridge", default="br-phy", help="the OVS bridge holding the tunnel IP"),
    cfg.IntOpt(
        "host_ttl",
        default=40,
        min=1,
        help="seconds a host stays in the cluster state after its agent goes silent; long "
        "enough that an agent restart or upgrade never cuts its pods off",
    ),
    cfg.FloatOpt("canary_interval", default=2.0, help="seconds between canary flow checks"),
    cfg.StrOpt(
        "kubernetes_network",
        default="default",
        help="the network Kubernetes pods are attached to: NetworkPolicy applies to its "
        "endpoints that name a pod (K8S_POD_NAMESPACE/K8S_POD_NAME)",
    ),
    cfg.StrOpt(
        "metrics_address",
        default="127.0.0.1",
        help="the address Prometheus metrics are served on (http://ADDRESS:PORT/metrics)",
    ),
    cfg.IntOpt(
        "metrics_port",
        default=9810,
        min=0,
        max=65535,
        help="the port Prometheus metrics are served on; 0 turns metrics off",
    ),
    cfg.StrOpt(
        "log_format",
        default="kv",
        choices=["kv", "json"],
        help="the agent's log lines: key=value pairs, or one JSON object per line",
    ),
]


DOCKER_GROUP = "docker"

DOCKER_OPTS = [
    cfg.StrOpt(
        "plugin_dir",
        help="serve Docker's libnetwork remote network and IPAM drivers on "
        "PLUGIN_DIR/ovs-overlay.sock (driver name ovs-overlay), e.g. /run/docker/plugins; "
        "unset: no Docker driver",
    ),
]


@dataclass(frozen=True)
class AgentConfig:
    host: str
    tunnel_ip: str
    store: str
    ovsdb_sock: str
    bridge: str
    tunnel_type: str
    datapath_type: str | None
    socket: str
    underlay_mtu: int | None
    underlay_cidr: str | None
    underlay_bridge: str
    host_ttl: int
    canary_interval: float
    controller_port: int
    # Defaults (equal to the options') let code that builds a config by hand leave them out.
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 9810
    log_format: str = "kv"
    kubernetes_network: str = "default"
    docker_plugin_dir: str | None = None  # [docker] plugin_dir


REQUIRED = ("host", "tunnel_ip")


def reference() -> str:
    """docs/config.md: every [agent] option, from OPTS itself (a test keeps the file equal
    to this, so the reference cannot drift from the code)."""
    lines = [
        "# Agent configuration reference",
        "",
        "Generated from `controller/config.py` by `ovs-overlayctl config-reference`; do not",
        "edit by hand.  Options go in the `[agent]` section of the file given to",
        "`ovs-overlay-agent --config-file` (or `ryu-manager --config-file`), or in the",
        "environment as `OS_AGENT__<OPTION>` (upper case), which wins over the file.",
        "Options shown as `[SECTION] option` go in that section instead.",
        "",
        "| option | type | default | allowed | what |",
        "|---|---|---|---|---|",
    ]
    for group, opt in [*((GROUP, o) for o in OPTS), *((DOCKER_GROUP, o) for o in DOCKER_OPTS)]:
        allowed = []
        if getattr(opt.type, "choices", None):
            allowed.append(", ".join(f"`{c}`" for c in opt.type.choices))
        low, high = getattr(opt.type, "min", None), getattr(opt.type, "max", None)
        if low is not None or high is not None:
            allowed.append(f"{'' if low is None else low}..{'' if high is None else high}")
        if opt.dest in REQUIRED:
            default = "required"
        elif opt.default is None:
            default = "unset"
        else:
            default = f"`{opt.default}`"
        kind = type(opt).__name__.removesuffix("Opt").lower()
        what = opt.help.replace("|", "\\|")
        name = opt.dest if group == GROUP else f"[{group}] {opt.dest}"
        lines.append(f"| `{name}` | {kind} | {default} | {'; '.join(allowed)} | {what} |")
    return "\n".join(lines) + "\n"


def register(conf) -> None:
    conf.register_opts(OPTS, group=GROUP)
    conf.register_opts(DOCKER_OPTS, group=DOCKER_GROUP)


def from_conf(conf, controller_port: int) -> AgentConfig:
    group = conf[GROUP]
    for required in REQUIRED:
        if not group[required]:
            raise ValueError(f"[agent] {required} is not set; set it in the agent's config file")
    values = {o.dest: group[o.dest] for o in OPTS}
    if values["underlay_cidr"]:
        try:  # as OVS prints it, e.g. 198.18.0.0/16: ensure_route compares the text
            values["underlay_cidr"] = str(ipaddress.ip_network(values["underlay_cidr"], False))
        except ValueError:
            raise ValueError(
                f"[agent] underlay_cidr {values['underlay_cidr']!r} is not a network like "
                "198.18.0.0/16; fix it in the agent's config file"
            ) from None
    plugin_dir = conf[DOCKER_GROUP].plugin_dir
    if plugin_dir and not plugin_dir.startswith("/"):
        raise ValueError(
            f"[docker] plugin_dir {plugin_dir!r} is not an absolute path; use e.g. "
            "/run/docker/plugins"
        )
    return AgentConfig(
        controller_port=controller_port, docker_plugin_dir=plugin_dir or None, **values
    )
