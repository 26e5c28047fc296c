"""The fuzz suite (docs/fuzzing.md): one module per target, each asserting that its input is
either accepted or refused cleanly, never with another exception.

The hypothesis profiles ``ci`` (the default here, bounded) and ``long`` (by hand:
``pytest tests/fuzz --hypothesis-profile=long`` or ``HYPOTHESIS_PROFILE=long pytest tests/fuzz``)
and the ``fuzz: <target> <n> cases`` summary live in :mod:`tests.fuzz.plugin`, which
tests/conftest.py loads at start-up (see its docstring for why not here); every test takes its
budget and its case count from :func:`tests.fuzz.plugin.fuzz`.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"
