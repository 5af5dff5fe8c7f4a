"""The NAT lab: network namespaces that stand in for hosts, routers and NATs in tests and demos."""
