"""verl integration (see the README section "Using with verl")."""
