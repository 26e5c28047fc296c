"""The one place that silences kr8s's version warning silences only the tested minors."""

from __future__ import annotations

import warnings

import pytest

from lattice.adapters import kube_kr8s


def _kr8s_warning(git_version: str) -> None:
    # The text of kr8s 0.20.15's Api._check_version.
    warnings.warn(
        f"Kubernetes version {git_version} is not supported. Supported versions for kr8s 0.20.15 "
        "are 1.28 to 1.35.",
        UserWarning,
        stacklevel=1,
    )


@pytest.mark.parametrize("version", ["v1.36.3", "v1.36.0", "v1.36.12-eks-113cf36"])
def test_tested_minor_is_silenced(version: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kube_kr8s.silence_tested_version_warning()
        _kr8s_warning(version)
    assert caught == []


@pytest.mark.parametrize("version", ["v1.37.0", "v1.3.6", "v1.136.0", "v1.27.9"])
def test_other_minors_still_warn(version: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kube_kr8s.silence_tested_version_warning()
        _kr8s_warning(version)
    assert [str(w.message).split(" is ")[0] for w in caught] == [f"Kubernetes version {version}"]


def test_other_user_warnings_pass() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kube_kr8s.silence_tested_version_warning()
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert len(caught) == 1
