"""Analytic denoisers: exact testbeds for solvers, distillation and benchmarks (no network, no weights)."""

from __future__ import annotations

import math

import torch

from dode.core.types import Tensor


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _check_input(x: Tensor, sigma: Tensor, shape: tuple[int, ...]) -> Tensor:
    """sigma as a float64 (B,) vector for x of shape (B, *shape), or one ValueError saying what was given."""
    if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != tuple(shape):
        given = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"this analytic model's samples have shape {tuple(shape)}: x must be (B, {', '.join(map(str, shape))}), "
            f"got {given}; draw the noise with the model's shape (dode.models.Model.shape)"
        )
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
    if len(sigma) not in (1, len(x)):
        raise ValueError(f"sigma must hold one noise level or one per sample ({len(x)}), got {len(sigma)}")
    return sigma.expand(len(x))


class GaussianDenoiser:
    """Data x0 ~ N(mu, s^2 I): D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), exact.

    The probability-flow ODE then has the closed-form solution
    x(sigma_1) = mu + sqrt(s^2 + sigma_1^2) / sqrt(s^2 + sigma_0^2) (x(sigma_0) - mu).
    """

    def __init__(self, mu: Tensor, s: float) -> None:
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.s = float(s)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = _check_input(x, sigma, tuple(self.mu.shape))
        x = x.to(torch.float64)
        gain = self.s**2 / (self.s**2 + _bcast(sigma, x) ** 2)
        return self.mu + gain * (x - self.mu)

    def exact(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """The exact ODE flow of x from sigma_from to sigma_to."""
        _check_input(x, torch.zeros(1), tuple(self.mu.shape))
        ratio = math.sqrt(self.s**2 + sigma_to**2) / math.sqrt(self.s**2 + sigma_from**2)
        return self.mu + ratio * (x.to(torch.float64) - self.mu)


class MixtureDenoiser:
    """Data x0 ~ sum_j w_j N(mu_j, s_j^2 I): the closed-form posterior mean E[x0 | x0 + sigma n = x].

    D(x; sigma) = sum_j p(j | x) (mu_j + s_j^2 / (s_j^2 + sigma^2) (x - mu_j)),
    p(j | x) proportional to w_j N(x; mu_j, (s_j^2 + sigma^2) I).
    """

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(len(self.weights)).clone()
        if not (len(self.weights) == len(self.means) == len(self.stds)):
            raise ValueError("weights, means and stds need one entry per mixture component")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = _check_input(x, sigma, self.shape)
        x = x.to(torch.float64)
        flat, mu = x.reshape(len(x), -1), self.means.reshape(len(self.means), -1).to(x.device)
        var = self.stds.to(x.device) ** 2 + sigma[:, None] ** 2  # (B, K)
        dist2 = torch.cdist(flat, mu).square()  # (B, K)
        dim = flat.shape[1]
        logp = self.weights.to(x.device).log() - 0.5 * dist2 / var - 0.5 * dim * var.log()
        post = torch.softmax(logp, dim=1)  # (B, K)
        gain = self.stds.to(x.device) ** 2 / var  # (B, K)
        # sum_j p_j (mu_j + g_j (x - mu_j)) = (sum_j p_j g_j) x + sum_j p_j (1 - g_j) mu_j
        out = (post * gain).sum(1, keepdim=True) * flat + (post * (1 - gain)) @ mu
        return out.reshape(x.shape)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws from the mixture (for reference statistics)."""
        j = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        return self.means[j] + _bcast(self.stds[j], noise) * noise


def digits_mixture(std: float, per_class: bool = False) -> MixtureDenoiser:
    """A mixture over scikit-learn's bundled 8x8 digits in [-1, 1], shape (1, 8, 8).

    ``per_class=False``: one component at every one of the 1797 images (near-memorising for small
    ``std``); ``per_class=True``: ten components at the class means (smooth).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float64) / 8.0 - 1.0
    if per_class:
        labels = torch.tensor(digits.target)
        means = torch.stack([images[labels == c].mean(0) for c in range(10)])
        weights = torch.bincount(labels, minlength=10).to(torch.float64)
    else:
        means, weights = images, torch.ones(len(images), dtype=torch.float64)
    return MixtureDenoiser(weights / weights.sum(), means[:, None], torch.tensor(std, dtype=torch.float64))
