"""Metadata vocabularies (MetaCLIP-style entry lists): load, build, fetch, describe.

The default vocabulary ships as package data (``curate/vocab/data``), so a non-editable
install finds it; ``metadata/README.md`` at the top of the repository is its card.
"""

from curate.vocab.vocabulary import (  # noqa: F401
    BUILTIN,
    METADATA_DIR,
    build_vocabulary,
    fetch_metaclip,
    load_vocabulary,
    vocabulary_info,
    write_vocabulary,
)
