"""One host of a lab, named on the command line (``--lab L --host hN``): checked against the
lab's manifest, so a missing lab or an unknown host is one sentence, not a missing file."""

from __future__ import annotations

from lab import naming
from lab.lab import LabError, LabPaths, read_manifest
from lab.ovs_host import OvsHostPaths


def host_paths(lab: str, host: str | None, state_root: str | None) -> OvsHostPaths:
    """The files (sockets, rundir) of ``host`` in ``lab``; LabError naming the fix."""
    naming.validate_lab_name(lab)
    if not host:
        raise LabError(f"--lab {lab} needs --host hN: which of its hosts to ask")
    paths = LabPaths(state_root or naming.DEFAULT_STATE_ROOT, lab)
    manifest = read_manifest(paths)
    if not manifest:
        raise LabError(f"no lab named {lab}; 'ovs-overlayctl lab list' shows the labs")
    count = int(manifest["hosts"])
    index = naming.host_index(host)
    if index > count:
        raise LabError(f"lab {lab} has no host {host}; its hosts are h1..h{count}")
    return paths.host(host)
