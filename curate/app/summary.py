"""One-screen summaries of a run, from its manifest: for people (rich) and monitors (JSON).

Drops are counted by reason code; a stage whose global step could not commit is
``incomplete`` (with its one-line error) and the stages after it are ``blocked``.
"""

from __future__ import annotations

from typing import Any


def status_dict(manifest: dict[str, Any]) -> dict[str, Any]:
    """The monitoring view of run.json: per stage done/total, pairs in/out, failures."""
    pool = manifest.get("pool", {})
    stages = {}
    for name in manifest.get("config", {}).get("stages", []):
        st = manifest.get("stages", {}).get(name, {})
        stages[name] = {
            "status": st.get("status", "pending"),
            "shards_done": st.get("shards_done", 0),
            "shards_total": st.get("shards_total", pool.get("shards", 0)),
            "rows_in": st.get("rows_in"),
            "kept": st.get("kept"),
            "dropped": st.get("dropped", {}),
            "failed_shards": st.get("failed_shards", []),
            "seconds": st.get("seconds"),
            "kind": st.get("kind"),
            # why a stage did not finish, and which stage later ones wait for
            "error": st.get("error"),
            "blocked_by": st.get("blocked_by"),
        }
    return {
        "pool": {"rows": pool.get("rows", 0), "shards": pool.get("shards", 0),
                 "duplicates": pool.get("duplicates", 0), "bad_rows": pool.get("bad_rows", {})},
        "stages": stages,
        "updated": manifest.get("updated"),
        "finished": manifest.get("finished"),
    }


def print_summary(run: str, manifest: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = status_dict(manifest)
    console = Console(stderr=False)
    p = s["pool"]
    console.print(f"[bold]{run}[/bold]: pool {p['rows']:,} pairs in {p['shards']} shards "
                  f"({p['duplicates']:,} duplicates dropped"
                  + (f", {sum(p['bad_rows'].values()):,} bad rows dropped" if p["bad_rows"]
                     else "") + ")")
    t = Table("stage", "status", "shards", "pairs in", "kept", "dropped (by reason)", "seconds")
    for name, st in s["stages"].items():
        dropped = ", ".join(f"{k}: {v:,}" for k, v in sorted(st["dropped"].items(),
                                                             key=lambda kv: -kv[1])[:4])
        failed = f" [red]{len(st['failed_shards'])} failed[/red]" if st["failed_shards"] else ""
        t.add_row(name, st["status"], f"{st['shards_done']}/{st['shards_total']}{failed}",
                  _n(st["rows_in"]), _n(st["kept"]), dropped or "-", _n(st["seconds"]))
    console.print(t)
    for name, st in s["stages"].items():
        if st["error"] and st["status"] in ("incomplete", "failed"):
            err = st["error"]  # most errors already start with the stage's name
            console.print(err if err.startswith(f"{name}") else f"[red]{name}[/red]: {err}")
        elif st["status"] == "blocked":
            console.print(f"{name}: waits for {st['blocked_by']}")
    for name in manifest.get("config", {}).get("stages", []):
        for label, path in manifest.get("stages", {}).get(name, {}).get("outputs", {}).items():
            console.print(f"{label}: {path}")


def _n(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}"
    return f"{v:,}"
