"""``curate explore RUN``: a local, read-only web app to search and browse a run.

Search by a pair ("more like this", through the run's kNN index: ``curate index RUN``), by an
image (uploaded, or a local path) or by text, both embedded with the run's own score model;
filter on any decision column, an SQL ``WHERE`` over the rows, language, cluster and score
ranges; browse prune's clusters (kept and dropped side by side) and each pair (every column,
the decision chain, its neighbours); export what a search or filter shows as a subset that
``curate takedown``, a denylist or a new pool reads.

The project's safety rule holds here as on the report: a pair a safety rule dropped is never
a picture and never a row (only counted); a hash list's match is not even that; thumbnails
that may be unsafe are blurred unless ``--show-sensitive``; faces are blurred as in the
curated images.

Modules: :mod:`.app` (open the run, build the Starlette app, serve), :mod:`.pages` (HTML)
and :mod:`.api` (JSON), :mod:`.results` (one request's grid), :mod:`.data` (DuckDB views,
the safety filter built in), :mod:`.filters`, :mod:`.search` (index and model),
:mod:`.thumbs`, :mod:`.export`; ``templates/`` (jinja2) and ``static/`` (CSS, a little JS).
"""

from __future__ import annotations

from curate.app.explore.app import Explorer, make_app, open_explorer, serve

__all__ = ["Explorer", "make_app", "open_explorer", "serve"]
