"""The `Host` check against DNS rebinding, after Ollama's `allowedHostsMiddleware` (server/routes.go).

A page on `attacker.example` can point that name at 127.0.0.1 and then call the gateway as
"same-origin": the browser sees one origin, the gateway a local connection. Only the `Host`
header gives it away, so a request whose Host is not a name of this machine gets 403 with an
empty body, before CORS or anything else runs.

    allowed                                   why
    no Host, any IP literal (v4, [v6])        an IP has no DNS behind it, so nothing to rebind
    localhost, *.localhost, *.local,          Ollama's names (loopback, mDNS, the cloud's and
      *.internal, names without a dot           Docker's host.docker.internal); a name without a dot
                                                (a compose service such as `gateway`) is not a public
                                                name that an attacker can register
    this machine's hostname, the configured   as Ollama
      listen host (GATEWAY_HOST) when a name
    GATEWAY_ALLOWED_HOSTS entries             `name`, `*.example.com` (its subdomains), `*` (no check)

Two deliberate differences from Ollama. Ollama skips the check when it listens on a non-loopback
address; the gateway checks on every address, because the Docker image listens on 0.0.0.0 and is
usually published on the machine a browser runs on. And Ollama accepts only loopback, private,
unspecified and the machine's own IP literals (it lists the interfaces); the gateway accepts any IP
literal (no rebinding is possible through one, and the standard library cannot list the
interfaces), which also covers a container reached by the host's address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable

from gateway.errors import GatewayError

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
# A host name as browsers send it (underscores too), and a GATEWAY_ALLOWED_HOSTS entry: one,
# optionally with `*.` before it.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_ENTRY = re.compile(rf"(?:\*\.)?{_NAME.pattern}")
_PORT = re.compile(r"\d{1,5}")
_MEMO_SIZE = 1024


def allowed_hosts(configured: str) -> list[str]:
    """The entries of GATEWAY_ALLOWED_HOSTS (comma-separated); ValueError for one that is no name."""
    entries = [entry.strip().lower().rstrip(".") for entry in configured.strip().strip("\"'").split(",")]
    for entry in entries:
        if entry and entry != "*" and not _ENTRY.fullmatch(entry) and not _ip(entry.strip("[]")):
            raise ValueError(
                f"{entry!r} is not a host name (write names without scheme or port, "
                "'*.example.com' for its subdomains, '*' to allow any host)"
            )
    return [entry for entry in entries if entry]


def host_name(header: str) -> str | None:
    """The host part of a `Host` header, lower case, without port or trailing dot; None if malformed."""
    header = header.strip().lower()
    if header.startswith("["):  # [v6] or [v6]:port
        literal, bracket, rest = header[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and _PORT.fullmatch(rest[1:]))):
            return None
        return literal if _ip(literal) else None
    if header.count(":") > 1:  # a bare IPv6 literal (Go's SplitHostPort fails; Ollama parses it)
        return header if _ip(header) else None
    name, colon, port = header.partition(":")
    if colon and not _PORT.fullmatch(port):
        return None
    name = name.removesuffix(".")
    return name if not name or _NAME.fullmatch(name) else None


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which `Host` headers name this gateway."""

    def __init__(self, extra: Iterable[str], *, listen_host: str | None = None, hostname: str | None = None) -> None:
        entries = set(extra)
        self.allow_all = "*" in entries
        names = {entry for entry in entries if not entry.startswith("*")}
        for own in (hostname if hostname is not None else socket.gethostname(), listen_host):
            if own:
                names.add(own.lower().rstrip("."))
        self._names = frozenset(names)
        self._suffixes = (*_LOCAL_SUFFIXES, *(entry[1:] for entry in entries if entry.startswith("*.")))
        self._memo: dict[str, bool] = {}

    def allows(self, header: str) -> bool:
        """True if a request with this `Host` header may be served.

        Decided once per header value (parsing one, IP literals included, takes a few µs): a
        worker sees few, and the memo is emptied when it holds `_MEMO_SIZE` of them."""
        if self.allow_all:
            return True
        memo = self._memo
        verdict = memo.get(header)
        if verdict is None:
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            verdict = memo[header] = self.vouches_for(header)
        return verdict

    def vouches_for(self, header: str) -> bool:
        """True if the header names this gateway; never on the strength of `*` alone, so CORS can
        trust a same-origin request only when its Host is really one of ours."""
        name = host_name(header)
        if name is None:
            return False
        if not name or name == "localhost" or _ip(name) or "." not in name or name in self._names:
            return True
        return name.endswith(self._suffixes)


def refusal(host: str) -> GatewayError:
    """What the request line in the log says of a refused Host (the body is empty, as Ollama's),
    so an operator behind a proxy sees which name to add. The header is the client's text: cut
    short, made printable."""
    return GatewayError(f"host {host[:80]!r} is not allowed (see GATEWAY_ALLOWED_HOSTS)", status_code=403)
