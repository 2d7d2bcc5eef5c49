"""Progress of long attack runs: a tqdm bar per attack, advanced step by step, and a heartbeat that keeps bars alive.

The attack engine reports the share of its work done after each step (`mimir_hf.attacks.reporting_progress`);
`advancing(bar, images)` turns that into images done on a bar, so a bar moves inside a batch (PGD-100 on 256 ImageNet
images takes minutes) and its rate is images per second. `Heartbeat` refreshes the open bars every few seconds, so
elapsed time keeps moving while an attack that reports no steps (AutoAttack's inner loops) runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm.auto import tqdm

from .attacks import reporting_progress

_status: ContextVar[Callable[[str], None] | None] = ContextVar("attack_status", default=None)


def current_status() -> Callable[[str], None] | None:
    """Where an attack that runs inside a library (AutoAttack) may report what it is doing, if anywhere."""
    return _status.get()


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


class ReportProgress:
    """The robustness report's progress: its stages and an estimate of their time up front (`plan`), an overall bar
    whose remaining time is the report's ETA, and per attack and batch a bar of images per second plus one log line.

    `attacks` have `name`, `title` and `passes` (forward-and-backward passes per image, at most: the estimate's
    unit); `images[name]` is how many images each attack covers; `seconds_per_pass` is what one image's pass took on
    a probe batch."""

    def __init__(self, attacks, images: dict[str, int], batches: int, seconds_per_pass: float, say, disable: bool):
        self.attacks, self.images, self.batches = attacks, images, batches
        self.seconds_per_pass, self.say, self.disable = seconds_per_pass, say, disable
        self.batch = 0
        self.overall = None

    def estimate(self, attack) -> float:
        """Seconds `attack` should take over all its images, at most (early stopping makes most attacks cheaper)."""
        return attack.passes * self.images.get(attack.name, 0) * self.seconds_per_pass

    def plan(self) -> str:
        """The stage list with each stage's estimated time, and the total."""
        lines = [
            f"The report: {max(self.images.values(), default=0)} images in {self.batches} batch"
            f"{'es' if self.batches != 1 else ''}; one image's forward and backward pass took "
            f"{self.seconds_per_pass * 1e3:.2f} ms on a probe batch. Stages, each on the images still standing, with "
            "their time at most (early stopping makes most of them shorter):"
        ]
        for attack in self.attacks:
            if self.images.get(attack.name, 0) and attack.passes:
                lines.append(
                    f"  {attack.title}: {self.images[attack.name]} images, {attack.passes:.3g} pass"
                    f"{'' if attack.passes == 1 else 'es'} each, "
                    f"~{_duration(self.estimate(attack))}"
                )
        total = sum(self.estimate(attack) for attack in self.attacks)
        lines.append(f"Estimated time: at most ~{_duration(total)} (the bar below keeps an ETA from the actual pace).")
        return "\n".join(lines)

    def start(self) -> None:
        total = sum(self.estimate(attack) for attack in self.attacks)
        self.overall = tqdm(
            total=total, desc="Robustness report", unit="s", disable=self.disable, position=0, mininterval=1,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
        )  # fmt: skip

    @contextmanager
    def attack(self, attack, count: int) -> Iterator[None]:
        """Around one attack on one batch of `count` images."""
        description = f"{attack.title} [batch {self.batch + 1}/{self.batches}]"
        bar = attack_bar(description, count, self.disable, position=1)
        bar.leave = False
        started = time.perf_counter()
        bars = [bar] + ([self.overall] if self.overall is not None else [])
        token = _status.set(lambda text: bar.set_postfix_str(text[:60], refresh=True))
        try:
            with Heartbeat(bars), advancing(bar, count):
                yield bar
        finally:
            _status.reset(token)
        bar.close()
        seconds = time.perf_counter() - started
        if self.overall is not None and self.images.get(attack.name):
            self.overall.update(self.estimate(attack) * count / self.images[attack.name])
        self.say(f"{description}: {count} images in {seconds:.1f} s ({count / max(seconds, 1e-9):.1f} img/s)")

    def close(self) -> None:
        if self.overall is not None:
            self.overall.n = self.overall.total
            self.overall.close()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["Heartbeat", "ReportProgress", "advancing", "attack_bar"]
