"""ovs-overlayctl: the operator's command line."""
