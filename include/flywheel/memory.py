"""Process memory behaviour for the steps that build large arrays once (training, validation).

numpy advises the kernel to back every array of 4 MiB or more with transparent huge pages. Each first
touch of such an array then faults in and zeroes a whole 2 MiB page; on virtual machines that hand
freed memory back to the host (virtio-balloon free page reporting, as on the CI and demo machines),
those pages come back from the host one huge page at a time. Measured on the 1M-row training load: 0.8-1.7 s of
system time with the advice, 0.3 s without, for the same work (load wall time 1.3-1.7 s -> 1.0-1.1 s).
The arrays here are built once and read a few times, so huge pages buy little TLB benefit back.

Arrow's default allocator (mimalloc) hands freed pages back to the kernel within milliseconds, so
reading hundreds of Parquet files faults their decompression buffers in again file after file; the
C library's allocator keeps them. Measured on the same load: 1.1-1.4 s of system time with mimalloc,
0.6 s with the system allocator.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def batch_memory() -> Iterator[None]:
    """Both settings below for a step that builds large arrays once (training, validation)."""
    with small_pages(), reused_arrow_memory():
        yield


@contextmanager
def reused_arrow_memory() -> Iterator[None]:
    """Arrow allocates from the system allocator in the block (buffers remember their pool, so
    freeing them later is safe); the previous default pool is restored after."""
    import pyarrow as pa

    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


@contextmanager
def small_pages() -> Iterator[None]:
    """numpy's huge-page advice off for the block (restored after); left alone if the user chose it
    with numpy's own ``NUMPY_MADVISE_HUGEPAGE``."""
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        yield
        return
    set_madvise_hugepage = _madvise_switch()
    if set_madvise_hugepage is None:  # pragma: no cover - a numpy without the switch
        yield
        return
    previous = set_madvise_hugepage(False)
    try:
        yield
    finally:
        set_madvise_hugepage(previous)


def _madvise_switch() -> Callable[[bool], bool] | None:
    """numpy's private ``_set_madvise_hugepage`` (returns the previous setting), or None if this numpy
    has none. Looked up by name: it is not in numpy's type stubs."""
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy >= 2, then 1.x
        try:
            switch = getattr(importlib.import_module(module), "_set_madvise_hugepage", None)
        except ImportError:  # pragma: no cover - numpy 1.x has no numpy._core
            continue
        if switch is not None:
            return switch
    return None
