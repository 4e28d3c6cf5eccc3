"""Shared fixtures: one Ray instance per session, a loopback image server, pools on disk.

Nothing here reaches a host but 127.0.0.1; images are drawn with Pillow.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

for _k, _v in (("NO_ALBUMENTATIONS_UPDATE", "1"), ("WANDB_MODE", "disabled"),
               ("RAY_AUTH_MODE", "disabled"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_k, _v)

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from helpers import free_port  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from curate.media.loopback import LoopbackServer, Route  # noqa: E402

#: the longest groups (seconds on 2 cores), handed out first under pytest-xdist so that none
#: of them is left to run alone at the end; the rest keep their collection order
SLOW_FIRST = ("tests/test_faults.py", "tests/test_packaging.py", "example_run",
              "tests/test_cluster.py", "tests/test_kmeans_gpu_workers.py",
              "tests/test_score_stage.py", "tests/test_index.py")


def _example_modules() -> set[str]:
    """Test modules that use the session's example run (their source names the fixture):
    known from the files, because xdist's controller schedules by node id alone."""
    import re
    from pathlib import Path

    return {f"tests/{p.name}" for p in Path(__file__).parent.glob("test_*.py")
            if re.search(r"\bexample_run\b", p.read_text(encoding="utf-8"))}


def _group(nodeid: str, example: set[str]) -> str:
    module = nodeid.split("::")[0]
    return "example_run" if module in example else module


def pytest_collection_modifyitems(config, items):
    """The longest groups first (stable otherwise): the order xdist hands them out in."""
    example = _example_modules()
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item.nodeid, example), len(rank)))


def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs ``pytest -n 2``: each worker is its own session, with its own
    session and module fixtures, so a module's tests go to one worker (its module fixtures
    are built once) and every module using the example run to one worker (example_run is
    built once), in collection order. (Not xdist's ``--dist loadgroup`` marks: pytest 9
    keeps node ids where xdist 3.8 no longer writes its ``@group`` suffix, so every test was
    a group of its own.)"""
    from xdist.scheduler import LoadScopeScheduling

    example = _example_modules()
    config.option.loadscopereorder = False  # collection order: SLOW_FIRST first

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid, example)

    return ByGroup(config, log)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (start-up costs seconds); under pytest-xdist,
    one per worker. Its temp dir is short: Ray's socket paths must stay under 107 bytes, which
    a pytest temp path (``/tmp/pytest-of-USER/pytest-N/popen-gwN/...``) can overrun."""
    import shutil
    import tempfile

    from curate.core import engine

    tmp = tempfile.mkdtemp(prefix="curate-test-ray-", dir="/tmp")
    os.environ.setdefault("CURATE_RAY_TMP", tmp)
    engine.init(num_cpus=2)
    yield
    engine.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def drawn_image(i: int, size: tuple[int, int], fmt: str) -> bytes:
    img = Image.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256))
    d = ImageDraw.Draw(img)
    d.ellipse((size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4),
              fill=((i * 11) % 256, 200, 30))
    buf = io.BytesIO()
    img.save(buf, {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt])
    return buf.getvalue()


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


GOOD = 24


def image_routes() -> dict[str, Route]:
    routes: dict[str, Route] = {}
    fmts = ["jpg", "png", "webp"]
    for i in range(GOOD):
        fmt = fmts[i % 3]
        size = (32 + 17 * i, 24 + 11 * (i % 7))
        routes[f"/ok/{i}.{fmt}"] = Route(drawn_image(i, size, fmt), f"image/{fmt}")
    whole = drawn_image(99, (200, 150), "jpg")
    routes["/bad/truncated.jpg"] = Route(whole[: len(whole) // 2], "image/jpeg")
    routes["/bad/page.jpg"] = Route(b"<!DOCTYPE html><html>nope</html>", "text/html")
    routes["/bad/slow.jpg"] = Route(drawn_image(5, (40, 40), "jpg"), "image/jpeg", delay_s=4)
    routes["/bad/bomb.png"] = Route(bomb_png(), "image/png")
    routes["/bad/noai.jpg"] = Route(drawn_image(7, (40, 40), "jpg"), "image/jpeg",
                                    headers={"X-Robots-Tag": "noai"})
    routes["/redirect.jpg"] = Route(status=302, location="/ok/0.jpg")
    return routes


EXPECTED_ERRORS = {
    "/bad/truncated.jpg": "truncated",
    "/bad/page.jpg": "HTML page",
    "/bad/slow.jpg": "timed out",
    "/bad/bomb.png": "decompression bomb",
    "/bad/noai.jpg": "X-Robots-Tag",
    "/bad/missing.jpg": "404",
}


@pytest.fixture(scope="session")
def image_server():
    with LoopbackServer(image_routes()) as srv:
        yield srv


def pool_rows(server: LoopbackServer) -> list[dict]:
    rows = [{"url": server.url(p), "caption": f"picture number {i} of a thing", "extra": i}
            for i, p in enumerate(sorted(server.routes))]
    rows.append({"url": server.url("/bad/missing.jpg"), "caption": "gone", "extra": -1})
    return rows


def write_pool(path, rows: list[dict], columns: dict[str, str] | None = None) -> str:
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    if columns:
        cols = {columns.get(k, k): v for k, v in cols.items()}
    pq.write_table(pa.table(cols), str(path))
    return str(path)


def base_config(**sections):
    from curate.stages.registry import parse_pipeline as parse_config

    data = {
        "stages": ["download"],
        "pool": {"shard_size": 8},
        "download": {"threads": 8, "timeout": 2, "allow_private_addresses": True},
        "run": {"max_retries": 0, "num_cpus": 2},
    }
    for k, v in sections.items():
        if isinstance(v, dict):
            data.setdefault(k, {}).update(v)
        else:
            data[k] = v
    return parse_config(data)


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test at once if code under test tries to reach any host but loopback: how
    tests check "fails fast offline" without timing anything."""
    import socket

    real = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if isinstance(host, str) and (host.startswith("127.") or host in ("::1", "localhost")
                                      or self.family == socket.AF_UNIX):
            return real(self, address)
        raise AssertionError(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError(f"DNS lookup attempted: {a[:2]!r}")))


@pytest.fixture(scope="session")
def example_run(tmp_path_factory, ray_session):
    """The offline example (what `make curate` runs), once per test session: (run dir, the
    manifest run_example returned). Tests that change a run copy it first."""
    from curate.app.example import run_example

    out = tmp_path_factory.mktemp("example") / "run"
    os.environ["CURATE_EXAMPLE_PORT"] = str(free_port())
    try:
        manifest = run_example(str(out), None, [])
    finally:
        os.environ.pop("CURATE_EXAMPLE_PORT")
    return out, manifest
