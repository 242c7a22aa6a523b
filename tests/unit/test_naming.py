import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab import naming

lab_names = st.from_regex(naming.LAB_NAME_RE, fullmatch=True)


@pytest.mark.parametrize("bad", ["", "L", "1lab", "lab-1", "lab_x", "abcdefghijk", "a b"])
def test_bad_lab_names_are_rejected_with_the_rule(bad):
    with pytest.raises(ValueError, match="use 1-10 lower-case letters and digits"):
        naming.validate_lab_name(bad)


@pytest.mark.parametrize("count", [0, -1, naming.MAX_HOSTS + 1])
def test_host_count_out_of_range(count):
    with pytest.raises(ValueError, match="outside"):
        naming.validate_host_count(count)


def test_underlay_addresses_are_inside_the_reserved_underlay_range():
    for i in (1, 2, naming.MAX_HOSTS):
        assert naming.underlay_ip(i).startswith("198.18.")
    assert naming.underlay_ip(3) == "198.18.0.3"
    assert naming.underlay_prefixlen() == 16


@given(lab_names)
def test_a_lab_owns_exactly_its_own_namespaces(name):
    assert naming.owns_namespace(name, f"{name}-underlay")
    assert naming.owns_namespace(name, f"{name}-h1")
    assert naming.owns_namespace(name, f"{name}-h12-p3")
    assert naming.owns_namespace(name, naming.etcd_namespace(name, 3))
    # Another lab whose name starts with this one is not ours, nor is the machine's own.
    assert not naming.owns_namespace(name, f"{name}x-h1")
    assert not naming.owns_namespace(name, f"{name}-h0")
    assert not naming.owns_namespace(name, f"{name}-other")
    assert not naming.owns_namespace(name, f"{name}-etcd0")
    assert not naming.owns_namespace(name, "default")


@given(lab_names)
def test_the_underlay_namespace_names_its_lab(name):
    assert naming.lab_of_namespace(naming.underlay_namespace(name)) == name
    assert naming.lab_of_namespace(naming.host_namespace(name, "h1")) is None


def test_host_index_parses_only_host_names():
    assert naming.host_index("h7") == 7
    for bad in ("h0", "x1", "h01", "h", f"h{naming.MAX_HOSTS + 1}"):
        with pytest.raises(ValueError, match="hosts are h1, h2"):
            naming.host_index(bad)


def test_etcd_members_sit_apart_from_the_hosts_on_the_underlay():
    assert naming.etcd_ip(1) == "198.18.1.1"
    assert naming.etcd_url(3) == "etcd://198.18.1.1:2379,198.18.1.2:2379,198.18.1.3:2379"
    assert naming.etcd_member_index("etcd2") == 2
    for bad in ("etcd0", "etcd", "h1", f"etcd{naming.MAX_ETCD_MEMBERS + 1}"):
        with pytest.raises(ValueError, match="members are etcd1, etcd2"):
            naming.etcd_member_index(bad)
    with pytest.raises(ValueError, match="pick 1, 3 or 5"):
        naming.validate_etcd_members(0)
