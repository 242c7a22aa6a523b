"""Docker's Container Network Model: the agent as libnetwork's remote NetworkDriver and
IpamDriver (server.py: the socket; network.py, ipam.py: the handlers; cleanup.py: what a
dockerd that died leaves)."""
