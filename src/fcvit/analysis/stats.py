"""Statistics of attention maps behind the paper's two observations (section 3.1.2, Fig. 1).

Observation 1: deep-layer attention is *query-irrelevant* (every query sees nearly the same map) and
even *head-irrelevant*. Observation 2: attention is *sparse* (few keys take most of the weight).
The definitions below are fixed so that numbers compare across tools; timm has no such statistics,
hence they are written here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

STAT_NAMES = ("query_irrelevance", "head_irrelevance", "entropy", "top1pct_mass")

_ROW_SUM_ATOL = 1e-3


def drop_prefix_tokens(attn: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Drop the first ``num_prefix_tokens`` (class, distillation, register tokens) from queries and keys.

    Each row is renormalised over the remaining keys so that it is a distribution over patches again.
    A row that gave all its weight to prefix tokens becomes all zeros.
    """
    if num_prefix_tokens == 0:
        return attn
    N, M = attn.shape[-2:]
    if num_prefix_tokens < 0 or num_prefix_tokens >= min(N, M):
        raise ValueError(
            f"cannot drop {num_prefix_tokens} prefix tokens from attention of shape {list(attn.shape)}: "
            f"it has {N} queries and {M} keys"
        )
    a = attn[..., num_prefix_tokens:, num_prefix_tokens:]
    mass = a.sum(dim=-1, keepdim=True)
    return a / mass.clamp_min(torch.finfo(a.dtype).tiny)


def _mean_pairwise_cosine(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean cosine similarity of the vectors (last axis) along ``dim`` over all pairs k != k'.

    Uses ``sum_{k != k'} u_k . u_k' = |sum_k u_k|^2 - sum_k |u_k|^2`` with unit vectors ``u``, so no
    K x K matrix is formed. A zero vector has cosine 0 with everything. NaN when there is no pair.
    """
    K = x.shape[dim]
    if K < 2:
        return torch.full(x.sum(dim).shape[:-1], math.nan, dtype=x.dtype)
    u = F.normalize(x, dim=-1)
    total = u.sum(dim).pow(2).sum(-1)
    self_terms = u.pow(2).sum(-1).sum(dim)
    return (total - self_terms) / (K * (K - 1))


def _check_attention(attn: torch.Tensor) -> None:
    if attn.ndim != 4:
        raise ValueError(
            f"attention must have shape [B, heads, queries, keys], got a tensor of shape {list(attn.shape)}"
        )
    if not attn.is_floating_point():
        raise ValueError(f"attention must be a floating-point tensor, got {attn.dtype}")
    if attn.numel() == 0:
        raise ValueError(f"attention of shape {list(attn.shape)} is empty")
    if attn.min() < 0:
        raise ValueError(f"attention weights must be non-negative, got a minimum of {attn.min().item():.3g}")
    sums = attn.sum(dim=-1)
    if (sums - 1).abs().max() > _ROW_SUM_ATOL:
        raise ValueError(
            f"attention rows must sum to 1 over the keys (softmax), got row sums in "
            f"[{sums.min().item():.4g}, {sums.max().item():.4g}] for a tensor of shape {list(attn.shape)}"
        )


@torch.no_grad()
def attention_stats(attn: torch.Tensor, num_prefix_tokens: int = 0) -> dict[str, float]:
    """The four statistics of attention maps ``attn`` [B, H, N, M] (rows sum to 1), averaged over the batch.

    - ``query_irrelevance``: per (b, h), the mean cosine similarity between rows i and j over all pairs
      i != j; then the mean over b, h (1: every query sees the same map). NaN when N = 1.
    - ``head_irrelevance``: per (b, i), the mean cosine similarity between heads h and h' over all pairs
      h != h'; then the mean over b, i. NaN when H = 1 (no pair of heads).
    - ``entropy``: per row, ``-sum a log a / log M`` (0 log 0 = 0); the mean over rows (1: uniform,
      lower: sparser). NaN when M = 1.
    - ``top1pct_mass``: per row, the sum of its ``k = max(1, ceil(0.01 M))`` largest weights; the mean over rows.

    A single key (M = 1, e.g. a 1x1 map) leaves every weight at 1 and nothing to measure: all four are NaN
    there (shown as "-" in tables, left out of plots, ``null`` in JSON), not the 1.0 the formulas would give.

    Args:
        attn: attention weights [B, H, N, M], non-negative, each row summing to 1 (within 1e-3).
        num_prefix_tokens: leading class/distillation/register tokens to drop from queries and keys first
            (the key axis is renormalised, see :func:`drop_prefix_tokens`).
    """
    _check_attention(attn)
    a = drop_prefix_tokens(attn.double(), num_prefix_tokens)
    M = a.shape[-1]
    if M == 1:
        return dict.fromkeys(STAT_NAMES, math.nan)
    entropy = -torch.special.xlogy(a, a).sum(-1) / math.log(M)
    k = max(1, math.ceil(0.01 * M))
    return {
        "query_irrelevance": _mean_pairwise_cosine(a, dim=2).mean().item(),
        "head_irrelevance": _mean_pairwise_cosine(a, dim=1).mean().item(),
        "entropy": entropy.mean().item(),
        "top1pct_mass": a.topk(k, dim=-1).values.sum(-1).mean().item(),
    }
