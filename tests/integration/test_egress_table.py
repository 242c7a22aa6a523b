"""The agent's nftables table in a namespace of its own: written whole, replaced in one
transaction, never touching another table, and a refused ruleset leaves the last one."""

from __future__ import annotations

import secrets
import subprocess

import pytest

from controller import egress, nftables
from controller.netns import in_namespace
from lab import netns

pytestmark = pytest.mark.integration

ON = egress.EgressSpec("overlay-gw0", "100.64.0.0/16", True, "ovo")
OFF = egress.EgressSpec("overlay-gw0", "100.64.0.0/16", False, "ovo")


@pytest.fixture
def namespace():
    name = "nft" + secrets.token_hex(3)
    netns.create_namespace(name)
    try:
        yield name
    finally:
        netns.delete_namespace(name)


def listed(ns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True, text=True
    ).stdout


def test_the_table_is_replaced_whole_and_nothing_else_is_touched(namespace):
    with in_namespace(namespace):
        nftables.run(
            "table ip theirs {\n chain c {\n type filter hook forward priority 0;\n }\n}\n"
        )
        nftables.run(egress.ruleset(ON))
        assert 'ip saddr 100.64.0.0/16 oifname != "overlay-gw0" masquerade' in listed(namespace)
        nftables.run(egress.ruleset(OFF))
    rules = listed(namespace)
    assert "masquerade" not in rules
    assert 'iifname "overlay-gw0" oifname != "overlay-gw0" drop' in rules
    assert rules.count("table ip ovs_overlay") == 1
    assert "table ip theirs" in rules
    with in_namespace(namespace):
        nftables.run(egress.remove())
    assert "ovs_overlay" not in listed(namespace) and "table ip theirs" in listed(namespace)


def test_a_refused_ruleset_changes_nothing(namespace):
    with in_namespace(namespace):
        nftables.run(egress.ruleset(ON))
        before = listed(namespace)
        broken = egress.ruleset(OFF).replace("policy accept;", "policy sideways;", 1)
        with pytest.raises(nftables.NftError, match="expecting accept or drop"):
            nftables.run(broken)
    assert listed(namespace) == before  # the delete in the same transaction did not happen


def test_interface_names_nft_could_misread_are_refused():
    with pytest.raises(ValueError, match="not one nft can quote"):
        egress.EgressSpec('gw" accept', "100.64.0.0/16", True, "ovo")
