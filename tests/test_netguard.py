"""Which URLs may be fetched, and the cheap header checks on downloaded bytes."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from conftest import bomb_png, drawn_image

from curate.media import imagecheck, netguard


@pytest.mark.parametrize("url,needle", [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),   # cloud metadata
    ("http://127.0.0.1:8080/x.jpg", "127.0.0.1"),
    ("http://[::1]/x.jpg", "::1"),
    ("http://10.1.2.3/x.jpg", "10.1.2.3"),
    ("http://192.168.0.1/x.jpg", "192.168.0.1"),
    ("http://[::ffff:127.0.0.1]/x.jpg", "127.0.0.1"),                   # v4-mapped v6
    ("http://localhost/x.jpg", "refused private"),
    ("ftp://example.com/x.jpg", "unsupported URL scheme 'ftp'"),
    ("file:///etc/passwd", "unsupported URL scheme 'file'"),
    ("http:///x.jpg", "no host"),
])
def test_refused(url, needle):
    reason = netguard.url_refusal(url, allow_private=False)
    assert reason is not None and needle in reason


def test_allowed_when_configured():
    assert netguard.url_refusal("http://127.0.0.1/x.jpg", allow_private=True) is None
    assert netguard.url_refusal("http://8.8.8.8/x.jpg", allow_private=False) is None


def test_redirect_to_private_address_is_refused():
    handler = netguard._GuardedRedirects()
    req = urllib.request.Request("http://8.8.8.8/a.jpg")
    with pytest.raises(urllib.error.URLError, match="redirect refused"):
        handler.redirect_request(req, None, 302, "Found", {}, "http://169.254.169.254/")


def test_image_header_checks():
    ok = drawn_image(3, (50, 40), "png")
    assert imagecheck.inspect(ok, 10**6, 10**8) == ("png", 50, 40, None)
    assert "too large" in imagecheck.inspect(ok, 10, 10**8)[3]
    assert "decompression bomb" in imagecheck.inspect(bomb_png(), 10**6, 10**8)[3]
    assert "truncated" in imagecheck.inspect(ok[:-20], 10**6, 10**8)[3]
    jpg = drawn_image(3, (50, 40), "jpg")
    assert "truncated" in imagecheck.inspect(jpg[: len(jpg) // 2], 10**6, 10**8)[3]
    assert "HTML page" in imagecheck.inspect(b"<html><body>x</body></html>", 10**6, 10**8)[3]
    assert "empty" in imagecheck.inspect(b"", 10**6, 10**8)[3]
