"""Kubernetes NetworkPolicy: the objects, their semantics, and their compilation to flows."""
