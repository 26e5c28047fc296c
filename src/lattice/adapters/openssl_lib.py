"""The OpenSSL library that Python's :mod:`ssl` module is linked against, found in this process.

:mod:`ssl` exposes no handle to its ``libssl``/``libcrypto``; the copies already mapped into the
process are listed in ``/proc/self/maps`` and the right one is the one whose
``OpenSSL_version_num`` equals :data:`ssl.OPENSSL_VERSION_NUMBER` (``cryptography`` may map a
second, different OpenSSL).
"""

from __future__ import annotations

import ctypes
import ssl


def mapped_openssl_library(marker: str, maps_path: str = "/proc/self/maps") -> ctypes.CDLL | None:
    """The mapped library whose path contains ``marker`` (``/libssl``, ``/libcrypto``) and whose
    version is the one :mod:`ssl` reports; None when it cannot be identified."""
    try:
        with open(maps_path, encoding="ascii", errors="replace") as maps:
            paths = sorted({line.split()[-1] for line in maps if marker in line and ".so" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
            lib.OpenSSL_version_num.restype = ctypes.c_ulong
            if lib.OpenSSL_version_num() == ssl.OPENSSL_VERSION_NUMBER:
                return lib
        except (OSError, AttributeError):
            continue
    return None
