"""Progress of a long loop (sampling, a feature pass over a data set): a bar on a terminal, elsewhere a log line
every ~10% with the time left, so a long run never looks frozen."""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)
Item = TypeVar("Item")


def progress(steps: Iterable[Item], total: int, desc: str, enabled: bool = True, min_total: int = 100
             ) -> Iterator[Item]:
    """`steps` passed through; on a terminal a tqdm bar (with its estimate), elsewhere "desc: i of total, about
    S s left" every ~10% of loops of at least `min_total` steps."""
    if enabled and sys.stderr.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(steps, total=total, desc=desc, leave=False)
        return
    every, start = max(total // 10, 1), time.perf_counter()
    for i, item in enumerate(steps):
        if enabled and total >= min_total and i % every == 0 and i:
            left = (time.perf_counter() - start) / i * (total - i)
            log.info("%s: %d of %d, about %.0f s left", desc, i, total, left)
        yield item
