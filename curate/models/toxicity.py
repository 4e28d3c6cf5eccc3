"""Caption toxicity score (``ptoxic``): the model that alt-profanity-check ships in its wheel.

Used by the ``toxicity`` stage. Detoxify's weights are downloaded at first use (an offline
worker cannot), so the model is one that arrives with ``pip install``:

- **Which model**: ``alt-profanity-check==1.9.1`` (PyPI, MIT), files
  ``profanity_check/data/vectorizer.joblib`` and ``model.joblib``. As read from the pickles:
  a scikit-learn ``TfidfVectorizer`` (word unigrams, lowercased, English stop words removed,
  15,442 terms) and a ``CalibratedClassifierCV`` (sigmoid, 5 folds) over a
  ``LinearSVC(class_weight="balanced")``. The package README says the model is trained on
  ~200k human-labelled texts from t-davidson/hate-speech-and-offensive-language and Kaggle's
  Jigsaw Toxic Comment Classification Challenge (its README says "CountVectorizer"; the
  pickle is a TfidfVectorizer), and that alt-profanity-check retrains it with each
  scikit-learn release it follows (1.9.1 here). Its README reports 95.0% accuracy, 86.1%
  precision, 89.6% recall on its own test split (not checked here).
- **What is scored**: the package's ``predict_prob`` exactly:
  ``model.predict_proba(vectorizer.transform(texts))[:, 1]``, the probability of the
  offensive class, one ``transform`` for all captions of a shard; cast to float32.
  A null or empty (whitespace-only) caption scores 0.0 (the package would give the
  intercept's ~0.036).
- **What it is**: a bag of English words. It sees profanity and insulting words, not
  meaning: hard negatives with a "bad" word ("pussy willow", "Moby Dick") score high,
  threats in polite words score low, and captions in other languages score ~0.036 whatever
  they say (see ``QUALITY``). Its training data (tweets, Wikipedia talk) makes ordinary
  caption words suspect: "black and white dog" scores 0.93, "a dog with a ball in its
  mouth" 0.87, and 5.9% of Flickr8k's human captions (all benign) score above 0.5, almost
  all of them about dogs; above 0.9 it is 0.23%. A filter at 0.5 would drop dog photos.
- **Licence**: MIT (alt-profanity-check's LICENSE: Victor Zhou 2018, Menelaos Kotoglou and
  Dimitrios Mistriotis 2021). Runs record the package, version, file sha256s and licence
  in run.json.

The package itself is not imported: its module loads both files at import time; they are
found with ``importlib.util.find_spec`` and loaded here once per process.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.errors import ConfigError
from curate.models.weights import file_sha256

#: config name -> (PyPI distribution, import package)
MODELS = {"alt_profanity_check": ("alt-profanity-check", "profanity_check")}
VERSION = "1.9.1"  # the pinned release (pyproject.toml); its pickles need scikit-learn 1.9.1
FILES = ("vectorizer.joblib", "model.joblib")
LICENCE = ("MIT (alt-profanity-check: Victor Zhou 2018, Menelaos Kotoglou and Dimitrios "
           "Mistriotis 2021)")
TRAINING = ("TF-IDF (unigrams, English stop words) + CalibratedClassifierCV(LinearSVC); "
            "per the package README: ~200k human-labelled texts from "
            "t-davidson/hate-speech-and-offensive-language and Kaggle's Jigsaw toxic "
            "comments; retrained by alt-profanity-check for scikit-learn 1.9.1")

#: Held-out figures of ``ptoxic`` at threshold 0.5 (ROC AUC: threshold-free), measured on
#: two small sets that we wrote for this purpose (not from the package's training data):
#: ``tests/data/toxicity_heldout.tsv`` (131 English captions: 65 insults, harassment and
#: threats, about half phrased as image captions; 66 benign alt texts, 21 of them hard
#: negatives such as "killer whale", "pussy willow branch", "Scunthorpe") and
#: ``tests/data/toxicity_heldout_non_english.tsv`` (13 captions in de/fr/es/it/pt/nl).
#: Computed with sklearn.metrics (tests/test_toxicity.py recomputes them and fails if they
#: drift). The sets are small and ours, so these numbers are rough. Wrong on the English
#: set: 5 hard negatives ("pussy willow branch" 0.99, "bitch with her litter of ... puppies"
#: 0.99, "Moby Dick first edition" 0.92, "stupid simple pancake recipe" 0.84, "a rooster,
#: or cock" 0.80) and 6 toxic captions without a swear word (threats such as "I will find
#: you and beat you until you bleed" 0.35, "clueless dimwit" 0.04, "waste of space" 0.04).
#: Other languages: near chance; unknown words score the intercept (~0.036); its one hit,
#: "halt die Klappe, du nutzloser Versager" (0.77), comes from the English word "die".
#: ``flickr8k``: share of Flickr8k's 40,460 human captions (benign) above each threshold,
#: i.e. a false-positive rate on real captions (shared/data, not in the repository: checked
#: by bench/bench_toxicity.py and by a test that runs only where that file exists).
QUALITY: dict[str, dict[str, Any]] = {
    "flickr8k": {"n": 40460, "above_0.5": 0.0594, "above_0.8": 0.0088, "above_0.9": 0.0023},
    "heldout_en": {"n": 131, "toxic": 65, "accuracy": 0.916, "precision": 0.9219,
                   "recall": 0.9077, "roc_auc": 0.9566},
    "heldout_non_en": {"n": 13, "toxic": 7, "accuracy": 0.5385, "precision": 1.0,
                       "recall": 0.1429, "roc_auc": 0.5476},
}

_MODELS: dict[str, tuple[Any, Any]] = {}


def data_dir(model: str = "alt_profanity_check") -> Path:
    """The installed package's ``data`` folder (found, not imported)."""
    dist, package = MODELS[model]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"toxicity model {model} needs the {dist} package "
                          f"(pip install {dist}=={VERSION})")
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise ConfigError(f"{path}: {', '.join(missing)} missing; reinstall {dist}=={VERSION}")
    return path


def load(model: str = "alt_profanity_check") -> tuple[Any, Any]:
    """(vectorizer, classifier), loaded once per process. A pickle made by another
    scikit-learn version is an error, not a warning (its scores may differ)."""
    got = _MODELS.get(model)
    if got is None:
        import joblib
        from sklearn.exceptions import InconsistentVersionWarning

        path = data_dir(model)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", InconsistentVersionWarning)
                got = (joblib.load(path / "vectorizer.joblib"), joblib.load(path / "model.joblib"))
        except InconsistentVersionWarning as err:
            raise ConfigError(f"{path}: {err}; install {MODELS[model][0]}=={VERSION} with "
                              "the scikit-learn it pins") from None
        except Exception as err:  # noqa: BLE001 - any load failure is a bad install
            raise ConfigError(f"{path}: cannot load the toxicity model "
                              f"({type(err).__name__}: {err})") from None
        _MODELS[model] = got
    return got


def describe(model: str = "alt_profanity_check") -> dict[str, Any]:
    """What run.json records: name, package and version, file sha256s, licence, training,
    held-out quality. Loads the model (on the driver: a broken install fails before any
    worker starts). The sha256s are part of the stage state, so each shard's resume key."""
    import sklearn

    load(model)
    dist = MODELS[model][0]
    path = data_dir(model)
    return {"model": model, "package": dist, "version": importlib.metadata.version(dist),
            "scikit_learn": sklearn.__version__, "path": str(path),
            "sha256": {f: file_sha256(path / f) for f in FILES}, "licence": LICENCE,
            "training": TRAINING, "quality": QUALITY}


def ptoxic(captions: list[str | None] | pa.Array | pa.ChunkedArray,
           model: str = "alt_profanity_check") -> np.ndarray:
    """Probability that each caption is offensive, float32, in input order: the package's
    ``predict_prob`` (one vectorizer ``transform`` for all of them). A null, empty or
    whitespace-only caption scores 0.0."""
    if isinstance(captions, pa.Array | pa.ChunkedArray):
        captions = captions.to_pylist()
    texts = list(captions)
    out = np.zeros(len(texts), np.float32)
    rows = [i for i, t in enumerate(texts) if t is not None and not t.isspace() and t]
    if rows:
        vectorizer, clf = load(model)
        batch = texts if len(rows) == len(texts) else [texts[i] for i in rows]
        out[rows] = clf.predict_proba(vectorizer.transform(batch))[:, 1]
    return out
