import pytest

from ovsdb.datapath import NETDEV, SYSTEM, choose_datapath_type


def test_system_when_the_kernel_module_is_loaded(tmp_path):
    choice = choose_datapath_type(module_dir=str(tmp_path))
    assert choice.datapath_type == SYSTEM
    assert "kernel module loaded" in choice.reason


def test_netdev_without_the_kernel_module(tmp_path):
    choice = choose_datapath_type(module_dir=str(tmp_path / "missing"))
    assert choice.datapath_type == NETDEV
    assert "userspace" in choice.reason


def test_forced_type_wins_over_detection(tmp_path):
    assert choose_datapath_type("netdev", module_dir=str(tmp_path)).datapath_type == NETDEV
    assert choose_datapath_type("system", module_dir=str(tmp_path / "x")).datapath_type == SYSTEM


def test_unknown_forced_type_names_the_choices():
    with pytest.raises(ValueError, match="use one of system, netdev"):
        choose_datapath_type("dpdk")
