"""``lattice fips-check``: report the OpenSSL in use and whether a FIPS provider is active.

Prints the OpenSSL behind Python's ``ssl`` (TLS) and behind ``cryptography`` (certificate and
CSR operations), whether each runs its FIPS provider, the kernel's FIPS mode, and the TLS
restrictions Lattice applies. With ``--require-fips`` it exits 3 unless both libraries are
in FIPS mode, so it can gate a container's start. ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from typing import Any

from lattice.adapters import fips, tls

EXIT_FIPS = 3


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "fips-check",
        help="report the OpenSSL in use and whether a FIPS provider is active",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--require-fips", action="store_true", help="exit 3 unless a FIPS provider is active")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _tls_summary() -> dict[str, Any]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    restrictions = tls.restrict(ctx)
    return {
        "minimumVersion": ctx.minimum_version.name,
        "maximumVersion": ctx.maximum_version.name,
        "ciphers": [cipher["name"] for cipher in ctx.get_ciphers()],
        "groups": tls.GROUPS if restrictions.groups else "P-256",
        "signatureAlgorithms": tls.SIGALGS if restrictions.sigalgs else "OpenSSL default",
        "tls13SuitesRestricted": restrictions.tls13_suites,
    }


def run(args: argparse.Namespace) -> int:
    report = fips.fips_report()
    tls_summary = _tls_summary()
    summary = {**report.to_json(), "tls": tls_summary}
    if args.json:
        print(json.dumps(summary, indent=None, sort_keys=True))
    else:
        print(f"FIPS provider active:      {'yes' if report.fips_active else 'no'}")
        print(f"TLS (ssl module) OpenSSL:  {report.ssl_openssl_version}")
        print(f"  FIPS default properties: {_yes_no(report.ssl_fips_enabled)}")
        print(f"  FIPS provider available: {_yes_no(report.ssl_fips_provider_available)}")
        print(f"cryptography OpenSSL:      {report.cryptography_openssl_version}")
        print(f"  FIPS mode:               {_yes_no(report.cryptography_fips_enabled)}")
        print(f"kernel FIPS mode:          {_yes_no(report.kernel_fips_mode)}")
        print(
            f"TLS policy:                {tls_summary['minimumVersion']}.."
            f"{tls_summary['maximumVersion']}, groups {tls_summary['groups']}"
        )
        print(f"  ciphers:                 {', '.join(tls_summary['ciphers'])}")
    if args.require_fips and not report.fips_active:
        print(
            "lattice fips-check: --require-fips: no FIPS provider is active: " + "; ".join(report.problems()),
            file=sys.stderr,
        )
        return EXIT_FIPS
    return 0


def _yes_no(value: bool | None) -> str:
    if value is None:
        return "unknown"
    return "yes" if value else "no"
