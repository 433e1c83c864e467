"""Every benchmark in turn (``make bench``); each prints its own table and writes bench/results/<name>.json.

They run one after another, never together: each measures its limit in the same run on the same
machine, and a concurrent benchmark would distort both sides differently.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["drain_bench", "training_bench", "scorer_bench", "drift_bench"]


def main(argv: list[str] | None = None) -> int:
    chosen = argv if argv else BENCHMARKS
    failed = []
    for name in chosen:
        print(f"\n=== bench.{name} ===", flush=True)
        module = importlib.import_module(f"bench.{name}")
        try:
            code = module.main([])
        except SystemExit as exit_:
            code = exit_.code or 0
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
