"""Can a score stage's CLIP weights be loaded without a download? Answered before a run starts.

Why: the score stage loads its model in its ``model`` step, after the stages before it ran.
On a machine without the weights (offline: ``HF_HUB_OFFLINE=1``, as ``make curate`` sets) a
run would fetch every image first and only then stop. This answers the same question the
loader (:mod:`curate.models.clip`, :mod:`curate.models.weights`) does, the same way — a tag,
an hf-hub id, a file or a folder, cache first — but looks only: a directory entry, a cache
entry, a JSON file. Nothing is loaded and nothing is downloaded; open_clip (seconds to
import) is imported only to look a tag up.

Weights missing from the cache are a problem only offline: online, the ``model`` step
downloads them (and a failed download still stops the run there, in one line).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from curate.errors import InputError
from curate.models.spec import RANDOM_INIT, ModelSpec
from curate.models.weights import (
    BUNDLED_CONFIGS,
    HUB_CONFIG,
    HUB_PREFIX,
    HUB_WEIGHTS,
    bundled_configs,
    check_weights_dir,
    hub_cached,
    is_offline,
    looks_like_path,
    resolve_model_name,
    safetensors_first,
    unknown_tag_message,
)


def weights_problem(spec: ModelSpec, name: str = "score") -> str | None:
    """One line naming ``<name>.<key>`` and how to fix it when ``spec``'s model cannot be
    built from local files (its config, its weights); None when it can."""
    try:
        problem = _problem(spec, name)
    except InputError as err:  # the loader's own checks and messages
        problem = str(err)
    if problem and problem.startswith("score.") and name != "score":  # named for the instance
        problem = f"{name}.{problem[len('score.'):]}"
    return problem


def _problem(spec: ModelSpec, name: str) -> str | None:
    config = _config_problem(spec.model_config, name)
    if config:
        return config
    pretrained = spec.pretrained.strip()
    if pretrained.lower() == RANDOM_INIT:
        return None  # random init: nothing to load (the model name is checked by the step)
    if pretrained.startswith(HUB_PREFIX):
        return _hub_problem(pretrained[len(HUB_PREFIX):], spec.cache_dir, name)
    path = Path(pretrained).expanduser()
    if looks_like_path(pretrained) and path.is_dir():
        check_weights_dir(path, pretrained)
        return None
    if looks_like_path(pretrained):
        if path.is_file():
            return None
        return (f"{name}.pretrained: weights file '{path}' does not exist; set it to an "
                "existing checkpoint (.pt/.bin/.safetensors), an open_clip tag, or 'none'")
    return _tag_problem(spec, pretrained, name)


def _config_problem(model_config: str | None, name: str) -> str | None:
    """A model JSON that is not there or not one (the loader registers it with open_clip)."""
    if not model_config:
        return None
    path = Path(model_config).expanduser()
    if not path.is_file() and (BUNDLED_CONFIGS / f"{model_config}.json").is_file():
        path = BUNDLED_CONFIGS / f"{model_config}.json"
    if not path.is_file():
        return (f"{name}.model_config: {path} does not exist (an open_clip model JSON or a "
                f"bundled name: {', '.join(bundled_configs())})")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{name}.model_config: {path} is not valid JSON ({type(err).__name__})"
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg")
               if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        return (f"{name}.model_config: {path} is not an open_clip model config (missing "
                f"{', '.join(missing)})")
    return None


def _hub_problem(repo: str, cache_dir: str | None, name: str) -> str | None:
    if not repo or "/" not in repo:
        return f"{name}.pretrained: '{HUB_PREFIX}{repo}' is not an hf-hub:org/name id"
    config = hub_cached(repo, HUB_CONFIG, cache_dir)
    weights = any(hub_cached(repo, fn, cache_dir) for fn in HUB_WEIGHTS)
    if (config and weights) or not is_offline():
        return None
    missing = HUB_CONFIG if not config else HUB_WEIGHTS[0]
    return (f"{name}.pretrained: '{HUB_PREFIX}{repo}' is not available offline (not in the "
            f"Hugging Face cache: {repo}/{missing}); where internet exists run `hf download "
            f"{repo}`, or set {name}.pretrained to a local folder (open_clip_config.json + "
            "weights)")


def _tag_problem(spec: ModelSpec, tag: str, name: str) -> str | None:
    """A tag of open_clip's table: its file, hf-hub entry or URL must be cached (offline)."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    if spec.model_config:
        model = Path(spec.model_config).stem
    else:
        model = resolve_model_name(spec, open_clip)  # an unknown name: its one line
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        return None if Path(tag).expanduser().is_file() else unknown_tag_message(
            open_clip, model, tag)
    if cfg.get("file"):
        return None
    hub = cfg.get("hf_hub", "")
    if hub and oc_pretrained.has_hf_hub():
        repo, filename = os.path.split(hub)
        names = safetensors_first([filename or HUB_WEIGHTS[1]])
        if any(hub_cached(repo, fn, spec.cache_dir) for fn in names):
            return None
        where = f"the Hugging Face cache: {repo}/{names[0]}"
        how = f"where internet exists run `hf download {repo} {names[0]}`"
    else:
        url = cfg.get("url", "")
        folder = Path(spec.cache_dir or "~/.cache/clip").expanduser()
        if url and (folder / os.path.basename(url)).is_file():
            return None
        where = str(folder)
        how = f"download {url} into {folder}"
    if not is_offline():
        return None  # the model step downloads them
    return (f"{name}.pretrained: {model}/{tag} weights are not available offline (not in "
            f"{where}); {how} (with HF_HUB_OFFLINE unset), or set {name}.pretrained to a "
            "local checkpoint file")
