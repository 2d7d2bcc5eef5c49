"""Progress of long attack runs: a tqdm bar per attack, advanced step by step, and a heartbeat that keeps bars alive.

The attack engine reports the share of its work done after each step (`mimir_hf.attacks.reporting_progress`);
`advancing(bar, images)` turns that into images done on a bar, so a bar moves inside a batch (PGD-100 on 256 ImageNet
images takes minutes) and its rate is images per second. `Heartbeat` refreshes the open bars every few seconds, so
elapsed time keeps moving while an attack that reports no steps (AutoAttack's inner loops) runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

from .attacks import reporting_progress


def attack_bar(description: str, images: int, disable: bool = False, position: int | None = None, file=None) -> tqdm:
    """A bar over `images` images, showing images per second (on stderr, or `file`)."""
    return tqdm(
        total=images, desc=description, unit="img", disable=disable, position=position, leave=True, file=file,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} [{elapsed}<{remaining}, {rate_fmt}]{postfix}",
        mininterval=0.5,
    )  # fmt: skip


@contextmanager
def advancing(bar: tqdm, images: int) -> Iterator[None]:
    """Inside the block, the attack engine's steps move `bar` across the next `images` images; at the end the bar
    stands after them whatever the attack reported."""
    start = bar.n

    def listener(done: float) -> None:
        bar.n = start + done * images
        bar.refresh()

    with reporting_progress(listener):
        yield
    bar.n = start + images
    bar.refresh()


class Heartbeat:
    """Refreshes `bars` every `seconds` from a daemon thread while the `with` block runs (tqdm only redraws a bar
    when it moves; an attack busy inside a library would otherwise look frozen)."""

    def __init__(self, bars: list[tqdm], seconds: float = 5.0):
        self.bars, self.seconds = bars, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds):
            for bar in list(self.bars):
                if not bar.disable:
                    bar.refresh()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


__all__ = ["Heartbeat", "advancing", "attack_bar"]
