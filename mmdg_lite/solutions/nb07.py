"""Solutions for notebooks/07_stable_diffusion.ipynb (exercises 07.1 and 07.2)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["prompt_shares", "conditional_gradient"]


def prompt_shares(sample_features: Tensor, reference_features: Tensor, prompt_bandwidth: float) -> Tensor:
    """For every sample, the share of the batch and the share of the references near its prompt
    under the Gaussian prompt kernel on L2-normalised features: (n, 2) with columns
    (1/B) sum_k k_p(p_i, p_k) and (1/N_r) sum_j k_p(p_i, p_j^r). Eq. 11 scales sample i's push
    by the first and its pull by the second."""
    u = sample_features / sample_features.norm(dim=1, keepdim=True)  # (B, P)
    v = reference_features / reference_features.norm(dim=1, keepdim=True)  # (N_r, P)
    k_batch = torch.exp(-torch.cdist(u, u) ** 2 / (2 * prompt_bandwidth**2))  # (B, B)
    k_refs = torch.exp(-torch.cdist(u, v) ** 2 / (2 * prompt_bandwidth**2))  # (B, N_r)
    return torch.stack([k_batch.mean(1), k_refs.mean(1)], dim=1)


def conditional_gradient(x: Tensor, y: Tensor, x_prompts: Tensor, y_prompts: Tensor, sigma_z: float,
                         sigma_p: float) -> Tensor:
    """The conditional prompt-weighted MMD^2 gradient (notebook 04, Sec. 6) for a Gaussian k_z
    (bandwidth sigma_z) and a Gaussian k_p (sigma_p) on L2-normalised prompts, (B, D):
    grad_i = (2 rho_i / B) [sum_k a_ik grad k_z(z_i, z_k) - sum_j b_ij grad k_z(z_i, y_j)],
    a and b the prompt kernels normalised over each row, rho_i = max_j k_p(p_i, p_j^r)."""
    def prompt_k(a: Tensor, b: Tensor) -> Tensor:  # (n, m)
        a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
        return torch.exp(-torch.cdist(a, b) ** 2 / (2 * sigma_p**2))

    def weighted_grad(a: Tensor, b: Tensor, w: Tensor) -> Tensor:  # sum_j w_ij grad_1 k_z(a_i, b_j)
        diff = b[None, :, :] - a[:, None, :]  # (n, m, D)
        k = torch.exp(-(diff**2).sum(-1) / (2 * sigma_z**2))  # (n, m)
        return ((w * k)[..., None] * diff).sum(1) / sigma_z**2

    kxx, kxy = prompt_k(x_prompts, x_prompts), prompt_k(x_prompts, y_prompts)  # (B, B), (B, N_r)
    a = kxx / kxx.sum(1, keepdim=True)
    b = kxy / kxy.sum(1, keepdim=True)
    rho = kxy.max(1).values[:, None]  # (B, 1)
    return 2 * rho / len(x) * (weighted_grad(x, x, a) - weighted_grad(x, y, b))
