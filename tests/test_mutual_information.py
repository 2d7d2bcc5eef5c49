import numpy as np
import pytest
import torch

from mimir_hf.mutual_information import gaussian_gram, hsic, mutual_information, renyi_mutual_information


def reference_hsic(a: np.ndarray, b: np.ndarray, sigma: float = 5.0) -> float:
    """Straight from MIMIR.md in float64 with an explicit inverse."""

    def r(x):
        m, d = x.shape
        sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        k = np.exp(-sq / (2 * sigma**2 * d))
        kc = k @ (np.eye(m) - np.ones((m, m)) / m)
        return kc @ np.linalg.inv(kc + 1e-5 * m * np.eye(m))

    ra, rb = r(a.reshape(len(a), -1)), r(b.reshape(len(b), -1))
    return float(sum(ra[i, j] * rb[j, i] for i in range(len(a)) for j in range(len(a))))


def test_hsic_matches_the_formula_of_the_paper():
    generator = torch.Generator().manual_seed(1)
    a, b = torch.rand(7, 3, 4, 4, generator=generator), torch.randn(7, 20, generator=generator)
    expected = reference_hsic(a.double().numpy(), b.double().numpy())
    # float32 solve of a system with condition number ~1 / (eps_h m): agreement to ~1e-3 is what float32 gives.
    assert hsic(a, b).item() == pytest.approx(expected, rel=5e-3)


def test_hsic_known_value_for_identical_inputs():
    # R is (numerically) the centring projection when K H is well conditioned: trace(H H) = m - 1.
    x = torch.eye(6) * 30
    assert hsic(x, x).item() == pytest.approx(5.0, rel=1e-3)


def test_gaussian_gram_known_values():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    gram = gaussian_gram(x, sigma=1.0)
    assert torch.allclose(torch.diagonal(gram), torch.ones(2))
    assert gram[0, 1].item() == pytest.approx(np.exp(-4 / (2 * 1 * 2)))


def test_hsic_is_invariant_to_a_batch_permutation():
    a, b = torch.randn(8, 16), torch.randn(8, 5)
    perm = torch.randperm(8)
    # Exact in exact arithmetic; float32 on this ill-conditioned solve agrees to ~1e-3 (float64: ~1e-12).
    assert hsic(a[perm], b[perm]).item() == pytest.approx(hsic(a, b).item(), rel=5e-3)
    assert renyi_mutual_information(a[perm], b[perm]).item() == pytest.approx(
        renyi_mutual_information(a, b).item(),
        abs=1e-3,  # a difference of float32 entropies
    )


@pytest.mark.parametrize("estimator", ["hsic", "renyi"])
def test_dependent_inputs_score_far_above_independent_ones(estimator):
    # Low-dimensional samples: the Gram matrices have decaying spectra, the regime where the estimators discriminate
    # (with m <= d, every Gram matrix is full rank and normalised HSIC saturates near m - 1 whatever the inputs).
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(64, 1, generator=generator) * 5
    independent = torch.randn(64, 1, generator=generator) * 5
    dependent = mutual_information(estimator, a, a)
    unrelated = mutual_information(estimator, a, independent)
    assert dependent > 4 * unrelated


def test_batch_of_two_is_finite_and_batch_of_one_is_a_clear_error():
    assert torch.isfinite(hsic(torch.randn(2, 4), torch.randn(2, 3)))
    assert torch.isfinite(renyi_mutual_information(torch.randn(2, 4), torch.randn(2, 3)))
    with pytest.raises(ValueError, match="batch of at least 2"):
        hsic(torch.randn(1, 4), torch.randn(1, 3))


def test_mismatched_batches_and_unknown_estimator_are_clear_errors():
    with pytest.raises(ValueError, match="paired batches"):
        hsic(torch.randn(3, 4), torch.randn(4, 4))
    with pytest.raises(ValueError, match="Unknown MI estimator"):
        mutual_information("kde", torch.randn(3, 4), torch.randn(3, 4))


def test_float32_and_differentiable_under_bf16_autocast():
    a = torch.randn(8, 32, requires_grad=True)
    b = torch.rand(8, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = hsic(a @ torch.eye(32), b)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    reference = hsic(a.detach(), b)
    assert value.item() == pytest.approx(reference.item(), rel=2e-2)
