"""Fixtures shared by every test directory."""

pytest_plugins = ("lattice.testing.fixtures",)
