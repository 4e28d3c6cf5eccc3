"""The report stage's YAML section (:class:`ReportConfig`), kept apart from
:mod:`curate.stages.report` so the stage module stays under the line limit."""

from __future__ import annotations

from pydantic import Field

from curate.config import Section


class ReportConfig(Section):
    top_n: int = Field(30, ge=1)
    show_sensitive: bool = Field(
        False, description="show thumbnails of kept pairs with punsafe above 0.5 (or not "
        "NSFW-scored in a run that scores NSFW) unblurred, on the report and audit pages; "
        "what a safety rule dropped is never shown, whatever this says")
    license: str = Field("other", description="the dataset card's licence (reports/README.md "
                         "header): a Hugging Face licence id, or 'other'")
    pretty_name: str | None = Field(None, description="the dataset card's pretty_name "
                                    "(default: the run directory's name)")
