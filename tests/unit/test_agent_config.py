"""The agent's [agent] options as the launcher reads them from a config file."""

from __future__ import annotations

from pathlib import Path

import pytest
from oslo_config import cfg

from controller import config


def load(tmp_path, **options) -> config.AgentConfig:
    path = tmp_path / "agent.conf"
    lines = ["[agent]", "host = h1", "tunnel_ip = 198.18.0.1"]
    lines += [f"{k} = {v}" for k, v in options.items()]
    path.write_text("\n".join(lines) + "\n")
    conf = cfg.ConfigOpts()
    config.register(conf)
    conf(args=["--config-file", str(path)])
    return config.from_conf(conf, controller_port=6653)


def test_underlay_cidr_is_read_as_ovs_prints_it(tmp_path):
    # The agent compares it with `ovs-appctl ovs/route/show`, which prints the network.
    assert load(tmp_path, underlay_cidr="198.18.0.1/16").underlay_cidr == "198.18.0.0/16"
    assert load(tmp_path).underlay_cidr is None
    assert load(tmp_path).underlay_bridge == "br-phy"


def test_a_bad_underlay_cidr_stops_the_agent_with_one_sentence(tmp_path):
    with pytest.raises(ValueError, match=r"underlay_cidr '198.18.0.0/33' is not a network"):
        load(tmp_path, underlay_cidr="198.18.0.0/33")


def test_the_underlay_mtu_is_the_tunnel_ips_link_unless_configured(tmp_path):
    from controller.agent import Agent

    assert Agent(load(tmp_path, underlay_mtu=9000))._underlay_mtu() == 9000
    assert load(tmp_path).underlay_mtu is None  # no assumed 1500
    # 198.18.0.1 is on no interface of the machine running the tests: no MTU to read.
    with pytest.raises(RuntimeError, match="tunnel_ip 198.18.0.1 is on no interface"):
        Agent(load(tmp_path))._underlay_mtu()


def test_the_config_reference_in_docs_is_the_one_the_options_generate():
    docs = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert docs.read_text() == config.reference(), (
        "docs/config.md is stale: run 'ovs-overlayctl config-reference > docs/config.md'"
    )
    assert all(f"| `{opt.dest}` |" in docs.read_text() for opt in config.OPTS)
