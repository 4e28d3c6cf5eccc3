"""curate: turn a raw pool of web image-text pairs into a curated CLIP pretraining set.

Public surface (everything else is internal and may change):

- :func:`curate.driver.run_pipeline` — run a pipeline config over a pool into a run dir
- :class:`curate.config.PipelineConfig`, :func:`curate.config.load_config`
- :class:`curate.core.rundir.RunDir` — the run directory (manifest, lock, shards)
- :func:`curate.app.query.connect` — a DuckDB connection with a view per stage output
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
