"""The one attack engine: stays in the eps-ball and [0, 1], raises its loss, leaves the model as it found it."""

import pytest
import torch
import torch.nn.functional as F

from mimir_hf import MimirForImageClassification, MimirForPreTraining
from mimir_hf.attacks import (
    eval_mode,
    fgsm_attack,
    mae_attack,
    mi_objective,
    pgd_attack,
    projected_gradient_ascent,
    trades_attack,
)

EPS = 8 / 255


@pytest.fixture
def classifier(config):
    model = MimirForImageClassification(config)
    model.classifier.weight.data.normal_(std=0.5)  # a head that reacts to its input, unlike the 2e-5 init
    return model


def all_attacks(classifier, pretrainer, images, labels):
    return {
        "pgd": pgd_attack(classifier, images, labels, epsilon=EPS, step_size=2 / 255, steps=5),
        "cw": pgd_attack(classifier, images, labels, epsilon=EPS, step_size=2 / 255, steps=5, loss="margin"),
        "fgsm": fgsm_attack(classifier, images, labels, epsilon=EPS),
        "trades": trades_attack(classifier, images, epsilon=EPS, step_size=2 / 255, steps=3),
        "mae": mae_attack(pretrainer, images),
    }


def test_every_attack_stays_in_the_eps_ball_and_in_unit_range(classifier, config, labels):
    images = torch.rand(6, 3, 16, 16)
    images[:, :, :4] = 0.0  # pixels at the borders of [0, 1] must stay inside it
    images[:, :, -4:] = 1.0
    for name, adversarial in all_attacks(classifier, MimirForPreTraining(config), images, labels).items():
        assert (adversarial - images).abs().max() <= EPS + 1e-6, name
        assert adversarial.min() >= 0 and adversarial.max() <= 1, name
        assert not adversarial.requires_grad, name
        assert (adversarial != images).any(), name


def test_pgd_raises_the_cross_entropy_and_beats_fgsm(classifier, images, labels):
    classifier.eval()
    with torch.no_grad():
        clean = F.cross_entropy(classifier(images).logits, labels)
        fgsm = F.cross_entropy(classifier(fgsm_attack(classifier, images, labels, EPS)).logits, labels)
        pgd = F.cross_entropy(classifier(pgd_attack(classifier, images, labels, EPS, 2 / 255, 10)).logits, labels)
    assert clean < fgsm <= pgd + 1e-4


def test_cw_raises_the_margin(classifier, images, labels):
    def margin(logits):
        true = logits.gather(1, labels[:, None]).squeeze(1)
        return (logits.masked_fill(F.one_hot(labels, 4).bool(), -1e9).amax(1) - true).sum()

    with torch.no_grad():
        before = margin(classifier.eval()(images).logits)
        after = margin(classifier(pgd_attack(classifier, images, labels, EPS, 2 / 255, 10, loss="margin")).logits)
    assert after > before


def test_mae_attack_raises_the_reconstruction_loss(config, images):
    model = MimirForPreTraining(config).eval()
    noise = torch.rand(6, config.num_patches)
    adversarial = mae_attack(model, images, steps=5, step_size=2 / 255)
    with torch.no_grad():
        before = model(images, noise=noise, compute_mi_loss=False).reconstruction_loss
        after = model(adversarial, noise=noise, compute_mi_loss=False).reconstruction_loss
    assert after > before


def test_trades_attack_raises_the_kl(classifier, images):
    classifier.eval()
    with torch.no_grad():
        clean = F.softmax(classifier(images).logits, 1)
        adversarial = trades_attack(classifier, images, epsilon=EPS, step_size=2 / 255, steps=5)
        kl = F.kl_div(F.log_softmax(classifier(adversarial).logits, 1), clean, reduction="sum")
    assert kl > 1e-6


def test_model_mode_and_parameter_grads_are_left_as_they_were(classifier, config, images, labels):
    pretrainer = MimirForPreTraining(config)
    before = {}
    for model in (classifier, pretrainer):
        model.train()
        model.vit.layers[0].eval()  # a mixed state must come back exactly
        first = next(model.parameters())
        first.grad = torch.full_like(first, 3.0)
        before[id(model)] = (
            {name: module.training for name, module in model.named_modules()},
            {name: p.requires_grad for name, p in model.named_parameters()},
        )
    all_attacks(classifier, pretrainer, images, labels)
    for model in (classifier, pretrainer):
        modes, requires = before[id(model)]
        assert {name: module.training for name, module in model.named_modules()} == modes
        assert not modes["vit.layers.0"] and modes["vit.layers.1"]
        assert {name: p.requires_grad for name, p in model.named_parameters()} == requires
        grads = [p.grad for p in model.parameters()]
        assert torch.equal(grads[0], torch.full_like(grads[0], 3.0))
        assert all(g is None for g in grads[1:])


def test_eval_mode_restores_on_error(classifier):
    classifier.train()
    with pytest.raises(RuntimeError):
        with eval_mode(classifier):
            assert not classifier.training
            raise RuntimeError("boom")
    assert classifier.training


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attacks_run_inside_no_grad_and_under_low_precision_autocast(classifier, config, images, labels, dtype):
    pretrainer = MimirForPreTraining(config)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        attacked = {
            "pgd": pgd_attack(classifier, images, labels, EPS, 2 / 255, 3),
            "trades": trades_attack(classifier, images, EPS, 2 / 255, 3),
            "mae": mae_attack(pretrainer, images, EPS, 2 / 255, 2),
            "pgd-mi": projected_gradient_ascent(
                mi_objective(classifier, labels), images, epsilon=EPS, step_size=2 / 255, steps=2, model=classifier
            ),
        }
    for name, adversarial in attacked.items():
        assert adversarial.dtype == images.dtype and torch.isfinite(adversarial).all(), name
        assert (adversarial - images).abs().max() <= EPS + 1e-6 and (adversarial != images).any(), name
        assert adversarial.min() >= 0 and adversarial.max() <= 1, name


def test_a_nan_gradient_never_reaches_the_images(images):
    """An objective whose gradient is NaN (as an fp16 overflow inside a model can make it) leaves the images finite."""
    poisoned = lambda x: (x * torch.tensor(float("nan"))).sum()
    adversarial = projected_gradient_ascent(poisoned, images, epsilon=EPS, step_size=2 / 255, steps=3)
    assert torch.isfinite(adversarial).all() and (adversarial - images).abs().max() <= EPS + 1e-6


def test_zero_epsilon_returns_the_clean_images(classifier, images, labels):
    assert torch.equal(pgd_attack(classifier, images, labels, epsilon=0.0, step_size=1 / 255, steps=2), images)


def test_seeded_generator_makes_attacks_reproducible(classifier, images, labels):
    runs = [
        pgd_attack(classifier, images, labels, EPS, 2 / 255, 2, generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    ]
    assert torch.equal(*runs)


@pytest.mark.parametrize(
    "budget, message",
    [
        (dict(epsilon=-0.1, step_size=0.01, steps=1), "epsilon must be in \\[0, 1\\]"),
        (dict(epsilon=1.5, step_size=0.01, steps=1), "epsilon must be in \\[0, 1\\]"),
        (dict(epsilon=0.1, step_size=0.0, steps=1), "step_size must be > 0"),
        (dict(epsilon=0.1, step_size=0.01, steps=0), "steps must be an integer >= 1"),
    ],
)
def test_bad_budgets_are_clear_errors(images, budget, message):
    with pytest.raises(ValueError, match=message):
        projected_gradient_ascent(lambda x: x.sum(), images, **budget)


def test_images_outside_unit_range_are_a_clear_error(classifier, images, labels):
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        pgd_attack(classifier, images * 2 - 1, labels)
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        pgd_attack(classifier, bad, labels)
    with pytest.raises(ValueError, match="Unknown PGD loss"):
        pgd_attack(classifier, images, labels, loss="dlr")


def test_attacks_see_through_in_model_normalisation(images, labels):
    """PGD on a model that normalises inside equals PGD on the same weights behind an explicit normalisation."""
    from torch import nn

    from mimir_hf.modeling_mimir import pixel_range_checked

    from .conftest import tiny_config

    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    inside = MimirForImageClassification(tiny_config(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])).eval()
    inside.classifier.weight.data.normal_(std=0.5)
    plain = MimirForImageClassification(tiny_config()).eval()
    plain.load_state_dict(inside.state_dict())

    class Explicit(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = plain

        def forward(self, x):
            with pixel_range_checked():  # normalised values leave [0, 1] on purpose
                return self.model(pixel_values=(x - mean) / std).logits

    for loss in ("ce", "margin"):
        a = pgd_attack(inside, images, labels, EPS, 2 / 255, 5, loss=loss, generator=torch.Generator().manual_seed(1))
        b = pgd_attack(Explicit(), images, labels, EPS, 2 / 255, 5, loss=loss, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b)
        assert (a != images).any()
