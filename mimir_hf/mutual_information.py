"""Mutual-information estimators for MIMIR's I(X'; Z) penalty: normalised HSIC and matrix Renyi alpha-entropy MI.

Both work on a batch of `m` samples, each flattened to one row, and are computed on the tensors' own device in float32
(autocast off), so they stay finite under mixed precision.
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


def _renyi_entropy(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """S_alpha(A) = log2(sum_i lambda_i(A)^alpha) / (1 - alpha), with A the trace-normalised Gram matrix."""
    normalised = gram / torch.diagonal(gram).sum()
    eigenvalues = torch.linalg.eigvalsh(normalised).clamp_min(0.0)
    return torch.log2(eigenvalues.pow(alpha).sum()) / (1.0 - alpha)


def renyi_mutual_information(
    a: torch.Tensor, b: torch.Tensor, sigma: float = DEFAULT_MI_SIGMA, alpha: float = DEFAULT_MI_ALPHA
) -> torch.Tensor:
    """Matrix-based Renyi alpha-entropy MI, I = S(A) + S(B) - S(A o B), with o the Hadamard product (joint)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"Renyi MI needs paired batches, got {a.shape[0]} and {b.shape[0]} samples.")
    with torch.autocast(device_type=a.device.type, enabled=False):
        gram_a = gaussian_gram(_as_float32_rows(a, "a"), sigma)
        gram_b = gaussian_gram(_as_float32_rows(b, "b"), sigma)
        return _renyi_entropy(gram_a, alpha) + _renyi_entropy(gram_b, alpha) - _renyi_entropy(gram_a * gram_b, alpha)


def mutual_information(
    estimator: str,
    latent: torch.Tensor,
    inputs: torch.Tensor,
    sigma: float = DEFAULT_MI_SIGMA,
    alpha: float = DEFAULT_MI_ALPHA,
) -> torch.Tensor:
    """I(X'; Z) with the named estimator (`"hsic"` or `"renyi"`); `latent` is Z, `inputs` is X'."""
    if estimator == "hsic":
        return hsic(latent, inputs, sigma=sigma)
    if estimator == "renyi":
        return renyi_mutual_information(latent, inputs, sigma=sigma, alpha=alpha)
    raise ValueError(f"Unknown MI estimator {estimator!r}; expected 'hsic' or 'renyi'.")


__all__ = [
    "DEFAULT_MI_ALPHA",
    "DEFAULT_MI_SIGMA",
    "DEFAULT_MI_WEIGHT",
    "gaussian_gram",
    "hsic",
    "mutual_information",
    "renyi_mutual_information",
]
