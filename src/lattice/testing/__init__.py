"""Test support shipped with Lattice: pytest fixtures over real control planes."""
