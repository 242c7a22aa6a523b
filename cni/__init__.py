"""The ovs-overlay CNI plugin: a thin, fast client of the agent."""
