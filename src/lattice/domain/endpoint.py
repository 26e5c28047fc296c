"""Network endpoints: one host rule, one way to write ``HOST:PORT`` and one way to read it.

A host is an IP address or a DNS name (lower case, at most 253 characters: RFC 1123 as
Kubernetes spells it). Wherever a port follows, an IPv6 address is written in brackets
(RFC 3986 section 3.2.2): ``[::1]:50051``, ``https://[fd00::1]:8443/api/clusters/register``.
``str(endpoint)`` is the one writer and :meth:`Endpoint.parse` the one reader, and
``Endpoint.parse(str(e), field) == e`` for every valid endpoint ``e``.

Reading never raises: text that is not an endpoint gives a :class:`FieldError` naming the field
(a flag such as ``--parent``) and why. Construction does not validate: build an
:class:`Endpoint` from a host that was validated (a spec's ``parentConfig.host``, a parsed flag)
or parse the text. The cell's endpoint, a host with its registration and agent-stream ports
(``HOST[:BOOTSTRAP_PORT[:GRPC_PORT]]``), is :class:`lattice.domain.capi.ParentEndpoint`, read
by :func:`parse_host_ports` as well.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from attrs import frozen

from lattice.domain.errors import FieldError

MAX_PORT = 65535
MAX_DNS_NAME = 253
IPV6_HINT = "write IPv6 addresses as [ADDR]:PORT"
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _ipv6(text: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def is_ip(text: str) -> bool:
    return _ip(text) is not None


def is_dns_name(text: str) -> bool:
    """A DNS-1123 subdomain: lower-case labels of letters, digits and inner hyphens."""
    return len(text) <= MAX_DNS_NAME and _DNS_NAME.fullmatch(text) is not None


def host_error(host: str) -> str | None:
    """Why ``host`` is not a host others can dial (an IP address or a DNS name), or ``None``."""
    address = _ip(host)
    if address is None:
        return None if is_dns_name(host) else f"{host!r} is neither an IP address nor a DNS name"
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return (
            f"{host!r}: an IPv6 zone (%{address.scope_id}) names an interface of one machine; "
            "give the address alone"
        )
    return None


def parse_port(text: str, *, allow_zero: bool = False) -> int | None:
    """The port ``text`` names (ASCII digits, 1-65535; 0 too with ``allow_zero``), or ``None``."""
    if not (text.isascii() and text.isdigit()):
        return None
    port = int(text)
    return port if (0 if allow_zero else 1) <= port <= MAX_PORT else None


def split_host_ports(text: str) -> tuple[str, list[str]] | None:
    """Syntax only: the host and the texts of the ports after it, split at ``:``.

    ``[ADDR]:P:Q`` holds an IPv6 address in brackets; unbracketed text that is an IPv6 address
    as a whole is a host without ports; anything else splits at every ``:``. ``None`` when
    brackets are unclosed, hold anything but an IPv6 address, or are followed by anything but
    ``:``. Hosts and ports are not checked (:func:`parse_host_ports` does).
    """
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or _ipv6(host) is None or rest[:1] not in ("", ":"):
            return None
        return host, (rest[1:].split(":") if rest else [])
    if _ipv6(text) is not None:
        return text, []
    host, *ports = text.split(":")
    return host, ports


def parse_host_ports(
    text: str,
    field: str,
    form: str,
    *,
    required: int,
    defaults: Sequence[int] = (),
    allow_port_zero: bool = False,
) -> tuple[str, tuple[int, ...]] | FieldError:
    """Read ``HOST`` and ``required`` ports, then up to ``len(defaults)`` optional ones; an
    optional port that is not given takes its default. ``form`` (e.g. ``HOST[:PORT]``) is how
    the reason spells what was expected."""
    split = split_host_ports(text)
    if split is None:
        return FieldError((field,), f"{text!r} must be {form}; {IPV6_HINT}")
    host, port_texts = split
    most = required + len(defaults)
    if not host or not required <= len(port_texts) <= most:
        # An unbracketed IPv6 address, or more ``:`` than the form has: say how to write it.
        hint = f"; {IPV6_HINT}" if ":" in host or len(port_texts) > most else ""
        return FieldError((field,), f"{text!r} must be {form}{hint}")
    error = host_error(host)
    if error is not None:
        return FieldError((field,), error)
    ports: list[int] = []
    for port_text in port_texts:
        port = parse_port(port_text, allow_zero=allow_port_zero)
        if port is None:
            lowest = 0 if allow_port_zero else 1
            reason = f"{port_text!r} is not a port number: it must be a number within {lowest}-{MAX_PORT}"
            return FieldError((field,), reason)
        ports.append(port)
    return host, (*ports, *defaults[len(ports) - required :])


@frozen
class Endpoint:
    """A host and a port: ``host:port``, or ``[host]:port`` when the host is an IPv6 address."""

    host: str
    port: int

    @property
    def authority(self) -> str:
        """``host:port`` as a URL's authority and as every ``HOST:PORT`` flag writes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.authority

    def url(self, scheme: str, path: str = "") -> str:
        """``scheme://authority`` followed by ``path`` (which starts with ``/``, or is empty)."""
        return f"{scheme}://{self.authority}{path}"

    @classmethod
    def parse(
        cls, text: str, field: str, *, default_port: int | None = None, allow_port_zero: bool = False
    ) -> Endpoint | FieldError:
        """``HOST:PORT`` (``[ADDR]:PORT`` for IPv6); with ``default_port`` the port is optional
        (``HOST[:PORT]``, and an IPv6 address may then stand alone). ``allow_port_zero`` for a
        listening address, where 0 picks a free port. ``field`` names the input in the error."""
        parsed = (
            parse_host_ports(text, field, "HOST:PORT", required=1, allow_port_zero=allow_port_zero)
            if default_port is None
            else parse_host_ports(
                text,
                field,
                "HOST[:PORT]",
                required=0,
                defaults=(default_port,),
                allow_port_zero=allow_port_zero,
            )
        )
        if isinstance(parsed, FieldError):
            return parsed
        host, (port,) = parsed
        return cls(host, port)
