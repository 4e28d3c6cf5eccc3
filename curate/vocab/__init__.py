"""Metadata vocabularies (MetaCLIP-style entry lists): load, build, fetch, describe.

The default vocabulary ships as package data (``curate/vocab/data``), so a non-editable
install finds it; ``metadata/README.md`` at the top of the repository is its card.
"""

from curate.vocab.build import build_vocabulary  # noqa: F401
from curate.vocab.languages import OTHER, Metadata, load_metadata, load_vocabulary  # noqa: F401
from curate.vocab.metaclip import fetch_metaclip  # noqa: F401
from curate.vocab.vocabulary import (  # noqa: F401
    BUILTIN,
    METADATA_DIR,
    read_vocabulary,
    vocabulary_info,
    write_vocabulary,
)
