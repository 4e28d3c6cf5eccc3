"""ImageNet-1k class names as open_clip ships them (its zero-shot classification metadata).

In the model layer because the names come from open_clip, and importing open_clip (which
imports torch) is kept to this layer; the vocabulary builder (:mod:`curate.vocab.build`)
adds them as a source. open_clip is imported inside the function, only when it is called.
"""

from __future__ import annotations

from curate.errors import InputError


def imagenet_classnames() -> list[str]:
    """ImageNet-1k class names as shipped in open_clip (cased, e.g. "Siamese cat")."""
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    except ImportError as e:
        raise InputError("building the vocabulary needs `pip install open_clip_torch`") from e
    return sorted(set(IMAGENET_CLASSNAMES))
