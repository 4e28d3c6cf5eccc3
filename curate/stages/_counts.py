"""Drop counts per kind of detail: which list dropped a pair (``stages.<name>.by_detail``).

A stage that declares ``count_detail_kinds`` (download: ``("denylisted",)``) has its drops
with those reason codes counted per kind of their detail, the text before ``:``
(``md5:<hex>`` -> ``md5``, ``domain:example.com`` -> ``domain``): O(kinds), never the
values. The shard footer's ``counts`` carry them, and the driver sums them over shards.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

#: longest kind name kept (a detail without ``:`` would otherwise be its own key)
MAX_KIND = 32


def detail_kinds(dropped: pa.Table, codes: tuple[str, ...]) -> dict[str, Any]:
    """``{"by_detail": {code: {kind: rows}}}`` of the dropped rows (``reason``, ``detail``)
    with a code in ``codes``; {} when none."""
    if not codes or not dropped.num_rows:
        return {}
    reason = pc.fill_null(dropped["reason"], "")
    out: dict[str, dict[str, int]] = {}
    for code in codes:
        rows = dropped.filter(pc.equal(reason, code))
        if not rows.num_rows:
            continue
        text = pc.fill_null(rows["detail"], "").combine_chunks()
        kind = pc.list_element(pc.split_pattern(text, ":", max_splits=1), 0)
        kind = pc.utf8_slice_codeunits(kind, 0, MAX_KIND)
        kind = pc.if_else(pc.equal(kind, ""), "unknown", kind)
        out[code] = {str(v["values"]): int(v["counts"])
                     for v in pc.value_counts(kind).to_pylist()}
    return {"by_detail": out} if out else {}
