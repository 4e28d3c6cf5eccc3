"""The run report's page: :class:`ReportData` in, one self-contained HTML string out.

No Ray, no files: :mod:`curate.stages.report` gathers the numbers and writes the outputs;
:mod:`curate.report.sections` turns them into what each section shows (formatted numbers,
table rows as plain lists and dicts, plots from :mod:`curate.report.plots`), this module puts
the sections through the jinja2 templates in ``templates/``, which hold all the markup. So it
is testable on hand-made inputs, and a change of wording or layout is a template edit, not a
string-building one. :class:`ReportData` and ``SECTIONS`` live in :mod:`curate.report.data`.

Why the page looks the way it does:

- One self-contained file: plots are PNGs embedded as ``data:`` URIs, the CSS is inline,
  there is no JavaScript, and nothing refers to the network.
- Every value reaches the page through jinja2's autoescaping, so a caption, entry or stage
  name holding markup is shown as text, never run. Text that contains ``://`` (a run
  directory on s3, a vocabulary URL in the config) is then written with the colon as
  ``&#58;``: it reads the same in a browser, but the file holds no literal URL that a viewer
  could turn into a fetch or a link, and a grep for ``https://`` finds none.
- Every section has an ``id`` and is always present; a section whose stage did not run says
  so in one line, so a reader never wonders whether something is missing or was skipped.
"""

from __future__ import annotations

import html
from functools import lru_cache
from typing import Any

import jinja2

from curate.report.data import SECTIONS, ReportData
from curate.report.sections import BUILDERS


def esc(value: Any) -> str:
    """HTML-escape ``value`` and defuse URLs (``://`` -> ``&#58;//``, same on screen)."""
    return html.escape(str(value), quote=True).replace("://", "&#58;//")


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    """The templates next to this module; autoescaped, and a missing name is an error."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("curate.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render(d: ReportData) -> str:
    """The whole page as one string."""
    sections = [{"id": sid, "title": None if sid == "overview" else title,
                 "template": sid.replace("-", "_") + ".html", **BUILDERS[sid](d)}
                for sid, title in SECTIONS]
    page = _environment().get_template("report.html").render(
        run_url=d.run_url, generated=d.generated, sections=sections)
    # after escaping, "://" only occurs in text (CSS has no url(), images are data: URIs),
    # where the entity reads the same
    return page.replace("://", "&#58;//")
