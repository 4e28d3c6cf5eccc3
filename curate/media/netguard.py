"""Which URLs a worker may fetch: http(s) only, and no private, loopback or link-local hosts.

A pool is untrusted input: without this, a caption pool can make the download workers read
cloud metadata endpoints (169.254.169.254) or internal services. The check resolves host
names once per host, and a redirect handler applies the same rule to every redirect, since
urllib (used by img2dataset) follows redirects on its own. Known gap: a host whose DNS answer
changes between our check and the fetch (DNS rebinding) is not caught; run download workers
in a network that has no route to private ranges when that matters.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit


def _address_ok(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def url_refusal(url: str, allow_private: bool, _cache: dict[str, str | None] | None = None
                ) -> str | None:
    """None when ``url`` may be fetched, else the reason it is refused (one line)."""
    try:
        parts = urlsplit(url)
    except ValueError as err:
        return f"invalid URL ({err})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"unsupported URL scheme '{parts.scheme}' (only http and https)"
    try:
        host = parts.hostname
    except ValueError as err:
        return f"invalid URL ({err})"
    if not host:
        return "URL has no host"
    if allow_private:
        return None
    if _cache is not None and host in _cache:
        return _cache[host]
    reason: str | None = None
    try:
        ipaddress.ip_address(host)
        literal = [host]
    except ValueError:
        literal = []
    try:
        addrs = literal or sorted({ai[4][0] for ai in socket.getaddrinfo(host, None)})
    except (OSError, UnicodeError) as err:
        addrs = []
        reason = f"could not resolve host '{host}' ({err})"
    for a in addrs:
        if not _address_ok(a):
            reason = (f"refused private/loopback/link-local address {a} for host '{host}' "
                      "(download.allow_private_addresses is false)")
            break
    if _cache is not None:
        _cache[host] = reason
    return reason


def refusals(urls: list[str], allow_private: bool, threads: int = 32) -> list[str | None]:
    """``url_refusal`` for many URLs, resolving distinct hosts in parallel."""
    cache: dict[str, str | None] = {}
    if not allow_private:
        hosts = sorted({h for h in (_host(u) for u in urls) if h})
        with ThreadPoolExecutor(max(1, min(threads, len(hosts) or 1))) as ex:
            for h, r in zip(hosts, ex.map(lambda h: url_refusal(f"http://{_bracket(h)}/",
                                                                 False), hosts)):
                cache[h] = r
    return [url_refusal(u, allow_private, cache) for u in urls]


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


class _GuardedRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        reason = url_refusal(newurl, allow_private=False)
        if reason:
            raise urllib.error.URLError(f"redirect refused: {reason}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def install_redirect_guard(enabled: bool = True) -> None:
    """Make urllib (and so img2dataset, in this process) check every redirect target, or,
    with ``enabled=False``, restore urllib's plain redirects."""
    handlers = [_GuardedRedirects()] if enabled else []
    urllib.request.install_opener(urllib.request.build_opener(*handlers))
