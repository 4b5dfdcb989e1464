"""Command-line tools built on the kquic socket API."""
