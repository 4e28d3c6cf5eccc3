"""Where a CLIP model's weights and architecture come from: tags, hf-hub ids, files, folders.

Split from the loader (`curate.models.clip`) because resolving is its own job with its own
rules: a tag or an hf-hub id is turned into local files here, cache first, so a cached tag
loads with no network at all and with HF_HUB_OFFLINE=1 a missing one fails in milliseconds
(huggingface_hub would first ask the hub for a newer revision, ~76 s of retries offline).
Every failure is an `InputError` of one line that says which weights, for which model, and
how to provide them.

open_clip is passed in by the loader or imported inside the functions that need it, so
importing this module stays cheap.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from pathlib import Path

from curate.errors import InputError
from curate.models.oneline import one_line
from curate.models.spec import ModelSpec

log = logging.getLogger(__name__)

#: open_clip model JSONs shipped as package data; a pipeline names one by its file stem
BUNDLED_CONFIGS = Path(__file__).resolve().parent / "configs"

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
"""Suffixes that make a `pretrained` value a file path rather than a tag."""

HUB_PREFIX = "hf-hub:"
HUB_CONFIG = "open_clip_config.json"
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in BUNDLED_CONFIGS.glob("*.json"))


def resolve_model_name(spec: ModelSpec, open_clip) -> str:
    """Register `model_config` if given, and check the name is one open_clip can build."""
    model = spec.model.replace("/", "-") if spec.model else None
    if spec.model_config:
        stem = _register_model_config(spec.model_config, open_clip)
        if model and model != stem:
            raise InputError(
                f"score.model: {spec.model!r} is not the model defined by score.model_config "
                f"({spec.model_config} defines {stem!r}); set score.model to {stem!r} or leave "
                "it unset"
            )
        return stem
    if not model:
        raise InputError("score.model: required (an open_clip name such as 'ViT-B-32')")
    models = open_clip.list_models()
    if model not in models:
        close = difflib.get_close_matches(model, models, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InputError(
            f"score.model: unknown open_clip model {spec.model!r}; {hint}valid names: "
            f"open_clip.list_models() ({len(models)} models, e.g. ViT-B-32, ViT-B-16, "
            "ViT-L-14), or a custom JSON via score.model_config"
        )
    return model


def _register_model_config(path_str: str, open_clip) -> str:
    """Validate the JSON first: open_clip keeps every added path and re-reads them all on each
    add, so one broken file registered would break every later registration."""
    path = Path(path_str).expanduser()
    bundled = BUNDLED_CONFIGS / f"{path_str}.json"
    if not path.is_file() and bundled.is_file():  # a bundled config named by its stem
        path = bundled
    if not path.is_file():
        raise InputError(f"score.model_config: {path} does not exist (an open_clip model JSON "
                         f"or a bundled name: {', '.join(bundled_configs())})")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"score.model_config: {path} is not valid JSON ({one_line(exc)})") from exc
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if not isinstance(cfg, dict) or missing:
        raise InputError(
            f"score.model_config: {path} is not an open_clip model config (missing "
            f"{', '.join(missing) or 'a JSON object'})"
        )
    if path.stem in open_clip.list_models():
        log.info("score.model_config %s (re)defines open_clip model %r", path, path.stem)
    open_clip.add_model_config(path)
    return path.stem


def model_cfg(open_clip, name: str) -> dict:
    return open_clip.get_model_config(name) or {}


def is_offline() -> bool:
    """HF_HUB_OFFLINE as set now: huggingface_hub reads it once at import, so a value set later
    (tests, a CLI flag) would otherwise be ignored and a download wait ~46 s on DNS."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    if any(v.strip().upper() in ("1", "ON", "YES", "TRUE") for v in flags):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _offline_hint(what: str, name: str, where: str) -> str:
    return (
        f"score.pretrained: weights {what} for {name} could not be loaded (offline: "
        f"HF_HUB_OFFLINE=1 and {where} is not in the local cache). Download them where internet "
        "exists and set score.pretrained to the local file path, or list valid tags with "
        "open_clip.list_pretrained()"
    )


def resolve_tag(name: str, tag: str, cache_dir: str | None) -> tuple[str, dict]:
    """A tag's weights as a local file: the cached copy if there is one, else a download.

    Resolving the tag here rather than passing it to open_clip makes offline mode fail in
    milliseconds whatever huggingface_hub read at import time, and lets a cached tag load
    without network at all (huggingface_hub would first ask the hub for a newer revision:
    with no network that is ~76 s of retries here, safetensors then .bin). A published tag's
    weights do not change, so the cached copy is the one to use.
    """
    import open_clip
    from open_clip import pretrained as oc_pretrained

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if cfg.get("file"):
        return cfg["file"], cfg
    hub = cfg.get("hf_hub", "")
    if hub and oc_pretrained.has_hf_hub():
        repo, filename = os.path.split(hub)
        names = safetensors_first([filename or HUB_WEIGHTS[1]])
        for fn in names:
            path = hub_cached(repo, fn, cache_dir)
            if path:
                return path, cfg
        where = f"hf-hub {repo}/{names[-1]}"
    else:
        url = cfg.get("url", "")
        cached = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(url)
        if url and cached.is_file():
            return str(cached), cfg
        where = url or "the weights"
    if is_offline():
        raise InputError(_offline_hint(f"'{tag}'", name, where))
    try:
        path = oc_pretrained.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as exc:
        raise InputError(
            f"score.pretrained: weights '{tag}' for {name} could not be downloaded "
            f"({one_line(exc)}). Download them where internet exists and set score.pretrained to "
            "the local file path (set HF_HUB_OFFLINE=1 to skip network attempts)"
        ) from exc
    if not path:
        raise InputError(f"score.pretrained: tag '{tag}' for {name} names no weights to download")
    return path, cfg


def safetensors_first(names: list[str]) -> list[str]:
    """The .safetensors twin of a .bin/.pth hub file is preferred, as open_clip does."""
    out = []
    for fn in names:
        if fn == HUB_WEIGHTS[1]:
            out.append(HUB_WEIGHTS[0])
        elif fn.endswith((".bin", ".pth")):
            out.append(fn[:-4] + ".safetensors")
        out.append(fn)
    return out


def hub_cached(repo: str, filename: str, cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def resolve_hub_dir(repo: str, cache_dir: str | None) -> Path:
    """An hf-hub:org/name id as a local folder (config + weights), for open_clip's local-dir:
    the cached snapshot if complete, else downloaded (see `resolve_tag` for why)."""
    what = f"'{HUB_PREFIX}{repo}'"
    if not repo or "/" not in repo:
        raise InputError(f"score.pretrained: {what} is not an hf-hub:org/name id")
    config = hub_cached(repo, HUB_CONFIG, cache_dir)
    weights = next((p for fn in HUB_WEIGHTS if (p := hub_cached(repo, fn, cache_dir))), None)
    if (not config or not weights) and is_offline():
        missing = HUB_CONFIG if not config else " or ".join(HUB_WEIGHTS)
        raise InputError(_offline_hint(what, repo, f"hf-hub {repo}/{missing}"))
    if not config or not weights:
        from open_clip import pretrained as oc_pretrained

        try:
            config = oc_pretrained.download_pretrained_from_hf(
                repo, filename=HUB_CONFIG, cache_dir=cache_dir
            )
            weights = oc_pretrained.download_pretrained_from_hf(repo, cache_dir=cache_dir)
        except Exception as exc:
            raise InputError(
                f"score.pretrained: weights {what} could not be downloaded ({one_line(exc)}). "
                "Download them where internet exists and set score.pretrained to the local "
                "folder (open_clip_config.json + weights)"
            ) from exc
    folder = Path(config).parent
    if Path(weights).parent != folder:
        raise InputError(f"score.pretrained: {what}: config and weights are in different caches")
    return folder


def check_weights_dir(folder: Path, pretrained: str) -> None:
    """open_clip's local-dir loader warns and random-inits when no weights are there: refuse."""
    if not (folder / HUB_CONFIG).is_file():
        raise InputError(
            f"score.pretrained: folder '{pretrained}' has no {HUB_CONFIG}; point "
            "score.pretrained at the checkpoint file instead and set score.model"
        )
    if not any(any(folder.glob(f"*{s}")) for s in (".safetensors", ".bin", ".pth")):
        raise InputError(
            f"score.pretrained: folder '{pretrained}' has no weights (*.safetensors, *.bin, *.pth)"
        )


def looks_like_path(value: str) -> bool:
    return (
        "/" in value
        or "\\" in value
        or value.startswith(("~", "."))
        or value.lower().endswith(CHECKPOINT_SUFFIXES)
    )


def unknown_tag_message(open_clip, name: str, tag: str) -> str:
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tags:
        valid = f"valid tags for {name}: {', '.join(tags)}"
    else:
        valid = f"{name} has no pretrained tags"
    elsewhere = open_clip.list_pretrained_models_by_tag(tag)
    if elsewhere:
        more = "…" if len(elsewhere) > 6 else ""
        valid += f"; '{tag}' is a tag of {', '.join(elsewhere[:6])}{more}"
    return (
        f"score.pretrained: weights '{tag}' for {name} are not a known tag or an existing file; "
        f"{valid} (or a checkpoint path, an hf-hub:org/name id, or 'none' for random init)"
    )


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks: what run.json records for every model and
    head file a stage loads (language ID, toxicity, heads, face detector)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
