"""The fuzz suite's hypothesis profiles and its count of cases per target (a pytest plugin).

``tests/conftest.py`` loads this module at start-up, not ``tests/fuzz/conftest.py``: the profiles
must exist before hypothesis' own plugin reads ``--hypothesis-profile`` (whatever paths pytest
was given), and under pytest-xdist the controller, which prints the summary, never imports the
conftest files of test directories.

Profiles (only fuzz tests read ``ci`` and ``long``; the rest of the suite runs under ``lattice``,
hypothesis' defaults without its two timing checks, unless a profile is loaded by name):

``ci``    the default for ``tests/fuzz``: each target runs its own bounded number of examples
          (the whole suite in well under a minute on two cores), no deadline (coverage and a
          busy CI machine slow single examples down), failures printed with a reproduction blob.
``long``  fifty times the examples, for running by hand::

              pytest tests/fuzz -p no:cacheprovider --hypothesis-profile=long
              HYPOTHESIS_PROFILE=long pytest tests/fuzz

Every fuzz test counts the cases it ran under its target's name; the terminal summary prints
``fuzz: <target> <n> cases (<seconds> s)`` per target, adding up the counts of xdist workers.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings

F = TypeVar("F", bound=Callable[..., Any])

LONG_FACTOR = 50
_RELAXED = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]
settings.register_profile(
    "ci", max_examples=100, deadline=None, print_blob=True, suppress_health_check=_RELAXED
)
settings.register_profile(
    "long",
    max_examples=100 * LONG_FACTOR,
    deadline=None,
    print_blob=True,
    suppress_health_check=_RELAXED,
)

# Every other property test: hypothesis' defaults but for the two checks that time the machine
# rather than the code (a 200 ms deadline per example and the too_slow health check). Under
# coverage on two shared cores, one draw took 1.5 s and failed a unit test that tests nothing
# about time; what each test asserts is unchanged.
settings.register_profile("lattice", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lattice")

_pending: Counter[str] = Counter()  # cases run since the last test report (this process)
_cases: Counter[str] = Counter()  # cases per target over the session (the reporting process)
_seconds: Counter[str] = Counter()


def fuzz(target: str, examples: int) -> Callable[[F], F]:
    """Apply the fuzz profile to one test (``examples`` under ``ci``, fifty times that under
    ``long``) and count each case it runs under ``target``. Put it *below* ``@given``."""
    long = settings.get_current_profile_name() == "long"
    profile = settings.get_profile("long" if long else "ci")
    budget = settings(profile, max_examples=examples * (LONG_FACTOR if long else 1))

    def decorate(test: F) -> F:
        @functools.wraps(test)
        def counted(*args: Any, **kwargs: Any) -> Any:
            _pending[target] += 1
            return test(*args, **kwargs)

        return budget(counted)  # type: ignore[return-value]

    return decorate


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("hypothesis_profile", None) or os.environ.get("HYPOTHESIS_PROFILE")
    if name:
        settings.load_profile(name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    if call.when == "call" and _pending:
        report = outcome.get_result()
        report.user_properties.append(("fuzz_cases", dict(_pending)))
        _pending.clear()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for key, value in report.user_properties:
        if key == "fuzz_cases":
            _cases.update(value)
            for target in value:
                _seconds[target] += report.duration / len(value)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _cases:
        return
    terminalreporter.section("fuzz cases per target")
    for target in sorted(_cases):
        terminalreporter.write_line(f"fuzz: {target} {_cases[target]} cases ({_seconds[target]:.1f} s)")
