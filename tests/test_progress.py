"""Progress: the attack engine reports its share of work after every step, and bars turn it into images per
second, so a long attack is never silent."""

import io

import torch

from mimir_hf import AttackBudget, MimirForImageClassification
from mimir_hf.attacks import pgd_attack, reporting_progress
from mimir_hf.progress import Heartbeat, advancing, attack_bar

from .conftest import tiny_config


def test_the_engine_reports_every_step_and_counts_early_stopped_images_as_done(images, labels):
    model = MimirForImageClassification(tiny_config()).eval()
    reported = []
    with reporting_progress(reported.append):
        pgd_attack(
            model, images, labels, AttackBudget(8 / 255, 2 / 255, 5), generator=torch.Generator(), early_stop=True
        )
    # one report between consecutive steps (or fewer, once every image has left early), then 1.0 at the end
    assert 1 <= len(reported) <= 5 and reported[-1] == 1.0
    assert all(0 < a <= b <= 1 for a, b in zip(reported, reported[1:], strict=False))
    reported.clear()
    pgd_attack(model, images, labels, AttackBudget(8 / 255, 2 / 255, 5), generator=torch.Generator())
    assert reported == []  # outside the block nothing listens


def test_a_bar_advances_inside_a_batch_and_shows_images_per_second(images, labels):
    model = MimirForImageClassification(tiny_config()).eval()
    stream = io.StringIO()
    bar = attack_bar("PGD-10", 2 * len(images), file=stream)
    positions = []
    original = bar.refresh

    def refresh(*args, **kwargs):
        positions.append(bar.n)
        return original(*args, **kwargs)

    bar.refresh = refresh
    with advancing(bar, len(images)):
        pgd_attack(model, images, labels, AttackBudget(8 / 255, 2 / 255, 10), generator=torch.Generator())
    assert bar.n == len(images) and len(positions) >= 10  # moved step by step, not once per batch
    assert any(0 < n < len(images) for n in positions)
    bar.close()
    assert "img/s" in stream.getvalue() and "PGD-10" in stream.getvalue()


def test_the_heartbeat_redraws_bars_while_nothing_moves():
    stream = io.StringIO()
    bar = attack_bar("AutoAttack", 4, file=stream)
    before = stream.getvalue().count("\r")
    with Heartbeat([bar], seconds=0.05):
        import time

        time.sleep(0.4)
    assert stream.getvalue().count("\r") >= before + 3  # redrawn: the elapsed time moves
    bar.close()
