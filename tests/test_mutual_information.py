import numpy as np
import pytest
import torch

from mimir_hf.mutual_information import (
    gaussian_gram,
    hsic,
    mutual_information,
    renyi_entropy,
    renyi_gram,
    renyi_mutual_information,
)


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
    # With a fixed kernel width the Renyi MI is invariant too. (The authors' widths come from the batch's first 10
    # rows, so a permutation moves them a little.)
    assert renyi_mutual_information(a[perm], b[perm], sigma=5.0).item() == pytest.approx(
        renyi_mutual_information(a, b, sigma=5.0).item(),
        abs=1e-3,  # a difference of float32 entropies
    )


@pytest.mark.parametrize("estimator, factor", [("hsic", 4), ("renyi", 2.5)])
def test_dependent_inputs_score_far_above_independent_ones(estimator, factor):
    # Low-dimensional samples: the Gram matrices have decaying spectra, the regime where the estimators discriminate
    # (with m <= d, every Gram matrix is full rank and normalised HSIC saturates near m - 1 whatever the inputs).
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(64, 1, generator=generator) * 5
    independent = torch.randn(64, 1, generator=generator) * 5
    dependent = mutual_information(estimator, a, a)
    unrelated = mutual_information(estimator, a, independent)
    assert dependent > factor * unrelated  # Renyi (per-batch widths): 2.48 vs 0.83 bits here


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


def reference_renyi(a: np.ndarray, b: np.ndarray, alpha: float = 1.01) -> float:
    """The authors' MI/DIB_MI.py in float64 numpy: sigma = mean Euclidean distance from the first 10 rows to all rows,
    K = exp(-||a_i - a_j||^2 / sigma), A = K / tr(K), S = log2(sum |lambda|^alpha) / (1 - alpha), Hadamard joint."""

    def gram(x):
        x = x.reshape(len(x), -1)
        squared = (x * x).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2 * x @ x.T
        sigma = np.sqrt(((x[:10, None, :] - x[None, :, :]) ** 2).sum(-1)).mean()
        return np.exp(-squared / sigma)

    def entropy(k):
        eigenvalues = np.abs(np.linalg.eigvalsh(k / np.trace(k)))
        return np.log2((eigenvalues**alpha).sum()) / (1 - alpha)

    ka, kb = gram(a), gram(b)
    return float(entropy(ka) + entropy(kb) - entropy(ka * kb))


def renyi_batches():
    """A random batch of 128 CIFAR-shaped images and ViT-T latents (65 tokens x 192), and a low-dimensional dependent
    pair (where the kernels are far from the identity and the MI is well inside (0, log2 m))."""
    generator = torch.Generator().manual_seed(0)
    images, latents = torch.rand(128, 3, 32, 32, generator=generator), torch.randn(128, 65, 192, generator=generator)
    a = torch.randn(128, 4, generator=generator)
    return [(images, latents), (a, a + 0.5 * torch.randn(128, 4, generator=generator))]


@pytest.mark.parametrize("case", [0, 1])
def test_renyi_follows_the_authors_estimator(case):
    x, z = renyi_batches()[case]
    expected = reference_renyi(x.double().numpy(), z.double().numpy())
    assert renyi_mutual_information(x, z).item() == pytest.approx(expected, rel=1e-4)
    assert mutual_information("renyi", z, x).item() == pytest.approx(expected, rel=1e-4)  # I(X; Z), X the inputs
    if case == 0:
        # Random 3072-d images and latents: every off-diagonal kernel entry is ~exp(-23), so each Gram matrix is
        # ~identity and the MI saturates at log2(128) = 7 bits; the old fixed-width kernel gave ~0.017 here.
        assert expected == pytest.approx(7.0, abs=1e-3)
        assert renyi_mutual_information(x, z, sigma=5.0).item() < 0.05


@pytest.mark.parametrize("case", [0, 1])
def test_renyi_float32_eigen_solve_agrees_with_float64(case):
    x, z = renyi_batches()[case]
    for rows in (x.reshape(128, -1), z.reshape(128, -1)):
        gram32, gram64 = renyi_gram(rows.float()), renyi_gram(rows.double())
        assert renyi_entropy(gram32).item() == pytest.approx(renyi_entropy(gram64).item(), rel=1e-4)
    joint32 = renyi_gram(x.reshape(128, -1).float()) * renyi_gram(z.reshape(128, -1).float())
    joint64 = renyi_gram(x.reshape(128, -1).double()) * renyi_gram(z.reshape(128, -1).double())
    assert renyi_entropy(joint32).item() == pytest.approx(renyi_entropy(joint64).item(), rel=1e-4)


def test_renyi_gradient_is_finite_under_bf16_autocast():
    x, z = renyi_batches()[1]
    z = z.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = renyi_mutual_information(x, z @ torch.eye(4))
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
