"""download: fetch each shard's images with img2dataset, inside one Ray task per shard.

img2dataset does the fetching (its ``Downloader``: thread pool, timeouts, retries, the
X-Robots-Tag opt-out handling); curate decides what it may fetch (netguard), guards it
against hostile bytes (imagecheck, run inside img2dataset's resize hook so nothing is decoded
before the checks), and turns its output into ``images/part-NNNNN.parquet``:
uid, image, format, width, height, original_width, original_height, sha256, status
('ok'|'failed'), error, kept, reason, detail (the error).
Every input row comes out, failures included. Rows whose pool already carries image bytes
are checked and passed through without a fetch.

Consent comes before fetching (``_download_consent``, ARCHITECTURE §8.12): a pair that a
denylist rule, robots.txt or TDMRep refuses is never requested and is dropped as
``denylisted``, ``robots_disallowed`` or ``tdm_reserved`` (detail: the rule); each origin's
robots.txt and tdmrep.json are fetched once per run by global steps before the shards.
Fetching is polite (``curate.media.polite``): a per-host cap across the cluster (a gate
the driver opens for the shard step, :meth:`gates`), 429/503 Retry-After.

``width``/``height`` are those of the stored bytes (after ``resize``, when set);
``original_width``/``original_height`` those of the image as fetched, before any resize —
what DataComp's metadata calls ``original_width``/``original_height`` and its basic filter
(side >= 200, aspect ratio <= 3) reads. They come from img2dataset's resizer, which decodes
with OpenCV without applying EXIF orientation, like PIL's header size used without resize.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.config import OPERATIONAL, Section
from curate.core.engine import Resources
from curate.media import imagecheck, netguard, polite
from curate.media.fetch import fetch
from curate.stages import _download_consent as consent
from curate.stages import _download_denylist as dl
from curate.stages._download_consent import ConsentConfig, DenylistConfig, PoliteConfig
from curate.stages.base import DECISION_FIELDS, GlobalStep, Stage

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("uid", pa.string()), ("image", pa.binary()), ("format", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("original_width", pa.int32()),
    ("original_height", pa.int32()), ("sha256", pa.string()),
    ("status", pa.string()), ("error", pa.string()), *DECISION_FIELDS,
])


class ResizeConfig(Section):
    image_size: int = Field(256, ge=8)
    resize_mode: Literal["keep_ratio", "center_crop", "border", "keep_ratio_largest"] = (
        "keep_ratio"
    )
    resize_only_if_bigger: bool = True
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=0, le=100)


class DownloadConfig(Section):
    """img2dataset settings; the limits guard workers against hostile servers."""

    threads: int = Field(32, ge=1, le=1024, description="fetch threads per shard task",
                         json_schema_extra=OPERATIONAL)
    processes: int | None = Field(
        None, ge=1, description="shard tasks at once (default: one per CPU of the Ray cluster)",
        json_schema_extra=OPERATIONAL)
    timeout: float = Field(10, gt=0, le=600)
    retries: int = Field(0, ge=0, le=10)
    max_image_bytes: int = Field(20_000_000, ge=1)
    max_image_pixels: int = Field(89_478_485, ge=1, description="decompression-bomb limit")
    allow_private_addresses: bool = False
    user_agent_token: str | None = None
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )
    resize: ResizeConfig | None = None
    #: consent before fetching: robots.txt, TDMRep (``consent: {robots: false}`` etc.)
    consent: ConsentConfig = Field(default_factory=ConsentConfig)
    #: per-host cap, 429/503 back-off (``polite: null``: img2dataset's own fetch, unchanged)
    polite: PoliteConfig | None = Field(default_factory=PoliteConfig)
    denylist: DenylistConfig | None = None


class DownloadStage(Stage):
    kind = "download"
    folder = "images"
    view = "images"
    decides = True
    Config = DownloadConfig
    schema = SCHEMA
    reasons = {"download_failed": "the image could not be fetched or failed its checks "
                                  "(detail: the error)", **consent.REASONS}
    joins = ("image", "format", "width", "height", "sha256")
    #: a denylist (hash lists of abuse material included) is a safety rule: never a picture
    sensitive = ("denylisted",)
    #: run.json ``by_detail``: denylist drops per list kind (md5, pdq, domain, ...)
    count_detail_kinds = ("denylisted",)
    pool_columns = None
    help = ("Fetch each shard's images with img2dataset (robots.txt, TDMRep, denylists, "
            "per-host cap, URL guard, header checks).")
    doc_sections = ({}, {"consent": {"robots": False, "tdmrep": False}})

    def resources(self) -> Resources:
        return Resources(num_cpus=1)

    def steps(self) -> list:
        from curate.stages.base import ShardStep

        # the lists are read on every run (the step's version: the files' content), so a
        # list changed under the same path is seen; its info's ``hash_rules`` digest is in
        # every shard's input digest, so stored images are checked against a new hash list
        steps = [GlobalStep("denylist", plan=list, map=lambda _i: None,
                            commit=lambda _acc: consent.write_denylist(
                                self.rd, self.section.denylist),
                            version=lambda: dl.files_version(self.section.denylist))]
        c = self.section.consent
        if c.robots or c.tdmrep:
            steps += [
                GlobalStep("hosts", plan=lambda: consent.shard_groups(self.shards),
                           map=self._origins,
                           start=set, fold=lambda acc, _item, res: acc.update(res) or acc,
                           commit=lambda acc: consent.write_origins(self.rd, self._folder(),
                                                                    acc)),
                GlobalStep("robots", plan=lambda: consent.origin_batches(
                    self.rd, self._folder()), map=self._records, start=dict,
                    fold=consent.add_counts, commit=lambda acc: {
                        "consent_files": acc, "records_at": time.time_ns()}),
            ]
        return [*steps, ShardStep()]

    def preflight(self) -> list[str]:
        """Something to fetch (a url column, or image bytes in the pool) and the denylist's
        files: a missing hash list would otherwise let through what it lists."""
        from curate.stages import _needs

        names = _needs.pool_names(self)
        problems = [] if names is None or {"url", "image"} & set(names) else [
            f"{self.name}: the pool has no url column and no image column: nothing to fetch "
            f"(map one with pool.columns.url; it has {', '.join(names)})"]
        cfg = self.section.denylist
        for key in dl.KIND_OF if cfg is not None else ():
            problems += _needs.missing_file(f"{self.name}.denylist.{key}", getattr(cfg, key),
                                            "a list of one value per line")
        return problems

    def _folder(self) -> str:
        return self.pipeline.ref(self.name).folder

    def _origins(self, group: dict[str, Any]) -> list[str]:
        out: set[str] = set()
        rules = consent.denylist_rules(self.rd)  # once for the group's shards
        for shard in group["shards"]:
            t = self.inputs(shard)
            if "url" not in t.column_names:
                continue
            if "image" in t.column_names:  # pairs the pool brings bytes for are not fetched
                t = t.filter(pc.is_null(t["image"]))
            urls = t["url"].to_pylist()
            # a denylisted pair's origin is not asked for its consent files either
            denied, _ = consent.pre_fetch(self.rd, self._folder(), None,
                                          t["uid"].to_pylist(), urls,
                                          list(range(len(urls))), [], rules=rules)
            out.update(consent.shard_origins([u for i, u in enumerate(urls)
                                              if i not in denied]))
        return sorted(out)

    def _records(self, batch: list[str]) -> dict[str, int]:
        # --retry-failed asks every origin recorded as unreachable again, however recent
        recheck = 0.0 if self.spec.options.get("retry_failed") else None
        recs = consent.fetch_records(self.rd, self._folder(), batch, self.section,
                                     recheck_s=recheck)
        return consent.summarize_records(recs)

    def max_in_flight(self) -> int | None:
        return self.section.processes

    def gates(self) -> dict[str, int]:
        """The per-host cap holds across every download task of the cluster."""
        p = self.section.polite
        return {"hosts": p.per_host} if p is not None and p.cluster_wide else {}

    def split_gates(self) -> bool:
        return self.section.polite is None or self.section.polite.split_cap

    def inputs(self, shard: str) -> pa.Table:
        t = self.survivors(shard)
        cols = [c for c in ("uid", "url", "image") if c in t.column_names]
        return t.select(cols)

    def needs_rerun(self, meta: dict[str, Any]) -> bool:
        """``--retry-failed``: a finished shard with failures is processed again."""
        return bool(self.spec.options.get("retry_failed")) and bool(
            meta.get("counts", {}).get("dropped"))

    def input_digest(self, shard: str, inputs: pa.Table) -> str:
        from curate.core.rundir import uid_digest

        # never the whole state: a rerun reuses every success; but the image-hash rules,
        # so a new or changed hash list checks the stored images again (without a fetch)
        hashes = (self.state.get("denylist") or {}).get("hash_rules")
        return uid_digest(inputs["uid"]) + (f":{hashes}" if hashes else "")

    def _previous(self, shard: str, rules: pa.Table | None
                  ) -> tuple[dict[str, tuple[bytes, tuple | None]], dict[str, str]]:
        """An earlier attempt's successes, uid -> (stored bytes, original size or None), and
        its image-hash drops still listed, uid -> label (never fetched again)."""
        import pyarrow.parquet as pq

        from curate.core.io import read_shard_meta

        path = self.rd.shard_path(self.pipeline.ref(self.name).folder, shard)
        meta = read_shard_meta(self.rd.fs, path)
        if not meta or meta.get("fingerprint") != self.spec.fingerprint:
            return {}, {}
        with self.rd.fs.open(path, "rb") as f:
            has_original = "original_width" in pq.read_schema(f).names
        cols = ["uid", "image", "kept", "reason", "detail"] + (
            ["original_width", "original_height"] if has_original else [])
        t = self.rd.read(self.pipeline.ref(self.name).folder, shard, cols)
        drops = dl.previous_hash_drops(t.filter(pc.invert(t["kept"])), rules)
        t = t.filter(t["kept"])
        sizes = (zip(t["original_width"].to_pylist(), t["original_height"].to_pylist())
                 if has_original else [None] * t.num_rows)
        return {u: (img, size) for u, img, size in zip(
            t["uid"].to_pylist(), t["image"].to_pylist(), sizes)}, drops

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        cfg = self.section
        # urllib's opener is per process, and a worker may serve runs with either setting
        netguard.install_redirect_guard(enabled=not cfg.allow_private_addresses)
        uids = inputs["uid"].to_pylist()
        n = len(uids)
        images: list[bytes | None] = [None] * n
        errors: list[str | None] = [None] * n
        # the size as fetched, before any resize (None: the stored bytes' own size)
        originals: list[tuple | None] = [None] * n
        brought = inputs["image"].to_pylist() if "image" in inputs.column_names else [None] * n
        urls = inputs["url"].to_pylist() if "url" in inputs.column_names else [None] * n

        codes: list[str | None] = [None] * n
        pool_bytes = {u for u, b in zip(uids, brought) if b is not None}
        # reuse what an earlier attempt at this shard already fetched: a rerun (retry of
        # failures, a pool whose balancing changed) never downloads a success twice, and
        # never fetches again what a hash list dropped (its bytes were purged)
        rules = consent.denylist_rules(self.rd)
        previous, drops = self._previous(shard, rules)
        for i in range(n):
            if uids[i] in drops:
                codes[i], errors[i], brought[i] = "denylisted", drops[uids[i]], None
            elif brought[i] is None and uids[i] in previous:
                brought[i], originals[i] = previous[uids[i]]
                if originals[i] is None and cfg.resize is not None:
                    originals[i] = (None, None)  # an older shard: the size before resize is lost
        need = [i for i in range(n) if brought[i] is None and codes[i] is None]
        for i in range(n):
            if brought[i] is not None:
                images[i] = brought[i]
        # consent before fetching: denylist (every row), then robots.txt and TDMRep
        stamp = (self.state.get("robots") or {}).get("records_at")
        verdicts, rules = consent.pre_fetch(self.rd, self._folder(), cfg, uids, urls,
                                            list(range(n)), need, stamp, rules)
        for i, (code, detail) in verdicts.items():
            codes[i], errors[i], images[i] = code, detail, None
        need = [i for i in need if codes[i] is None]
        if need:
            refused = netguard.refusals([urls[i] or "" for i in need],
                                        cfg.allow_private_addresses, cfg.threads)
            fetch_idx = []
            for i, reason in zip(need, refused):
                if urls[i] is None:
                    errors[i] = "no url and no image bytes"
                elif reason:
                    errors[i] = reason
                else:
                    fetch_idx.append(i)
            self._fetch(shard, fetch_idx, uids, urls, images, errors, originals, codes)
        table = build_table(uids, images, errors, cfg, originals, codes)
        hits = consent.post_fetch(rules, uids, table["image"].to_pylist(),
                                  table["sha256"].to_pylist())
        if hits:
            for i, label in hits.items():
                codes[i], errors[i], images[i] = "denylisted", label, None
            table = build_table(uids, images, errors, cfg, originals, codes)
        # the purge: a hash-listed image the pool brought leaves the pool shard too
        dl.purge_pool_shard(self.rd, shard, [
            u for u, c, e in zip(uids, codes, errors)
            if c == "denylisted" and u in pool_bytes and dl.is_hash_label(e)])
        return table

    def _fetch(self, shard: str, idx: list[int], uids: list, urls: list, images: list,
               errors: list, originals: list, codes: list) -> None:
        """Fetch ``idx`` with img2dataset (politely unless ``polite: null``), in place."""
        cfg = self.section
        policy = None
        if cfg.polite is not None:
            p = cfg.polite
            timeout = self.cfg.run.shard_timeout_s
            # cluster-wide: this task's own share of each host's cap, plus the gate's
            # shared remainder (none where the tasks at once divide per_host); outside
            # the driver's shard step (no split, no gate opened): the whole cap per task
            share = self.gate_share("hosts") if p.cluster_wide else None
            reserved, shared = share if share is not None else (p.per_host, 0)
            gate = self.gate("hosts") if shared else None
            policy = polite.Policy(
                per_host=reserved + shared, reserved=reserved,
                http_retries=p.http_retries, retry_after_max_s=p.retry_after_max_s,
                backoff_s=p.backoff_s, tdm_header=cfg.consent.tdmrep,
                deadline=time.monotonic() + 0.8 * timeout if timeout else None, gate=gate)
        scratch = tempfile.mkdtemp(prefix=f"curate-dl-{shard[:10]}-")
        try:
            got = fetch([uids[i] for i in idx], [urls[i] for i in idx], cfg, scratch, policy)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        for i in idx:
            r = got.get(uids[i])
            if r is None:
                errors[i] = "missing from img2dataset output"
            else:
                images[i], errors[i] = r["image"], r["error"]
                originals[i] = r.get("original")
                codes[i] = consent.classify(errors[i]) if errors[i] else None


def build_table(uids: list[str], images: list[bytes | None], errors: list[str | None],
                cfg: Any, originals: list[tuple | None] | None = None,
                codes: list[str | None] | None = None) -> pa.Table:
    """Check every image's header and assemble the output shard.

    ``originals[i]``: (width, height) of the image as fetched, before img2dataset resized
    it; None where no resize happened (pool bytes, or no ``resize``): the stored size.
    ``codes[i]``: the reason code of a consent verdict (None: ``download_failed``)."""
    fmts, ws, hs, shas, ows, ohs = [], [], [], [], [], []
    originals = originals if originals is not None else [None] * len(images)
    for i, data in enumerate(images):
        fmt = w = h = sha = None
        if data is not None and errors[i] is None:
            fmt, w, h, err = imagecheck.inspect(data, cfg.max_image_bytes, cfg.max_image_pixels)
            if err:
                errors[i], images[i] = err, None
            else:
                sha = hashlib.sha256(data).hexdigest()
        elif errors[i] is None:
            errors[i] = "no image"
        if errors[i] is not None:
            images[i] = None
            fmt = w = h = None
        fmts.append(fmt)
        ws.append(w)
        hs.append(h)
        shas.append(sha)
        ow, oh = originals[i] if originals[i] is not None and fmt is not None else (w, h)
        ows.append(ow)
        ohs.append(oh)
    ok = pa.array([e is None for e in errors])
    error_arr = pa.array(errors, pa.string())
    codes = codes if codes is not None else [None] * len(errors)
    reason = pa.array([None if e is None else (c or "download_failed")
                       for e, c in zip(errors, codes)], pa.string())
    return pa.Table.from_arrays([
        pa.array(uids, pa.string()), pa.array(images, pa.binary()), pa.array(fmts, pa.string()),
        pa.array(ws, pa.int32()), pa.array(hs, pa.int32()), pa.array(ows, pa.int32()),
        pa.array(ohs, pa.int32()), pa.array(shas, pa.string()),
        pc.if_else(ok, "ok", "failed"), error_arr, ok,
        reason, error_arr,
    ], schema=SCHEMA)
