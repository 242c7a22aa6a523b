"""The lab's containerd configuration and sandbox image, without running containerd."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import pytest

from lab import containerd, pause_image

tomllib = pytest.importorskip("tomllib")  # the standard library from Python 3.11


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_every_path_containerd_is_given_is_its_own():
    paths = containerd.ContainerdPaths("/run/ovs-overlay/lab/L/hosts/h1/containerd")
    conf = tomllib.loads(containerd.config_toml(paths))
    cri = conf["plugins"]["io.containerd.grpc.v1.cri"]
    assert conf["grpc"]["address"] == paths.socket
    assert cri["netns_mounts_under_state_dir"] is True  # not /var/run/netns
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["cni"] == {"bin_dir": paths.cni_bin, "conf_dir": paths.cni_conf, "max_conf_num": 1}
    absolute = [s for s in _strings(conf) if s.startswith("/")]
    assert absolute and all(s.startswith(paths.root + "/") for s in absolute), absolute


@pytest.mark.skipif(not os.path.exists(pause_image.BUSYBOX), reason="needs busybox-static")
def test_sandbox_image_is_a_consistent_reproducible_oci_layout(tmp_path):
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    pause_image.write_image(str(first))
    pause_image.write_image(str(second))
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}

    def blob(desc: dict) -> bytes:
        data = files["blobs/sha256/" + desc["digest"].removeprefix("sha256:")]
        assert len(data) == desc["size"]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == desc["digest"]
        return data

    (entry,) = json.loads(files["index.json"])["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == pause_image.IMAGE_NAME
    manifest = json.loads(blob(entry))
    config = json.loads(blob(manifest["config"]))
    (layer_desc,) = manifest["layers"]
    layer = blob(layer_desc)
    assert config["rootfs"]["diff_ids"] == [layer_desc["digest"]]  # uncompressed layer
    assert config["config"]["Entrypoint"] == list(pause_image.ENTRYPOINT)
    with tarfile.open(fileobj=io.BytesIO(layer)) as rootfs:
        names = {m.name: m for m in rootfs.getmembers()}
    assert names["bin/sleep"].linkname == "busybox" and names["bin/busybox"].mode == 0o755
