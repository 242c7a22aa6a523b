"""Choosing the bridge datapath type.

The kernel datapath (``system``) is faster, but needs the openvswitch kernel
module; without it ovs-vswitchd can still forward in userspace (``netdev``).
A bridge created with the wrong type fails silently (no ports come up), so the
agent picks the type from what the kernel offers and logs the choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SYSTEM = "system"
NETDEV = "netdev"
DATAPATH_TYPES = (SYSTEM, NETDEV)

# Present while the openvswitch module is loaded (or built in).
KERNEL_MODULE_DIR = "/sys/module/openvswitch"


@dataclass(frozen=True)
class DatapathChoice:
    """The datapath type to use and the reason, for the log."""

    datapath_type: str
    reason: str


def choose_datapath_type(
    forced: str | None = None, module_dir: str = KERNEL_MODULE_DIR
) -> DatapathChoice:
    """Return ``forced`` if given, else ``system`` when the kernel module is loaded, else
    ``netdev``."""
    if forced is not None:
        if forced not in DATAPATH_TYPES:
            raise ValueError(
                f"datapath type {forced!r} is not supported; use one of "
                f"{', '.join(DATAPATH_TYPES)} or leave it unset to choose automatically"
            )
        return DatapathChoice(forced, "forced by configuration")
    if os.path.isdir(module_dir):
        return DatapathChoice(SYSTEM, f"openvswitch kernel module loaded ({module_dir} exists)")
    return DatapathChoice(
        NETDEV, f"no openvswitch kernel module ({module_dir} missing): using the userspace datapath"
    )
