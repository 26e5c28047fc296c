"""Which OpenSSL this process uses, and whether a FIPS provider is active in it.

Two OpenSSL instances matter: the one Python's :mod:`ssl` is linked against (all TLS: the
registration webhook through uvicorn, the gRPC streams through grpclib) and the one
``cryptography`` uses (CSR verification, certificate signing). FIPS mode means both run with
the FIPS provider as their default: ``EVP_default_properties_is_fips_enabled`` for the former,
``cryptography``'s ``is_fips_enabled()`` for the latter.

Not guaranteed: that the provider is a *validated* module; that is a property of the build
(docs/fips.md).
"""

from __future__ import annotations

import ctypes
import ssl
from pathlib import Path

from attrs import frozen
from cryptography.hazmat.backends.openssl import backend as cryptography_backend
from cryptography.hazmat.bindings._rust import openssl as rust_openssl

from lattice.adapters.openssl_lib import mapped_openssl_library


@frozen
class FipsReport:
    ssl_openssl_version: str
    """OpenSSL behind Python's ``ssl`` module (TLS)."""
    ssl_fips_enabled: bool | None
    """Whether that OpenSSL's default properties select the FIPS provider (None: unknown)."""
    ssl_fips_provider_available: bool | None
    cryptography_openssl_version: str
    cryptography_fips_enabled: bool
    kernel_fips_mode: bool | None
    """``/proc/sys/crypto/fips_enabled`` (None when absent)."""

    @property
    def fips_active(self) -> bool:
        return bool(self.ssl_fips_enabled) and self.cryptography_fips_enabled

    def problems(self) -> list[str]:
        found: list[str] = []
        if not self.ssl_fips_enabled:
            found.append(
                f"the OpenSSL used for TLS ({self.ssl_openssl_version}) does not run a FIPS "
                "provider by default"
                + (" (no FIPS provider is available)" if self.ssl_fips_provider_available is False else "")
            )
        if not self.cryptography_fips_enabled:
            found.append(f"cryptography's OpenSSL ({self.cryptography_openssl_version}) is not in FIPS mode")
        return found

    def to_json(self) -> dict[str, object]:
        return {
            "fipsActive": self.fips_active,
            "ssl": {
                "openssl": self.ssl_openssl_version,
                "fipsEnabled": self.ssl_fips_enabled,
                "fipsProviderAvailable": self.ssl_fips_provider_available,
            },
            "cryptography": {
                "openssl": self.cryptography_openssl_version,
                "fipsEnabled": self.cryptography_fips_enabled,
            },
            "kernelFipsMode": self.kernel_fips_mode,
        }


def _libcrypto(maps_path: str = "/proc/self/maps") -> ctypes.CDLL | None:
    return mapped_openssl_library("/libcrypto", maps_path)


def _ssl_fips_state(lib: ctypes.CDLL | None) -> tuple[bool | None, bool | None]:
    if lib is None:
        return None, None
    try:
        lib.EVP_default_properties_is_fips_enabled.argtypes = [ctypes.c_void_p]
        lib.EVP_default_properties_is_fips_enabled.restype = ctypes.c_int
        lib.OSSL_PROVIDER_available.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.OSSL_PROVIDER_available.restype = ctypes.c_int
    except AttributeError:  # OpenSSL 1.1: no providers
        return None, None
    enabled = lib.EVP_default_properties_is_fips_enabled(None) == 1
    available = lib.OSSL_PROVIDER_available(None, b"fips") == 1
    return enabled, available


def _kernel_fips(path: Path = Path("/proc/sys/crypto/fips_enabled")) -> bool | None:
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return None


def fips_report() -> FipsReport:
    enabled, available = _ssl_fips_state(_libcrypto())
    return FipsReport(
        ssl_openssl_version=ssl.OPENSSL_VERSION,
        ssl_fips_enabled=enabled,
        ssl_fips_provider_available=available,
        cryptography_openssl_version=cryptography_backend.openssl_version_text(),
        cryptography_fips_enabled=bool(rust_openssl.is_fips_enabled()),
        kernel_fips_mode=_kernel_fips(),
    )
