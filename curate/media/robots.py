"""Consent files of one origin: robots.txt (RFC 9309, parsed by ``protego``) and TDMRep's
``/.well-known/tdmrep.json`` (W3C TDM Reservation Protocol), fetched once and kept as a
small JSON-able record, so that a run asks each origin once and every shard decides from
the record without touching the network again.

Choices (documented in ARCHITECTURE §8.12):
- robots.txt 2xx: parsed as is; an HTML page served as robots.txt is parsed too ("parse
  what you can": it normally holds no rule, so everything is allowed).
- robots.txt 4xx (404, 401, 403, 410): "unavailable" = no restriction (RFC 9309 2.3.1.3).
- robots.txt 5xx, 429, timeout, connection error: "unreachable" = complete disallow
  (RFC 9309 2.3.1.4; Google does the same for a while), unless ``on_unreachable: allow``.
- tdmrep.json: a JSON list of ``{location, tdm-reservation, tdm-policy}``; the first rule
  whose location pattern (robots.txt syntax: ``*`` any characters, ``$`` end) matches the
  URL's path decides. Missing, unreachable or invalid: no reservation from the file (the
  ``tdm-reservation`` response header is still honoured on every image).
"""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

#: RFC 9309 2.5: crawlers must parse at least 500 KiB
MAX_BYTES = 512 * 1024
#: img2dataset's User-Agent (downloader.download_image), so robots.txt sees the same client
BASE_UA = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"


def user_agent_string(token: str | None) -> str:
    if token:
        return f"{BASE_UA} (compatible; {token}; +https://github.com/rom1504/img2dataset)"
    return BASE_UA


def origin(url: str) -> str | None:
    """``scheme://host[:port]`` (lower-cased, default port dropped): robots.txt's scope."""
    try:
        p = urlsplit(url)
        host, port = p.hostname, p.port
    except ValueError:
        return None
    scheme = p.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return None
    host = f"[{host}]" if ":" in host else host
    default = 80 if scheme == "http" else 443
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


def cache_name(org: str) -> str:
    """File name of an origin's record: readable, and safe on every file system."""
    name = re.sub(r"[^A-Za-z0-9.-]", "_", org.replace("://", "-"))
    if len(name) > 200:
        import hashlib

        name = name[:150] + "-" + hashlib.sha256(org.encode()).hexdigest()[:16]
    return name + ".json"


def _get(url: str, timeout: float, ua: str) -> dict:
    """{status, body, ctype, error}: status None when no HTTP answer came back."""
    req = urllib.request.Request(url, headers={"User-Agent": ua})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read(MAX_BYTES)
            return {"status": r.status, "body": body.decode("utf-8", "replace"),
                    "ctype": r.headers.get("Content-Type", ""), "error": None}
    except urllib.error.HTTPError as err:
        return {"status": err.code, "body": "", "ctype": "", "error": f"HTTP {err.code}"}
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        text = "timed out" if isinstance(reason, socket.timeout | TimeoutError) else str(reason)
        return {"status": None, "body": "", "ctype": "", "error": text}


def _state(status: int | None) -> str:
    if status is None or status == 429 or status >= 500:
        return "unreachable"
    if 200 <= status < 300:
        return "ok"
    return "missing"  # 4xx (and a 3xx urllib did not follow)


def fetch(org: str, timeout: float, token: str | None, robots: bool, tdmrep: bool) -> dict:
    """The consent record of one origin (robots.txt and/or tdmrep.json)."""
    ua = user_agent_string(token)
    rec: dict = {"origin": org}
    if robots:
        r = _get(f"{org}/robots.txt", timeout, ua)
        state = _state(r["status"])
        html = state == "ok" and ("html" in r["ctype"].lower()
                                  or r["body"].lstrip()[:1] == "<")
        rec["robots"] = {"state": state, "status": r["status"], "error": r["error"],
                         "html": html, "body": r["body"] if state == "ok" else ""}
    if tdmrep:
        r = _get(f"{org}/.well-known/tdmrep.json", timeout, ua)
        state, rules = _state(r["status"]), []
        if state == "ok":
            try:
                data = json.loads(r["body"])
                rules = [{"location": str(d.get("location", "")),
                          "reservation": int(d.get("tdm-reservation", 0) or 0),
                          "policy": d.get("tdm-policy")} for d in data if isinstance(d, dict)]
            except (ValueError, TypeError, AttributeError):
                state, rules = "invalid", []
        rec["tdmrep"] = {"state": state, "status": r["status"], "error": r["error"],
                         "rules": rules}
    return rec


def _pattern(loc: str) -> re.Pattern:
    end = loc.endswith("$")
    body = re.escape(loc[:-1] if end else loc).replace(r"\*", ".*")
    return re.compile(body + ("$" if end else ""))


def _path(url: str) -> str:
    p = urlsplit(url)
    return (p.path or "/") + (f"?{p.query}" if p.query else "")


class Verdicts:
    """Decides URLs from consent records; parsers are built once per origin."""

    def __init__(self, agent: str, on_unreachable: str = "disallow"):
        self.agent = agent
        self.on_unreachable = on_unreachable
        self._parsers: dict[str, object] = {}
        self._tdm: dict[str, list] = {}

    def robots(self, rec: dict, url: str) -> str | None:
        """None when robots.txt lets ``agent`` fetch ``url``, else why not (one line)."""
        r = rec.get("robots")
        if not r or r["state"] == "missing":
            return None
        if r["state"] == "unreachable":
            if self.on_unreachable == "allow":
                return None
            return (f"robots.txt of {rec['origin']} unreachable ({r['error']}): "
                    "treated as disallow-all (RFC 9309)")
        org = rec["origin"]
        parser = self._parsers.get(org)
        if parser is None:
            from protego import Protego

            parser = self._parsers[org] = Protego.parse(r["body"])
        if parser.can_fetch(url, self.agent):
            return None
        return f"robots.txt of {org} disallows {_path(url)} for {self.agent}"

    def tdm(self, rec: dict, url: str) -> str | None:
        """None unless tdmrep.json reserves TDM rights for ``url``'s path."""
        t = rec.get("tdmrep")
        if not t or not t["rules"]:
            return None
        org = rec["origin"]
        rules = self._tdm.get(org)
        if rules is None:
            rules = self._tdm[org] = [(_pattern(d["location"] or "/"), d) for d in t["rules"]]
        path = _path(url)
        for pat, d in rules:
            if pat.match(path):
                if d["reservation"] == 1:
                    policy = f", policy {d['policy']}" if d.get("policy") else ""
                    return f"tdmrep.json of {org} reserves TDM rights for {d['location']}{policy}"
                return None
        return None
