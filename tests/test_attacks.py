"""The one attack engine: stays in the eps-ball and [0, 1], raises its loss, leaves the model as it found it."""

import pytest
import torch
import torch.nn.functional as F

from mimir_hf import AttackBudget, MimirForImageClassification, MimirForPreTraining
from mimir_hf.attacks import (
    eval_mode,
    fgsm_attack,
    frozen_parameters,
    mae_attack,
    mi_objective,
    pgd_attack,
    projected_gradient_ascent,
    trades_attack,
)

EPS = 8 / 255


def budget(steps, step_size=2 / 255, epsilon=EPS):
    return AttackBudget(epsilon, step_size, steps)


@pytest.fixture
def classifier(config):
    model = MimirForImageClassification(config)
    model.classifier.weight.data.normal_(std=0.5)  # a head that reacts to its input, unlike the 2e-5 init
    return model


def all_attacks(classifier, pretrainer, images, labels):
    return {
        "pgd": pgd_attack(classifier, images, labels, budget(5)),
        "cw": pgd_attack(classifier, images, labels, budget(5), loss="margin"),
        "fgsm": fgsm_attack(classifier, images, labels, epsilon=EPS),
        "trades": trades_attack(classifier, images, budget(3)),
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
        pgd = F.cross_entropy(classifier(pgd_attack(classifier, images, labels, budget(10))).logits, labels)
    assert clean < fgsm <= pgd + 1e-4


def test_cw_raises_the_margin(classifier, images, labels):
    def margin(logits):
        true = logits.gather(1, labels[:, None]).squeeze(1)
        return (logits.masked_fill(F.one_hot(labels, 4).bool(), -1e9).amax(1) - true).sum()

    with torch.no_grad():
        before = margin(classifier.eval()(images).logits)
        after = margin(classifier(pgd_attack(classifier, images, labels, budget(10), loss="margin")).logits)
    assert after > before


def test_mae_attack_raises_the_reconstruction_loss(config, images):
    model = MimirForPreTraining(config).eval()
    noise = torch.rand(6, config.num_patches)
    adversarial = mae_attack(model, images, budget(5))
    with torch.no_grad():
        before = model(images, noise=noise, compute_mi_loss=False).reconstruction_loss
        after = model(adversarial, noise=noise, compute_mi_loss=False).reconstruction_loss
    assert after > before


def test_trades_attack_raises_the_kl(classifier, images):
    classifier.eval()
    with torch.no_grad():
        clean = F.softmax(classifier(images).logits, 1)
        adversarial = trades_attack(classifier, images, budget(5))
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


def test_eval_mode_restores_each_flag_and_runs_custom_train():
    calls = []

    class OwnTrain(torch.nn.Linear):
        def train(self, mode=True):
            calls.append(mode)
            return super().train(mode)

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model[1].eval()  # a mixed state must come back exactly
    with eval_mode(model):
        assert not any(module.training for module in model.modules())
    assert [module.training for module in model.modules()] == [True, True, False]
    model.append(OwnTrain(2, 2))
    with eval_mode(model):
        assert not any(module.training for module in model.modules())
    assert calls == [False] and [module.training for module in model.modules()] == [True, True, False, True]


def test_frozen_parameters_gives_input_gradients_only_and_restores_each_flag(classifier, images, labels):
    first = next(classifier.parameters())
    first.requires_grad_(False)  # a mixed state must come back exactly
    before = {name: p.requires_grad for name, p in classifier.named_parameters()}
    reference = pgd_attack(classifier, images, labels, budget(2), generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="boom"):
        with frozen_parameters(classifier):
            assert not any(p.requires_grad for p in classifier.parameters())
            # the same attack, without any weight gradient kept: the same images
            frozen = pgd_attack(classifier, images, labels, budget(2), generator=torch.Generator().manual_seed(0))
            assert torch.equal(frozen, reference)
            assert all(p.grad is None for p in classifier.parameters())
            raise RuntimeError("boom")
    assert {name: p.requires_grad for name, p in classifier.named_parameters()} == before


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attacks_run_inside_no_grad_and_under_low_precision_autocast(classifier, config, images, labels, dtype):
    pretrainer = MimirForPreTraining(config)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        attacked = {
            "pgd": pgd_attack(classifier, images, labels, budget(3)),
            "trades": trades_attack(classifier, images, budget(3)),
            "mae": mae_attack(pretrainer, images, budget(2)),
            "pgd-mi": projected_gradient_ascent(mi_objective(classifier, labels), images, budget(2), model=classifier),
        }
    for name, adversarial in attacked.items():
        assert adversarial.dtype == images.dtype and torch.isfinite(adversarial).all(), name
        assert (adversarial - images).abs().max() <= EPS + 1e-6 and (adversarial != images).any(), name
        assert adversarial.min() >= 0 and adversarial.max() <= 1, name


def test_a_nan_gradient_never_reaches_the_images(images):
    """An objective whose gradient is NaN (as an fp16 overflow inside a model can make it) leaves the images finite."""
    poisoned = lambda x: (x * torch.tensor(float("nan"))).sum()
    adversarial = projected_gradient_ascent(poisoned, images, budget(3))
    assert torch.isfinite(adversarial).all() and (adversarial - images).abs().max() <= EPS + 1e-6


def test_zero_epsilon_returns_the_clean_images(classifier, images, labels):
    assert torch.equal(pgd_attack(classifier, images, labels, budget(2, 1 / 255, 0.0)), images)


def test_seeded_generator_makes_attacks_reproducible(classifier, images, labels):
    runs = [
        pgd_attack(classifier, images, labels, budget(2), generator=torch.Generator().manual_seed(3)) for _ in range(2)
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
        AttackBudget(**budget)
    with pytest.raises(TypeError, match="budget must be a mimir_hf.AttackBudget"):
        projected_gradient_ascent(lambda x: x.sum(), images, dict(epsilon=0.1, step_size=0.01, steps=1))


def test_images_outside_unit_range_are_a_clear_error(classifier, images, labels):
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        pgd_attack(classifier, images * 2 - 1, labels, budget(1))
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        pgd_attack(classifier, bad, labels, budget(1))
    with pytest.raises(ValueError, match="Unknown PGD loss"):
        pgd_attack(classifier, images, labels, budget(1), loss="dlr")


def test_attacks_see_through_in_model_normalisation(images, labels):
    """PGD on a model that normalises inside equals PGD on the same weights behind an explicit normalisation."""
    from torch import nn

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
            return self.model(pixel_values=(x - mean) / std).logits

    for loss in ("ce", "margin"):
        a = pgd_attack(inside, images, labels, budget(5), loss=loss, generator=torch.Generator().manual_seed(1))
        b = pgd_attack(Explicit(), images, labels, budget(5), loss=loss, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b)
        assert (a != images).any()


def test_pgd_mi_is_mean_cross_entropy_plus_weighted_hsic(classifier, images, labels):
    """PGD-MI ascends mean CE + weight * HSIC(features(x'), x'): with weight 0 it takes PGD-CE's steps exactly (the
    signs of the mean and of the summed CE gradients agree); with a large weight the HSIC term changes them."""
    steps = budget(3)

    def pgd_mi(weight):
        objective = mi_objective(classifier, labels, weight=weight)
        return projected_gradient_ascent(
            objective, images, steps, model=classifier, generator=torch.Generator().manual_seed(5)
        )

    pgd_ce = pgd_attack(classifier, images, labels, steps, generator=torch.Generator().manual_seed(5))
    assert torch.equal(pgd_mi(0.0), pgd_ce)
    assert not torch.equal(pgd_mi(1e3), pgd_ce)


def test_pgd_mi_reads_the_models_own_mi_settings(images, labels):
    from .conftest import tiny_config

    model = MimirForImageClassification(tiny_config(mi_weight=1e3, mi_sigma=2.0)).eval()
    model.classifier.weight.data.normal_(std=0.5)
    x = images.clone().requires_grad_(True)
    from_config = mi_objective(model, labels)(x)
    explicit = mi_objective(model, labels, weight=1e3, sigma=2.0)(x)
    default = mi_objective(model, labels, weight=1e-5, sigma=5.0)(x)
    torch.testing.assert_close(from_config, explicit)
    assert not torch.allclose(from_config, default)


def test_attack_inputs_are_checked_at_the_entry(classifier, images, labels):
    adversarial = pgd_attack(classifier, images, labels.to(torch.int32), budget(1))  # any integer dtype works
    assert adversarial.shape == images.shape
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        pgd_attack(classifier, images, torch.tensor([0, 1, 2, 3, 4, -1]), budget(1))
    with pytest.raises(ValueError, match="integer tensor of class indices"):
        pgd_attack(classifier, images, labels.float(), budget(1))
    with pytest.raises(ValueError, match="one label per image"):
        pgd_attack(classifier, images, labels[:3], budget(1))
    with pytest.raises(ValueError, match="float tensor.*255"):
        pgd_attack(classifier, (images * 255).to(torch.uint8), labels, budget(1))
    with pytest.raises(ValueError, match="empty"):
        pgd_attack(classifier, images[:0], labels[:0], budget(1))


def test_trades_and_mart_losses_follow_their_papers():
    """The training losses beside the attacks, against their definitions written out per sample."""
    from mimir_hf.attacks import mart_loss, trades_loss

    generator = torch.Generator().manual_seed(0)
    clean, adversarial = torch.randn(2, 6, 5, generator=generator).unbind(0)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    p, q = clean.softmax(1), adversarial.softmax(1)
    kl = (p * (p.log() - q.log())).sum(1)  # KL(p(x) || p(x')) per sample
    expected = torch.nn.functional.cross_entropy(clean, labels) + 6.0 * kl.mean()
    torch.testing.assert_close(trades_loss(clean, adversarial, labels, beta=6.0), expected)

    boosted = []
    for i in range(6):
        others = [k for k in range(5) if k != labels[i]]
        runner_up = max(others, key=lambda k: q[i, k].item())
        boosted.append(-q[i, labels[i]].log() - torch.log(1.0001 - q[i, runner_up]))
    weighted = kl * (1 - p[torch.arange(6), labels])
    expected = torch.stack(boosted).mean() + 6.0 * weighted.mean()
    torch.testing.assert_close(mart_loss(clean, adversarial, labels, beta=6.0), expected, rtol=1e-4, atol=1e-5)
