"""Mutual-information estimators for MIMIR's information-bottleneck penalty: normalised HSIC and matrix Renyi
alpha-entropy MI.

Both work on a batch of `m` samples, each flattened to one row, and are computed on the tensors' own device in float32
(autocast off), so they stay finite under mixed precision. HSIC follows the authors' `MI/hsic.py` (fixed kernel width
sigma = 5, distances divided by the row dimension) and is applied to (Z, X'); the Renyi estimator follows their
`MI/DIB_MI.py` (kernel widths set from each batch's own distances) and is applied to (X, Z) with the clean images X.
"""

from __future__ import annotations

import torch

HSIC_EPSILON = 1e-5  # eps_h of the normalised ("CCA") HSIC: R = Kc (Kc + eps_h m I)^-1
DEFAULT_MI_WEIGHT = 1e-5  # the reference's lambda ("mi_xpl"): loss = reconstruction + lambda * I(X'; Z)
DEFAULT_MI_SIGMA = 5.0  # the reference's Gaussian kernel width
DEFAULT_MI_ALPHA = 1.01  # order of the Renyi entropy


def _as_float32_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() < 2:
        raise ValueError(f"{name} must have a batch dimension and at least one feature, got shape {tuple(x.shape)}.")
    if x.shape[0] < 2:
        raise ValueError(
            f"The MI term needs a batch of at least 2 samples to compare, got a batch of {x.shape[0]} for {name}. "
            "Use a larger per-device batch size, or set mi_estimator='none'."
        )
    return x.reshape(x.shape[0], -1).float()


def gaussian_gram(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2 d)) for rows x_i of dimension d. Shape [m, m]."""
    squared_norms = x.pow(2).sum(dim=1)
    squared_distances = (squared_norms[:, None] + squared_norms[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    return torch.exp(-squared_distances / (2.0 * sigma**2 * x.shape[1]))


def _normalised_gram(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """R = Kc (Kc + eps_h m I)^-1 with Kc = K H, solved rather than inverted."""
    m = x.shape[0]
    gram = gaussian_gram(x, sigma)
    centred = gram - gram.mean(dim=1, keepdim=True)  # K H, H = I - 11^T/m
    eye = torch.eye(m, device=x.device, dtype=x.dtype)
    return torch.linalg.solve(centred + HSIC_EPSILON * m * eye, centred, left=False)


def hsic(a: torch.Tensor, b: torch.Tensor, sigma: float = DEFAULT_MI_SIGMA) -> torch.Tensor:
    """Normalised HSIC, HSIC_nCCA(A, B) = sum_ij (R_A)_ij (R_B)_ji, between two batches of equal size.

    Args:
        a, b: `[m, ...]` tensors; every sample is flattened to one row.
        sigma: kernel width (the reference uses 5); distances are divided by the row dimension.

    Returns: a float32 scalar on the inputs' device, differentiable in `a` and `b`.
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"HSIC needs paired batches, got {a.shape[0]} and {b.shape[0]} samples.")
    with torch.autocast(device_type=a.device.type, enabled=False):
        r_a = _normalised_gram(_as_float32_rows(a, "a"), sigma)
        r_b = _normalised_gram(_as_float32_rows(b, "b"), sigma)
        return (r_a * r_b.T).sum()


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """||x_i - x_j||^2 for the rows of `x` `[m, d]`: symmetric, exactly 0 on the diagonal, never negative. Rows are
    centred first (distances do not change), which keeps the float32 expansion |a|^2 + |b|^2 - 2 a.b accurate."""
    x = x - x.mean(dim=0, keepdim=True)
    squared_norms = x.pow(2).sum(dim=1)
    distances = (squared_norms[:, None] + squared_norms[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    distances = 0.5 * (distances + distances.T)
    return distances.fill_diagonal_(0.0)


def renyi_gram(x: torch.Tensor) -> torch.Tensor:
    """The authors' Renyi-MI kernel, K_ij = exp(-||x_i - x_j||^2 / sigma), with the width sigma set from the batch:
    the mean Euclidean (not squared) distance from the first 10 rows to every row, self-distances included,
    computed without gradient (`MI/DIB_MI.py`: no factor 2, no square on sigma, no division by the dimension)."""
    distances = squared_distances(x)
    with torch.no_grad():
        sigma = distances[:10].sqrt().mean().clamp_min(torch.finfo(x.dtype).tiny)
    return torch.exp(-distances / sigma)


def renyi_entropy(gram: torch.Tensor, alpha: float = DEFAULT_MI_ALPHA) -> torch.Tensor:
    """S_alpha(A) = log2(sum_k lambda_k(A)^alpha) / (1 - alpha), in bits, with A = K / tr(K).

    The eigenvalues come from `eigvalsh` on the symmetrised matrix (its gradient assumes symmetry, which a float32
    Gram matrix only has up to rounding); the rounding-level negative ones are clipped to 0."""
    normalised = gram / torch.diagonal(gram).sum()
    eigenvalues = torch.linalg.eigvalsh(0.5 * (normalised + normalised.T)).clamp_min(0.0)
    return torch.log2(eigenvalues.pow(alpha).sum()) / (1.0 - alpha)


def renyi_mutual_information(
    a: torch.Tensor, b: torch.Tensor, alpha: float = DEFAULT_MI_ALPHA, sigma: float | None = None
) -> torch.Tensor:
    """Matrix-based Renyi alpha-entropy MI in bits, I(A; B) = S(A) + S(B) - S(A, B), with the joint Gram matrix the
    Hadamard product K_A o K_B (Yu et al.; the authors' `MI/DIB_MI.py`).

    Args:
        a, b: `[m, ...]` tensors; every sample is flattened to one row.
        alpha: order of the entropy (the authors: 1.01).
        sigma: `None` (default): the authors' kernels, whose widths come from each batch (`renyi_gram`). A number: the
            HSIC kernel `gaussian_gram(x, sigma)` instead, exp(-||x_i - x_j||^2 / (2 sigma^2 d)) (mimir_hf < 0.3 used
            it with sigma 5; on high-dimensional batches it gives a near-constant Gram matrix and an MI near 0).

    Returns: a float32 scalar on the inputs' device, differentiable in `a` and `b` (the widths are constants).
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"Renyi MI needs paired batches, got {a.shape[0]} and {b.shape[0]} samples.")
    with torch.autocast(device_type=a.device.type, enabled=False):
        rows_a, rows_b = _as_float32_rows(a, "a"), _as_float32_rows(b, "b")
        if sigma is None:
            gram_a, gram_b = renyi_gram(rows_a), renyi_gram(rows_b)
        else:
            gram_a, gram_b = gaussian_gram(rows_a, sigma), gaussian_gram(rows_b, sigma)
        return renyi_entropy(gram_a, alpha) + renyi_entropy(gram_b, alpha) - renyi_entropy(gram_a * gram_b, alpha)


def mutual_information(
    estimator: str,
    latent: torch.Tensor,
    inputs: torch.Tensor,
    sigma: float = DEFAULT_MI_SIGMA,
    alpha: float = DEFAULT_MI_ALPHA,
) -> torch.Tensor:
    """The MI penalty with the named estimator: `"hsic"`, HSIC(Z, inputs) with kernel width `sigma`; or `"renyi"`, the
    authors' Renyi MI I(inputs; Z) of order `alpha` with per-batch kernel widths (`sigma` unused). `latent` is Z; the
    MIMIR models pass the adversarial images X' as `inputs` for HSIC and the clean images X for Renyi, as the authors'
    `pretrain.py` does."""
    if estimator == "hsic":
        return hsic(latent, inputs, sigma=sigma)
    if estimator == "renyi":
        return renyi_mutual_information(inputs, latent, alpha=alpha)
    raise ValueError(f"Unknown MI estimator {estimator!r}; expected 'hsic' or 'renyi'.")


__all__ = [
    "DEFAULT_MI_ALPHA",
    "DEFAULT_MI_SIGMA",
    "DEFAULT_MI_WEIGHT",
    "gaussian_gram",
    "hsic",
    "mutual_information",
    "renyi_entropy",
    "renyi_gram",
    "renyi_mutual_information",
    "squared_distances",
]
