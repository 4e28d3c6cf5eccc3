"""The bodies of ``curate plan`` and ``curate pilot`` (logic in :mod:`curate.app.plan` and
:mod:`curate.app.pilot`): kept out of :mod:`curate.cli`, which only declares arguments."""

from __future__ import annotations

import json

import typer


def run_plan(run_dir: str, target: int | None, png: str | None, survival: bool,
             as_json: bool) -> None:
    """A pilot run (or ``--survival``) gets the loss-aware plan; any other run the t curve
    over its own balance input, as before."""
    from curate.stages.registry import recorded_pipeline

    if survival or recorded_pipeline(run_dir).pool.sample_fraction is not None:
        _print_pilot(run_dir, target, as_json)
        return
    from curate.app.plan import plan_run

    result = plan_run(run_dir, target, png)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for t, size in zip(result["t"], result["expected"]):
        typer.echo(f"t={t:>12,.0f}  expected kept {size:>14,.0f}")
    if target is not None:
        typer.echo(f"t for {target:,} pairs: {result['t_for_target']:,.1f}")
    for label, rows in (result.get("languages") or {}).items():  # MetaCLIP 2: t per language
        typer.echo(f"per language at the {label} t_en:")
        for r in rows:
            t = "-" if r["t"] is None else f"{r['t']:,}"
            typer.echo(f"  {r['lang'] or '(other)':<8} t={t:>12}  tail fraction "
                       f"{r['tail_fraction'] or 0:.3f}  expected kept {r['expected']:>14,.0f}")
    typer.echo(f"curve: {result['png']}")


def _knobs(p: dict) -> str:
    parts = []
    if p.get("t") is not None:
        parts.append(f"t={p['t']:,.0f}")
    if p.get("top_fraction") is not None:
        parts.append(f"top_fraction={p['top_fraction']:g}")
    if p.get("target_fraction") is not None:
        parts.append(f"target_fraction={p['target_fraction']:g}")
    if p.get("eps") is not None:
        parts.append(f"eps={p['eps']:g}")
    return " ".join(parts) or "(no knob)"


def _line(p: dict) -> str:
    return (f"{p['predicted']:>14,.0f}  (95% {p['low']:,.0f} .. {p['high']:,.0f})  "
            f"{_knobs(p)}")


def _print_pilot(run_dir: str, target: int | None, as_json: bool) -> None:
    from curate.app.pilot import plan_pilot

    result = plan_pilot(run_dir, target)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"pilot: fraction {result['fraction']:g} of the pool, {result['pool_rows']:,} "
               f"pairs (full pool ~{result['pool_rows_full']:,.0f})")
    typer.echo("survival per stage (95% Wilson):")
    for s in result["stages"]:
        lo, hi = s["interval"]
        drops = ", ".join(f"{k} {v:,}" for k, v in sorted(s["dropped"].items()))
        typer.echo(f"  {s['name']:<16} {s['kept']:>10,} / {s['rows_in']:<10,} "
                   f"{s['survival']:.3f} ({lo:.3f} .. {hi:.3f})  {drops}")
    if "balance_rate" in result["configured"]:  # the pilot's own balance ran on small counts
        typer.echo(f"  balance at full scale (counts / f): predicted survival "
                   f"{result['configured']['balance_rate']:.3f}")
    if result.get("dedup"):  # SemDeDup survival, the pilot's and corrected to full scale
        typer.echo("dedup survival per eps (pilot -> full scale, 95%):")
        for d in result["dedup"]:
            typer.echo(f"  eps={d['eps']:<8g} {d['pilot_survival']:.3f} -> {d['survival']:.3f}"
                       f" ({d['low']:.3f} .. {d['high']:.3f})")
    typer.echo(f"predicted final size, configured: {_line(result['configured'])}")
    typer.echo("sweep:")
    for p in result["sweep"]:
        typer.echo(f"  {_line(p)}")
    if "chosen" in result:
        typer.echo(f"for {target:,}: {_line(result['chosen'])}")
        typer.echo(f"pipeline: {result['pipeline']}")
        _short_of_target(result, target)
    if "entries" in result:
        typer.echo(f"per entry: {result['entries']}")
    if result.get("entry_losses"):
        typer.echo("entries losing the most after match (survival, 95% Wilson):")
        for e in result["entry_losses"]:
            lo, hi = e["interval"]
            typer.echo(f"  {e['stage']:<16} {str(e['entry'])[:28]:<28} {e['kept']:>8,} / "
                       f"{e['in']:<8,} {e['survival']:.3f} ({lo:.3f} .. {hi:.3f})")
    for note in result["notes"]:
        typer.echo(f"note: {note}")


def _short_of_target(result: dict, target: int) -> None:
    """The chosen knob cannot reach the target (e.g. target_fraction capped at 1): name the
    sweep's settings that do, so the user sees which other knob would."""
    if result["chosen"]["predicted"] >= 0.95 * target:
        return
    reach = [p for p in result["sweep"] if p["predicted"] >= target]
    nearest = min(reach, key=lambda p: p["predicted"]) if reach else None
    hint = (f"; the sweep reaches it with: {_knobs(nearest)}" if nearest
            else "; no setting in the sweep reaches it")
    typer.echo(f"note: {target:,} is beyond what the chosen knob can give "
               f"({result['chosen']['predicted']:,.0f}){hint}")


def run_pilot(pool: str | None, pipeline: str | None, fraction: float, out: str, seed: int,
              overrides: list[str]) -> None:
    from curate.app.pilot import run_pilot as pilot
    from curate.app.summary import print_summary

    manifest = pilot(pool, pipeline, fraction, out, seed, overrides)
    print_summary(out, manifest)
    typer.echo(f"next: curate plan {out} --target N")
