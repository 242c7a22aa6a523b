"""The one-machine lab: N hosts as network namespaces joined by an underlay bridge."""
