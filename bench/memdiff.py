"""What grew in a debug soak: ``python -m bench.memdiff DIR [FIRST]``.

DIR holds what ``BENCH_TRACEMALLOC_DIR=DIR`` made bench/server.py write (see
``trace_memory``). Compares snapshot FIRST (default 3, i.e. after 2 minutes at the default
30-second interval: past the soak's warm-up) with the last one: the allocation sites that
grew most, and the gc-tracked types whose counts changed most.
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path


def main(directory: str, first: int = 3) -> None:
    snaps = sorted(Path(directory).glob("*.snap"), key=lambda p: int(p.stem.split("-")[1]))
    if len(snaps) <= first:
        raise SystemExit(f"{directory}: {len(snaps)} snapshots, need more than {first}")
    old, new = snaps[first], snaps[-1]
    before = tracemalloc.Snapshot.load(str(old))
    after = tracemalloc.Snapshot.load(str(new))
    total = sum(s.size for s in after.statistics("filename")) - sum(
        s.size for s in before.statistics("filename")
    )
    print(f"{old.name} -> {new.name}: traced memory {total / 1024:+,.0f} KiB")
    for stat in after.compare_to(before, "lineno")[:25]:
        frame = stat.traceback[0]
        print(
            f"{stat.size_diff / 1024:+9,.1f} KiB {stat.count_diff:+8,} blocks  "
            f"{frame.filename}:{frame.lineno}"
        )
    types_before = dict(json.loads(old.with_suffix(".types.json").read_text())["types"])
    types_after = dict(json.loads(new.with_suffix(".types.json").read_text())["types"])
    changes = {
        t: types_after.get(t, 0) - types_before.get(t, 0) for t in {*types_before, *types_after}
    }
    print("gc-tracked objects, count change:")
    for name, change in sorted(changes.items(), key=lambda kv: -abs(kv[1]))[:20]:
        print(f"{change:+9,} {name} ({types_after.get(name, 0):,} now)")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
