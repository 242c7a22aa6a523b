"""The lab's pod sandbox ("pause") image, built locally from Debian's busybox-static.

containerd's CRI plugin starts every pod sandbox from an image (``sandbox_image``), and
the lab has no registry: so the image is written here as an OCI image layout tarball
(``ctr images import`` reads it) with one uncompressed layer holding ``/bin/busybox``
and the two applets the sandbox uses.  The sandbox process is ``sleep`` forever: it only
holds the pod's namespaces, as ``registry.k8s.io/pause`` does.  The tarball is
reproducible (fixed mtimes, sorted entries), so one tree always gives one digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Sequence

BUSYBOX = "/bin/busybox"  # Debian's busybox-static: runs in an otherwise empty root
IMAGE_NAME = "localhost/ovs-overlay/pause:lab"
ENTRYPOINT = ("/bin/sleep", "infinity")
APPLETS = ("sh", "sleep")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def busybox_layer(applets: Sequence[str] = APPLETS) -> bytes:
    """A root file system as a plain tar: /bin/busybox and a symlink per applet in /bin
    (the lab's Docker image is this tar with every applet, imported by ``docker import``)."""
    if not os.path.exists(BUSYBOX):
        raise FileNotFoundError(
            f"{BUSYBOX} is missing: the lab's images are built from it; "
            "install busybox-static (./quickstart.sh does)"
        )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        bindir = tarfile.TarInfo("bin")
        bindir.type, bindir.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(bindir)
        info = tarfile.TarInfo("bin/busybox")
        info.mode = 0o755
        with open(BUSYBOX, "rb") as f:
            data = f.read()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for applet in applets:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(link)
    return buf.getvalue()


def _blob(data: bytes) -> tuple[str, dict]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return digest, {"digest": digest, "size": len(data)}


def write_image(path: str, name: str = IMAGE_NAME) -> str:
    """Write the image as an OCI layout tarball at ``path``; returns the image's name."""
    layer = busybox_layer()
    layer_digest, layer_desc = _blob(layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": list(ENTRYPOINT), "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        },
        sort_keys=True,
    ).encode()
    config_digest, config_desc = _blob(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **config_desc},
            "layers": [{"mediaType": OCI_LAYER, **layer_desc}],
        },
        sort_keys=True,
    ).encode()
    manifest_digest, manifest_desc = _blob(manifest)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    **manifest_desc,
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rpartition(":")[2],
                    },
                }
            ],
        },
        sort_keys=True,
    ).encode()
    files = {
        "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
        "index.json": index,
        **{
            "blobs/sha256/" + digest.removeprefix("sha256:"): data
            for digest, data in (
                (layer_digest, layer),
                (config_digest, config),
                (manifest_digest, manifest),
            )
        },
    }
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirname in ("blobs", "blobs/sha256"):
            d = tarfile.TarInfo(dirname)
            d.type, d.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(d)
        for member, data in sorted(files.items()):
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return name
