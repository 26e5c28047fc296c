"""FIPS-restricted TLS contexts: the one place the webhook and the gRPC streams get theirs.

Every context built here:

* speaks TLS 1.2 or 1.3 only;
* offers only AES-GCM with ECDHE: ``ECDHE-{ECDSA,RSA}-AES{128,256}-GCM-SHA{256,384}`` for TLS 1.2
  (``SSLContext.set_ciphers``) and ``TLS_AES_{256,128}_GCM_SHA{384,256}`` for TLS 1.3;
* offers only the key-exchange groups P-256 and P-384;
* signs and accepts signatures only with ECDSA or RSA(-PSS) over SHA-256/384;
* requires and verifies peer certificates against the given CA bundle (servers may skip
  client certificates only where told: the registration webhook, whose clients authenticate
  with a bootstrap token).

Python's :mod:`ssl` has no API for the TLS 1.3 cipher suites, the groups list or the signature
algorithms. :func:`_restrict_with_openssl` sets them on the context's ``SSL_CTX`` through the
very libssl that :mod:`ssl` is linked against (``SSL_CTX_set_ciphersuites`` and
``SSL_CTX_ctrl``) and then verifies the result through :meth:`ssl.SSLContext.get_ciphers`. If
that is impossible on some platform, the context is capped at TLS 1.2, where
``set_ciphers`` alone restricts everything that matters, and the P-256 curve is set with
:meth:`ssl.SSLContext.set_ecdh_curve`: the restriction never silently lapses.

Not guaranteed: FIPS validation. That depends on the OpenSSL provider in use; see
:mod:`lattice.adapters.fips` and docs/fips.md.
"""

from __future__ import annotations

import asyncio.sslproto
import ctypes
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path

from attrs import frozen

from lattice.adapters.openssl_lib import mapped_openssl_library

log = logging.getLogger(__name__)

TLS12_CIPHERS: tuple[str, ...] = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
)
TLS13_SUITES: tuple[str, ...] = ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256")
APPROVED_CIPHERS = frozenset(TLS12_CIPHERS + TLS13_SUITES)
GROUPS = "P-256:P-384"
SIGALGS = "ECDSA+SHA256:ECDSA+SHA384:RSA-PSS+SHA256:RSA-PSS+SHA384:RSA+SHA256:RSA+SHA384"
GRPC_ALPN = ("h2",)
HTTP1_ALPN = ("http/1.1",)

_SSL_CTRL_SET_GROUPS_LIST = 92
_SSL_CTRL_SET_SIGALGS_LIST = 98
_SSL_CTRL_SET_CLIENT_SIGALGS_LIST = 102


class TlsConfigError(ValueError):
    """A certificate, key or CA file that cannot be loaded (the message names the file)."""


@frozen
class TlsFiles:
    """PEM files of one TLS endpoint: its certificate (chain), its key and the CA to trust."""

    cert: Path
    key: Path
    ca: Path


@frozen
class Restrictions:
    """What :func:`restrict` could enforce on a context."""

    tls13_suites: bool
    groups: bool
    sigalgs: bool

    @property
    def complete(self) -> bool:
        return self.tls13_suites and self.groups and self.sigalgs


def _libssl(maps_path: str = "/proc/self/maps") -> ctypes.CDLL | None:
    """The libssl already mapped into this process by :mod:`ssl`, if it can be identified."""
    lib = mapped_openssl_library("/libssl", maps_path)
    if lib is None:
        return None
    try:
        lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
    except AttributeError:  # an OpenSSL without TLS 1.3 suites: the caller caps at TLS 1.2
        return None
    return lib


_LIBSSL: ctypes.CDLL | None = None
_LIBSSL_LOADED = False


def _get_libssl() -> ctypes.CDLL | None:
    global _LIBSSL, _LIBSSL_LOADED  # noqa: PLW0603 - a lazily loaded process-wide handle
    if not _LIBSSL_LOADED:
        _LIBSSL = _libssl()
        _LIBSSL_LOADED = True
    return _LIBSSL


def _ssl_ctx_pointer(ctx: ssl.SSLContext) -> int | None:
    """``SSL_CTX *`` of a context: the first field after the object header in CPython."""
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    return pointer or None


def _restrict_with_openssl(ctx: ssl.SSLContext, lib: ctypes.CDLL | None) -> Restrictions:
    pointer = _ssl_ctx_pointer(ctx) if lib is not None else None
    if lib is None or pointer is None:
        return Restrictions(tls13_suites=False, groups=False, sigalgs=False)
    suites_ok = lib.SSL_CTX_set_ciphersuites(pointer, ":".join(TLS13_SUITES).encode()) == 1
    names = {cipher["name"] for cipher in ctx.get_ciphers()}
    suites_ok = suites_ok and names <= APPROVED_CIPHERS and set(TLS13_SUITES) <= names
    groups = ctypes.create_string_buffer(GROUPS.encode())
    groups_ok = lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, ctypes.addressof(groups)) == 1
    sigalgs = ctypes.create_string_buffer(SIGALGS.encode())
    sigalgs_ok = (
        lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_SIGALGS_LIST, 0, ctypes.addressof(sigalgs)) == 1
        and lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_CLIENT_SIGALGS_LIST, 0, ctypes.addressof(sigalgs)) == 1
    )
    return Restrictions(tls13_suites=suites_ok, groups=groups_ok, sigalgs=sigalgs_ok)


def restrict(ctx: ssl.SSLContext, *, use_openssl_controls: bool = True) -> Restrictions:
    """Limit ``ctx`` to the FIPS-approved protocol versions, ciphers, groups and signatures."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_ciphers(":".join(TLS12_CIPHERS))
    restrictions = (
        _restrict_with_openssl(ctx, _get_libssl())
        if use_openssl_controls
        else Restrictions(tls13_suites=False, groups=False, sigalgs=False)
    )
    if not restrictions.tls13_suites:
        log.warning("cannot restrict TLS 1.3 cipher suites here: capping at TLS 1.2")
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if not restrictions.groups:
        ctx.set_ecdh_curve("prime256v1")
    return restrictions


def _load_identity(ctx: ssl.SSLContext, files: TlsFiles) -> None:
    for label, path in (("certificate", files.cert), ("key", files.key), ("CA bundle", files.ca)):
        if not path.is_file():
            raise TlsConfigError(f"{label} file {path} does not exist")
    try:
        ctx.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot load certificate {files.cert} with key {files.key}: {exc}") from exc
    try:
        ctx.load_verify_locations(cafile=str(files.ca))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot load CA bundle {files.ca}: {exc}") from exc


def server_context(
    files: TlsFiles,
    *,
    require_client_cert: bool,
    alpn: Sequence[str] = GRPC_ALPN,
) -> ssl.SSLContext:
    """A server context; ``require_client_cert`` makes it mutual TLS (``CERT_REQUIRED``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    restrict(ctx)
    _load_identity(ctx, files)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(
    files: TlsFiles | None,
    *,
    ca: Path | None = None,
    alpn: Sequence[str] = GRPC_ALPN,
) -> ssl.SSLContext:
    """A client context verifying the server against the CA (and presenting ``files``' cert)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    restrict(ctx)
    if files is not None:
        _load_identity(ctx, files)
    elif ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            raise TlsConfigError(f"cannot load CA bundle {ca}: {exc}") from exc
    else:
        raise TlsConfigError("a client context needs a CA bundle to verify the server")
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def set_ssl_read_buffer(size: int) -> int:
    """Set asyncio's per-connection TLS read buffer (default 256 KiB); returns the old size.

    asyncio allocates ``SSLProtocol.max_size`` bytes for every TLS connection up front; a cell
    holding thousands of agent streams spends most of its memory there (docs/protocol.md,
    "Scale"). Process-wide; call it before accepting or opening connections.
    """
    if size < 4096:
        raise ValueError("the TLS read buffer must be at least 4 KiB")
    protocol_class = asyncio.sslproto.SSLProtocol
    old: int = protocol_class.max_size
    protocol_class.max_size = size
    return old
