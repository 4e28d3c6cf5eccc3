"""Polite fetching inside one download task: a cap on concurrent requests per host,
back-off on 429/503 honouring Retry-After, and TDMRep's ``tdm-reservation`` header — all
checked on the response headers, before the body is read.

img2dataset's ``Downloader`` calls the module function ``download_image_with_retry`` for
every URL from its thread pool; ``active(policy)`` swaps in :func:`download` for the
duration of one shard (a download task runs one shard at a time in its process), so
img2dataset keeps its thread pool, writer, resize hook and X-Robots-Tag handling (its own
``is_disallowed`` is called exactly as it does) and curate adds what it lacks.

What the cap guarantees: at most ``per_host`` requests in flight to one host name across
the whole cluster. The driver splits the cap over the download tasks it runs at once
(:func:`curate.core.slots.split`): each task holds ``reserved`` slots per host alone, and
only the remainder, where the task count does not divide ``per_host``, is a shared gate
(:mod:`curate.core.slots`, one Ray actor) that a request beyond the task's share must also
take a slot of (a task keeps a host's gate slot while its shard has more URLs for the host
and no other task waits for it, so few requests make a remote call). Without a gate (no
Ray, or the gate was lost mid-run) the cap holds per task only. URLs are interleaved by
host (:func:`interleave`) so a thread rarely waits on a busy host while another is idle.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from curate.media.robots import user_agent_string

#: error text of a pair refused by the ``tdm-reservation: 1`` response header
TDM_HEADER = "TDM reservation: the response carries 'tdm-reservation: 1' (TDMRep)"
XROBOTS = "Use of image disallowed by X-Robots-Tag directive"  # img2dataset's own text
#: error text of a pair whose host had no free slot cluster-wide before the time limit
HOST_BUSY = "per-host cap: no free slot for this host before the shard's time limit"


def host_of(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def interleave(idx: list[int], hosts: list[str]) -> list[int]:
    """``idx`` reordered round-robin over hosts (first host's first URL, second host's
    first URL, ...); stable within a host. ``hosts[i]``: URL i's host."""
    groups: dict[str, list[int]] = {}
    for i in idx:
        groups.setdefault(hosts[i], []).append(i)
    lists = list(groups.values())
    out: list[int] = []
    depth = max((len(g) for g in lists), default=0)
    for k in range(depth):
        out.extend(g[k] for g in lists if k < len(g))
    return out


def retry_after(value: str | None, default: float) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP-date), else default."""
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return default


@dataclass
class Policy:
    #: requests in flight per host from this task (its reserved share plus the gate's)
    per_host: int = 4
    #: of those, how many need no gate slot (the task's share of a split cluster-wide cap);
    #: None: every one does (a gate over the whole cap). Ignored without a gate.
    reserved: int | None = None
    http_retries: int = 2        # extra attempts after a 429/503
    retry_after_max_s: float = 30.0
    backoff_s: float = 1.0       # 429/503 without Retry-After: backoff_s * 2**attempt
    tdm_header: bool = True
    deadline: float | None = None  # time.monotonic() after which nothing waits any more
    #: the cluster-wide cap (acquire(key, deadline) -> bool, release(key)); None: local only
    gate: Any = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _busy: dict = field(default_factory=dict)     # host -> requests in flight
    _gated: dict = field(default_factory=dict)    # host -> of those, holding a gate slot
    _waiters: int = 0
    _not_before: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # host -> number of 429/503 back-offs
    _left: dict = field(default_factory=dict)  # host -> this shard's requests not started
    _host: dict = field(default_factory=dict)  # url -> host (parsed once per shard)

    def expect(self, urls: list[str], hosts: list[str], threads: int = 1) -> None:
        """The shard's URLs and their hosts: a gate slot is kept between two requests to
        one host only while more of them are still to come; and the gate is asked at once
        for each host's share of the threads (one round trip for the shard's start, not
        one per host as threads reach it)."""
        for u, h in zip(urls, hosts):
            self._host[u] = h
            self._left[h] = self._left.get(h, 0) + 1
        if self.gate is not None and self._left:
            share = max(1, -(-threads // len(self._left)))
            ask = {h: min(n, share, self.per_host) - (self.reserved or 0)
                   for h, n in self._left.items()}
            self.gate.prefetch({h: n for h, n in ask.items() if n > 0})

    def host(self, url: str) -> str:
        h = self._host.get(url)
        return h if h is not None else host_of(url)

    def more(self, host: str) -> bool:
        return self._left.get(host, 0) > 0  # one dict read: atomic under the GIL

    def take(self, host: str, first: bool) -> bool:
        """Wait for one of this task's ``per_host`` slots of ``host``; True when the
        request needs a gate slot too (the task's reserved share is in use)."""
        with self._cond:
            if first and self._left.get(host, 0) > 0:
                self._left[host] -= 1
            while self._busy.get(host, 0) >= self.per_host:
                self._waiters += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiters -= 1
            busy = self._busy[host] = self._busy.get(host, 0) + 1
            gated = self._gated.get(host, 0)
            need = self.gate is not None and (self.reserved is None
                                             or busy - gated > self.reserved)
            if need:
                self._gated[host] = gated + 1
            return need

    def give(self, host: str, gated: bool) -> None:
        with self._cond:
            n = self._busy[host] - 1
            if n:
                self._busy[host] = n
            else:
                del self._busy[host]
            if gated:
                g = self._gated[host] - 1
                if g:
                    self._gated[host] = g
                else:
                    del self._gated[host]
            if self._waiters:
                self._cond.notify_all()

    def wait_turn(self, host: str) -> None:
        """Sleep until ``host``'s back-off (set by a 429/503 of any thread) has passed."""
        while self._not_before:  # nothing to lock for while no host ever backed off
            with self._cond:
                delay = self._not_before.get(host, 0.0) - time.monotonic()
            if delay <= 0:
                return
            time.sleep(min(delay, 0.5))

    def back_off(self, host: str, delay: float) -> None:
        with self._cond:
            until = time.monotonic() + delay
            self._not_before[host] = max(self._not_before.get(host, 0.0), until)
            self.stats[host] = self.stats.get(host, 0) + 1


_ACTIVE: Policy | None = None


def _once(url: str, timeout: float, ua: str, token: str | None, directives, policy: Policy):
    """(stream, error, retry delay or None) of one request."""
    from img2dataset.downloader import is_disallowed

    req = urllib.request.Request(url, data=None, headers={"User-Agent": ua})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            if directives and is_disallowed(r.headers, token, directives):
                return None, XROBOTS, None
            if policy.tdm_header and (r.headers.get("tdm-reservation") or "").strip() == "1":
                return None, TDM_HEADER, None
            return io.BytesIO(r.read()), None, None
    except urllib.error.HTTPError as err:
        if err.code in (429, 503):
            return None, str(err), retry_after(err.headers.get("Retry-After"), -1.0)
        return None, str(err), None
    except Exception as err:  # noqa: BLE001 - img2dataset records any error as text
        return None, str(err), None


def download(row, timeout, retries, user_agent_token, disallowed_header_directives):
    """img2dataset's ``download_image_with_retry``, polite: same signature and result."""
    key, url = row
    policy = _ACTIVE or Policy(per_host=1 << 30, http_retries=0)
    host = policy.host(url)
    ua = user_agent_string(user_agent_token)
    err, tries, waits, first = None, 0, 0, True
    while True:
        policy.wait_turn(host)
        gated, first = policy.take(host, first), False
        try:
            if gated and not policy.gate.acquire(host, policy.deadline):
                return key, None, f"{HOST_BUSY} ({host})"
            delay = None
            try:
                stream, err, delay = _once(url, timeout, ua, user_agent_token,
                                           disallowed_header_directives, policy)
            finally:
                if gated:
                    policy.gate.release(host, keep=policy.more(host) or delay is not None)
        finally:
            policy.give(host, gated)
        if stream is not None:
            return key, stream, None
        if delay is not None:  # 429/503: wait as told (capped), within the deadline
            if waits >= policy.http_retries:
                return key, None, err
            if delay < 0:
                delay = policy.backoff_s * 2 ** waits
            delay = min(delay, policy.retry_after_max_s)
            if policy.deadline is not None and time.monotonic() + delay > policy.deadline:
                return key, None, f"{err} (Retry-After {delay:.0f} s beyond the time limit)"
            policy.back_off(host, delay)
            waits += 1
            continue
        if err in (XROBOTS, TDM_HEADER) or tries >= retries:
            return key, None, err
        tries += 1


@contextlib.contextmanager
def active(policy: Policy):
    """Route img2dataset's per-URL fetch through :func:`download` with ``policy``."""
    global _ACTIVE
    import img2dataset.downloader as d

    saved = d.download_image_with_retry
    _ACTIVE, d.download_image_with_retry = policy, download
    try:
        yield policy
    finally:
        _ACTIVE, d.download_image_with_retry = None, saved
