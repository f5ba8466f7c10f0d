"""One line per pipeline stage, so a long run says where it is and where the time went."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Prints ``[tfrs_pipeline] name ...`` on entry, and on exit the elapsed seconds and the process's CPU
    seconds over them: on a shared machine the wall time carries other people's work, the CPU time does not."""
    print(f"[tfrs_pipeline] {name} ...", file=sys.stderr, flush=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    yield
    print(f"[tfrs_pipeline] {name}: done in {time.perf_counter() - start:.1f}s "
          f"({time.process_time() - cpu_start:.1f} CPU-s)", file=sys.stderr, flush=True)
