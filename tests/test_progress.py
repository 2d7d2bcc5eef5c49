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


def test_the_report_says_its_stages_and_estimate_first_then_every_attack_with_its_pace(images, labels, capsys):
    from mimir_hf.evaluation import RobustnessSettings, evaluate_robustness

    model = MimirForImageClassification(tiny_config()).eval()
    settings = RobustnessSettings(pgd_steps=[3, 6], cw_steps=3, adaptive_steps=3, eps_sweep=[0.0, 8 / 255, 1.0],
                                  autoattack=False, eval_batch_size=4)  # fmt: skip
    messages = []
    report = evaluate_robustness(model, (images, labels), settings, progress=messages.append, show_progress=True)
    plan = messages[0]
    assert plan.startswith("The report: 6 images in 2 batches") and "Estimated time: at most" in plan
    for title in ("FGSM", "PGD-3", "PGD-6", "CW-inf", "PGD-MI", "PGD-feature", "PGD-3 at eps 255/255"):
        assert f"  {title}" in plan, title
    paced = [m for m in messages if "img/s)" in m]
    # one line per attack that costs passes and batch: FGSM, PGD-3, PGD-6, CW, noise, PGD-MI, PGD-feature, sweep 255
    assert len(paced) == 2 * 8 and paced[0].startswith("FGSM [batch 1/2]: 4 images in")
    assert [m.split(",")[0] for m in messages if m.startswith("batch ")] == ["batch 1: 4 images", "batch 2: 6 images"]
    bars = capsys.readouterr().err
    assert "Robustness report" in bars and "PGD-6 [batch 2/2]" in bars and "img/s" in bars
    quiet = evaluate_robustness(model, (images, labels), settings)
    assert quiet.accuracy == report.accuracy  # progress changes nothing measured
