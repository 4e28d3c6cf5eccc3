"""A small loopback HTTP server that serves bytes from memory.

Used by the offline example (`make curate`), the tests and the download benchmark, so that
the download stage is exercised for real (sockets, HTTP, img2dataset) without the internet.
Routes can answer slowly, redirect, fail with a status, send headers (X-Robots-Tag,
tdm-reservation, Retry-After), or answer differently on their first hits (``then``: a 429
before the image). A server may bind any 127.0.0.0/8 address, so one machine can play many
hosts (the download benchmark's pool of many hosts).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    content_type: str = "application/octet-stream"
    status: int = 200
    delay_s: float = 0.0
    location: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: answers for the first hits, in order; afterwards this route answers
    first: list[Route] = field(default_factory=list)


class LoopbackServer:
    """``with LoopbackServer(routes) as srv: srv.url("/a.jpg")``; counts hits per path."""

    def __init__(self, routes: dict[str, Route] | None = None, port: int = 0,
                 host: str = "127.0.0.1"):
        self.routes: dict[str, Route] = dict(routes or {})
        self.hits: dict[str, int] = {}
        self.in_flight = self.peak = 0  # requests received, not yet answered; the most at once
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                with server._lock:
                    hit = server.hits[path] = server.hits.get(path, 0) + 1
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                self._counted = True
                try:
                    self._answer(path, hit)
                finally:
                    self._done()

            def _done(self) -> None:
                # a request stops counting as it starts to be answered: its client may
                # finish reading and send the next one before this thread runs again
                if self._counted:
                    self._counted = False
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, path: str, hit: int) -> None:
                route = server.routes.get(path)
                if route is not None and hit <= len(route.first):
                    route = route.first[hit - 1]
                if route is None:
                    self._send(404, b"not found", "text/plain", {})
                    return
                if route.delay_s:
                    time.sleep(route.delay_s)
                headers = dict(route.headers)
                if route.location:
                    headers["Location"] = route.location
                self._done()
                self._send(route.status, route.body, route.content_type, headers)

            def _send(self, status: int, body: bytes, ctype: str, headers: dict) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.daemon_threads = True
        ThreadingHTTPServer.request_queue_size = 1024
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def start(self) -> LoopbackServer:
        # the loop looks for shutdown every 0.05 s: with socketserver's 0.5 s default,
        # every stop waited about half a second
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
