"""Fixtures shared by every test directory."""

# tests.fuzz.plugin: the fuzz suite's hypothesis profiles and its cases-per-target summary
# (loaded here so that --hypothesis-profile=long works from any path, and under pytest-xdist).
pytest_plugins = ("lattice.testing.fixtures", "tests.fuzz.plugin")
