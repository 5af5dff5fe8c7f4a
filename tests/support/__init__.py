"""Shared test helpers: prerequisites, network namespaces, in-memory pairs."""
