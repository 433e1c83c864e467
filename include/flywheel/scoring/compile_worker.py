"""``python -m flywheel.scoring.compile_worker MODEL_TXT OUT_SO``: compile one LightGBM model with lleaves.

Run by ``flywheel.scoring.compiler`` as a child process, never imported by the scorer: lleaves spends
seconds in Python and LLVM while it compiles, and in the scorer's own process that time would be taken
from scoring (the GIL) right when a new champion should be serving. The child runs at a lower CPU
priority, so on a busy machine the scorer keeps its core.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m flywheel.scoring.compile_worker MODEL_TXT OUT_SO", file=sys.stderr)
        return 2
    model_file, out = argv
    try:
        os.nice(10)
    except OSError:  # not allowed here: compile at the normal priority
        pass
    import lleaves

    model = lleaves.Model(model_file=model_file)
    model.compile(cache=out)  # the cache path does not exist yet: compiles and writes the object there
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
