"""A progress phase for one long call that reports no progress of its own."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from tqdm import tqdm


@contextlib.contextmanager
def phase(desc: str, total: int, enabled: bool = True, unit: str = "img",
          refresh_s: float = 1.0) -> Iterator[tqdm]:
    """A tqdm bar for one blocking call (e.g. drawing the final samples): its clock ticks
    every ``refresh_s`` seconds while the call runs, and it fills up when the call returns,
    so a minute of sampling after training is never silent."""
    done = threading.Event()
    with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True,
              disable=not enabled) as bar:
        ticker = threading.Thread(target=_tick, args=(bar, done, refresh_s), daemon=True)
        ticker.start()
        try:
            yield bar
            bar.update(total - bar.n)
        finally:
            done.set()
            ticker.join()


def _tick(bar: tqdm, done: threading.Event, every: float) -> None:
    while not done.wait(every):
        bar.refresh()
