"""One line per pipeline stage, so a long run says where it is and where the time went."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Prints ``[tfrs_pipeline] name ...`` on entry and the elapsed seconds on exit."""
    print(f"[tfrs_pipeline] {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"[tfrs_pipeline] {name}: done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
