"""miles integration (see the README section "Using with miles")."""
