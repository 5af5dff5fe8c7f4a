"""The `wgc` command line."""
