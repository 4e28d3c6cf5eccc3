"""What the ``curate explore`` tests share: a run copied and indexed, the app served on a
loopback port from a thread, JSON and file requests, and Debian's chromium for Playwright.

Imported as ``from explore_helpers import ...`` (tests/ is on the path through conftest).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import free_port


def indexed_copy(src: Path, dst: Path, pairs: str = "kept") -> Path:
    """A copy of the run ``src`` (the session's example run stays as it was) with its kNN
    index built by ``curate index`` (``pairs``: kept, or all: the dropped pairs too)."""
    from typer.testing import CliRunner

    from curate.cli import app

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    r = CliRunner().invoke(app, ["index", str(dst), "--pairs", pairs])
    assert r.exit_code == 0, r.output
    return dst


class Served:
    """The explore app of ``run`` on 127.0.0.1, in a thread of this process."""

    def __init__(self, run: str | Path, show_sensitive: bool = False) -> None:
        import uvicorn

        from curate.app.explore import make_app, open_explorer

        self.ex = open_explorer(str(run), show_sensitive)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(make_app(self.ex), host="127.0.0.1",
                                                    port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(400):
            if self.server.started:
                break
            time.sleep(0.05)
        assert self.server.started, "the explore server did not start"

    def get(self, path: str, data: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read(), dict(err.headers)

    def json(self, path: str, data: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        status, body, _ = self.get(path, data, headers)
        return status, json.loads(body)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]
              ) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body (what a browser's upload form sends)."""
    boundary = "----curate-explore-test"
    out = b""
    for k, v in fields.items():
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                ).encode()
    for k, (name, data) in files.items():
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; '
                f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                ).encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def read_parts(folder: Path, columns: list[str] | None = None) -> pa.Table:
    return pa.concat_tables([pq.read_table(p, columns=columns)
                             for p in sorted(Path(folder).glob("part-*.parquet"))])


def exact_neighbours(run: Path, k: int) -> dict[str, list[str]]:
    """The oracle: every scored pair's k nearest others by cosine of the score stage's image
    embeddings, brute force in NumPy."""
    t = read_parts(run / "scores", ["uid", "image_emb"])
    t = t.filter(pc.is_valid(t["image_emb"]))
    x = np.stack(t["image_emb"].to_numpy(zero_copy_only=False)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    uids = t["uid"].to_pylist()
    return {uids[i]: [uids[j] for j in row] for i, row in enumerate(top)}


def chromium() -> str:
    """Debian's chromium for Playwright: under CI it must be there (.ci/run installs it);
    elsewhere a missing one skips the browser tests with the reason."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing under CI (.ci/run installs it with apt)")
        pytest.skip("no chromium on PATH (apt-get install -y chromium): browser tests skipped")
    return path


def screens_dir() -> Path | None:
    """Where page screenshots go for people to look at (``CURATE_EXPLORE_SCREENS``), if set."""
    d = os.environ.get("CURATE_EXPLORE_SCREENS")
    if not d:
        return None
    Path(d).mkdir(parents=True, exist_ok=True)
    return Path(d)
