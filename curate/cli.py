"""The ``curate`` command line: parse, build a config, call the library. No logic here.

Bodies live beside it: ``query`` in :mod:`curate.cli_query`, ``plan`` and ``pilot`` in
:mod:`curate.cli_plan`, ``index`` in :mod:`curate.cli_explore`. Exit codes (README): 0 ok,
2 bad input or config (one line on stderr), 3 more failed shards than allowed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from functools import wraps
from typing import Annotated, Any

import typer

from curate.cli_explore import register as register_explore
from curate.errors import EXIT_BAD_INPUT, CurateError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Curate web image-text pairs into a CLIP pretraining set.")

for _k, _v in (("NO_ALBUMENTATIONS_UPDATE", "1"), ("WANDB_MODE", "disabled"),
               ("RAY_AUTH_MODE", "disabled")):
    os.environ.setdefault(_k, _v)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("ray", "urllib3", "filelock", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(message: str, code: int) -> None:
    typer.echo(f"curate: error: {message}", err=True)
    raise typer.Exit(code)


def handled(fn: Any) -> Any:
    """Turn CurateError into one line on stderr and its exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CurateError as err:
            _fail(str(err), err.exit_code)
        except OSError as err:  # disk full, read-only or vanished paths: one line, not a trace
            where = err.filename or "run directory"
            _fail(f"{where}: {err.strerror or err}", EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            _fail("interrupted; rerun the same command to resume", 130)

    return wrapper


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]
Sets = Annotated[list[str] | None, typer.Option(
    "--set", help="override a config value, e.g. --set balance.t=20000 (repeatable)")]


@app.command()
@handled
def run(
    pool: Annotated[str | None, typer.Option(help="pool: Parquet file, folder or glob "
                                                    "(default: the one recorded in RUN)")] = None,
    pipeline: Annotated[str | None, typer.Option(help="pipeline YAML")] = None,
    out: Annotated[str, typer.Option(help="run directory (local path or fsspec URL)")] = "runs/run",
    set_: Sets = None,
    verbose: Verbose = False,
) -> None:
    """Run a pipeline over a pool into a run directory (resumes when it exists)."""
    from curate.app.summary import print_summary
    from curate.driver import run_pipeline
    from curate.stages.registry import load_pipeline

    _setup_logging(verbose)
    if pipeline is None and os.path.isfile(os.path.join(out, "run.json")):
        cfg = _recorded_config(out, set_)
    else:
        cfg = load_pipeline(pipeline, set_)
    manifest = run_pipeline(cfg, out, pool=pool)
    print_summary(out, manifest)


@app.command()
@handled
def download(
    run_dir: Annotated[str, typer.Argument(metavar="RUN")],
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="fetch failed URLs again (successes are not re-fetched)")] = False,
    set_: Sets = None,
    verbose: Verbose = False,
) -> None:
    """Run (or resume) the download stage of an existing run directory."""
    _run_one(run_dir, "download", set_, verbose,
             extra={"download": {"retry_failed": True}} if retry_failed else None)


def _stage_command(kind: str, doc: str) -> None:
    """``curate <kind> RUN``: (re)run every stage of that kind in an existing run directory."""

    @handled
    def command(
        run_dir: Annotated[str, typer.Argument(metavar="RUN")],
        set_: Sets = None,
        verbose: Verbose = False,
    ) -> None:
        _run_one(run_dir, kind, set_, verbose)

    command.__doc__ = f"Run (or resume) the {kind} stage(s) of RUN: {doc}"
    app.command(kind)(command)


def _register_stage_commands() -> None:
    from curate.stages.registry import builtin_kinds

    for kind, cls in builtin_kinds().items():
        if kind != "download":  # download has its own command (--retry-failed)
            _stage_command(kind, cls.help)


_register_stage_commands()
register_explore(app, handled, _setup_logging)  # index, explore: curate/cli_explore.py


@app.command("stage")
@handled
def stage_cmd(
    run_dir: Annotated[str, typer.Argument(metavar="RUN")],
    names: Annotated[list[str], typer.Argument(metavar="NAME...", help="stage instances")],
    set_: Sets = None,
    verbose: Verbose = False,
) -> None:
    """Run (or resume) named stage instances of RUN (any kind, plugins included)."""
    _run_one(run_dir, names, set_, verbose)


def _recorded_config(run_dir: str, set_: list[str] | None):
    """The config recorded in RUN/run.json, with ``--set`` overrides applied."""
    from curate.config import apply_override
    from curate.stages.registry import parse_pipeline, recorded_pipeline

    cfg = recorded_pipeline(run_dir)
    if not set_:
        return cfg
    data = cfg.dump()
    for s in set_:
        apply_override(data, s)
    return parse_pipeline(data, "--set")


def _run_one(run_dir: str, which: str | list[str], set_: list[str] | None, verbose: bool,
             extra: dict | None = None) -> None:
    """Run the named instances, or (``which`` a kind) every instance of that kind."""
    from curate.app.summary import print_summary
    from curate.driver import run_pipeline

    _setup_logging(verbose)
    cfg = _recorded_config(run_dir, set_)
    if isinstance(which, str):
        names = cfg.instances_of(which)
        if not names:
            raise CurateError(f"{run_dir}: its pipeline has no {which} stage "
                              f"(stages: {', '.join(cfg.stages)})")
    else:
        names = which
        unknown = [n for n in names if n not in cfg.stages]
        if unknown:
            raise CurateError(f"{run_dir}: its pipeline has no stage {unknown[0]!r} "
                              f"(stages: {', '.join(cfg.stages)})")
    options = {n: v for n in names for v in ((extra or {}).get(which if isinstance(
        which, str) else n),) if v}
    manifest = run_pipeline(cfg, run_dir, only=names, options=options)
    print_summary(run_dir, manifest)


@app.command()
@handled
def status(
    run_dir: Annotated[str, typer.Argument(metavar="RUN")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """Per stage: shards done/total, pairs in and out, failures."""
    from curate.app.summary import print_summary, status_dict
    from curate.core.rundir import RunDir

    rd = RunDir(run_dir)
    manifest = rd.load_manifest()
    if not manifest:
        raise CurateError(f"{run_dir}: not a run directory (no run.json)")
    if as_json:
        typer.echo(json.dumps(status_dict(manifest), indent=2))
    else:
        print_summary(run_dir, manifest)


@app.command()
@handled
def query(
    run_dir: Annotated[str, typer.Argument(metavar="RUN")],
    sql: Annotated[str | None, typer.Argument(help="SQL; omit for an interactive prompt")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table|csv|json|parquet")] = "table",
    out: Annotated[str | None, typer.Option("--out", help="write the result to a file")] = None,
    max_rows: Annotated[int, typer.Option(help="rows shown in table format")] = 40,
) -> None:
    """SQL over the run's outputs (DuckDB), with a view per stage and `decisions`."""
    from curate.cli_query import run_query

    run_query(run_dir, sql, fmt, out, max_rows)


@app.command()
@handled
def diff(
    run_a: Annotated[str, typer.Argument(metavar="RUN_A")],
    run_b: Annotated[str, typer.Argument(metavar="RUN_B")],
    fmt: Annotated[str, typer.Option("--format", help="summary|csv (csv: uid,change per "
                                      "changed uid, relative to RUN_A)")] = "summary",
    html: Annotated[str | None, typer.Option(help="write the diff page here")] = None,
    sql: Annotated[str | None, typer.Option(help="SQL over both runs: schemas a and b, "
                                            "view diff(uid, change)")] = None,
    out: Annotated[str | None, typer.Option("--out", help="write csv/--sql output here")]
    = None,
) -> None:
    """What RUN_B's curated set adds and removes against RUN_A, and how stages, entries and
    clusters moved."""
    from curate.cli_tools import run_diff

    run_diff(run_a, run_b, fmt, html, sql, out)


@app.command()
@handled
def audit(
    run_dir: Annotated[str, typer.Argument(metavar="RUN")],
    reason: Annotated[str | None, typer.Option(help="write a labelling page for this drop "
                                               "reason code")] = None,
    n: Annotated[int, typer.Option("--n", help="pairs on the page", min=1)] = 200,
    out: Annotated[str | None, typer.Option(help="the page (default RUN/audit/REASON.html)")]
    = None,
    labels: Annotated[list[str] | None, typer.Option(help="label CSVs saved from the pages: "
                                                     "estimate false-drop rates")] = None,
) -> None:
    """How often does a filter drop a good pair? Label a sample, then estimate the rate."""
    from curate.cli_tools import run_audit

    run_audit(run_dir, reason, n, out, labels)


@app.command()
@handled
def takedown(
    run_dir: Annotated[str, typer.Argument(metavar="RUN")],
    uids: Annotated[str | None, typer.Option(help="file: one uid per line")] = None,
    urls: Annotated[str | None, typer.Option(help="file: one URL per line")] = None,
    domains: Annotated[str | None, typer.Option(help="file: one domain per line "
                                                "(subdomains included)")] = None,
    images: Annotated[str | None, typer.Option(help="folder of images: same bytes or a "
                                               "perceptual near-copy")] = None,
    why: Annotated[str, typer.Option(help="recorded with every removal")] = "takedown request",
) -> None:
    """Remove pairs from curated/ (Parquet and tars) and keep them out of every later run."""
    from curate.cli_tools import run_takedown

    run_takedown(run_dir, {k: v for k, v in (("uid", uids), ("url", urls),
                                             ("domain", domains), ("images", images)) if v}, why)


@app.command()
@handled
def publish(run_dir: Annotated[str, typer.Argument(metavar="RUN")],
            out: Annotated[str, typer.Argument(metavar="DIR", help="the folder to lay out")],
            webdataset: Annotated[bool, typer.Option(help="also copy curated/wds/*.tar")] = False,
            overwrite: Annotated[bool, typer.Option(help="replace README.md, data/, wds/ in "
                                                    "DIR")] = False) -> None:
    """Lay out a finished run's curated set and dataset card for the Hugging Face Hub."""
    from curate.cli_tools import run_publish

    run_publish(run_dir, out, webdataset, overwrite)


metadata_app = typer.Typer(no_args_is_help=True,
                            help="Metadata vocabularies: build one offline, fetch MetaCLIP's, "
                                 "inspect one.")
app.add_typer(metadata_app, name="metadata")


@metadata_app.command("build")
@handled
def metadata_build(
    out: Annotated[str, typer.Option(help="output file (.txt, .txt.gz or .json)")],
    unigram_min_zipf: Annotated[float, typer.Option(help="wordfreq Zipf threshold")] = 1.5,
    bigram_min_pmi: Annotated[float, typer.Option(help="bigram PMI threshold")] = 4.0,
    no_wordnet: Annotated[bool, typer.Option("--no-wordnet")] = False,
    no_unigrams: Annotated[bool, typer.Option("--no-unigrams")] = False,
    no_bigrams: Annotated[bool, typer.Option("--no-bigrams")] = False,
    no_imagenet: Annotated[bool, typer.Option("--no-imagenet")] = False,
) -> None:
    """Build a MetaCLIP-like vocabulary from sources that install offline (deterministic)."""
    from curate.vocab import build_vocabulary, vocabulary_info, write_vocabulary

    _setup_logging(False)
    entries = build_vocabulary(wordnet=not no_wordnet, unigrams=not no_unigrams,
                               unigram_min_zipf=unigram_min_zipf, bigrams=not no_bigrams,
                               bigram_min_pmi=bigram_min_pmi, imagenet=not no_imagenet)
    path = write_vocabulary(entries, out)
    typer.echo(f"{path}: {json.dumps(vocabulary_info(entries))}")


@metadata_app.command("fetch")
@handled
def metadata_fetch(
    name: Annotated[str, typer.Argument(help="only 'metaclip' (MetaCLIP v1, 500k entries)")],
    out: Annotated[str, typer.Option(help="output file")] = "metadata/metaclip_v1.json",
) -> None:
    """Download MetaCLIP's metadata.json and verify it by its git blob id."""
    from curate.vocab import fetch_metaclip

    if name != "metaclip":
        raise CurateError(f"metadata fetch: unknown list {name!r} (valid: metaclip)")
    path = fetch_metaclip(out)
    typer.echo(f"{path}: verified")


@metadata_app.command("info")
@handled
def metadata_info(file: Annotated[str, typer.Argument(help="a vocabulary file or 'default'")]
                  ) -> None:
    """Entries, how many are multi-word, cased and non-ASCII."""
    from curate.vocab import load_vocabulary, vocabulary_info

    typer.echo(json.dumps(vocabulary_info(load_vocabulary(file)), indent=2))


@app.command()
@handled
def plan(
    run_dir: Annotated[str, typer.Argument(metavar="RUN")],
    target: Annotated[int | None, typer.Option(help="the kept size you want")] = None,
    png: Annotated[str | None, typer.Option(help="curve PNG (default RUN/plan/plan.png)")]
    = None,
    survival: Annotated[bool, typer.Option(help="the pilot model on any run")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Expected kept size vs MetaCLIP's t; on a pilot run, survival and predicted size."""
    from curate.cli_plan import run_plan

    run_plan(run_dir, target, png, survival, as_json)


@app.command()
@handled
def pilot(
    pool: Annotated[str, typer.Argument(help="pool: Parquet file, folder or glob")],
    pipeline: Annotated[str | None, typer.Option(help="pipeline YAML")] = None,
    fraction: Annotated[float, typer.Option(help="share of uids in the sample")] = 0.01,
    out: Annotated[str, typer.Option(help="run directory of the pilot")] = "runs/pilot",
    seed: Annotated[int, typer.Option(help="seed of the uid hash")] = 0,
    set_: Sets = None,
    verbose: Verbose = False,
) -> None:
    """Run the pipeline on a uid-hash sample of the pool (then: curate plan RUN --target)."""
    from curate.cli_plan import run_pilot

    _setup_logging(verbose)
    run_pilot(pool, pipeline, fraction, out, seed, set_ or [])


@app.command(hidden=True)
@handled
def example(
    out: Annotated[str, typer.Option(help="run directory")] = "runs/example",
    pipeline: Annotated[str | None, typer.Option(
        help="pipeline YAML (default: the bundled curate/app/example.yaml)")] = None,
    set_: Sets = None,
    verbose: Verbose = False,
) -> None:
    """The offline example: draw a pool, serve it on loopback, curate it (`make curate`)."""
    from curate.app.example import run_example

    _setup_logging(verbose)
    run_example(out, pipeline, set_ or [])


def main() -> None:
    try:
        app()
    except SystemExit as e:
        if e.code not in (0, None) and not isinstance(e.code, int):
            sys.exit(EXIT_BAD_INPUT)
        raise


if __name__ == "__main__":
    main()
