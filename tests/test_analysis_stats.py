"""attention_stats on constructed attention maps whose statistics are known exactly."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from fcvit.analysis.stats import STAT_NAMES, attention_stats, drop_prefix_tokens


def random_attention(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(*shape, generator=g)).softmax(-1)


def brute_force(attn: torch.Tensor) -> dict[str, float]:
    """The definitions of the issue, pair by pair with torch's cosine similarity."""
    B, H, N, M = attn.shape
    qi = [
        F.cosine_similarity(attn[b, h, i], attn[b, h, j], dim=0)
        for b, h in itertools.product(range(B), range(H))
        for i, j in itertools.permutations(range(N), 2)
    ]
    hi = [
        F.cosine_similarity(attn[b, h, i], attn[b, g, i], dim=0)
        for b, i in itertools.product(range(B), range(N))
        for h, g in itertools.permutations(range(H), 2)
    ]
    rows = attn.reshape(-1, M)
    entropy = [-sum(a * math.log(a) for a in row.tolist() if a > 0) / math.log(M) for row in rows]
    k = max(1, math.ceil(0.01 * M))
    top = [sum(sorted(row.tolist(), reverse=True)[:k]) for row in rows]
    mean = lambda v: float(sum(v) / len(v))  # noqa: E731
    return dict(query_irrelevance=mean(qi), head_irrelevance=mean(hi), entropy=mean(entropy), top1pct_mass=mean(top))


def test_returns_exactly_the_four_statistics():
    assert tuple(attention_stats(random_attention(1, 2, 3, 4))) == STAT_NAMES


def test_uniform_rows():
    stats = attention_stats(torch.full((2, 3, 5, 250), 1 / 250))
    assert stats["query_irrelevance"] == pytest.approx(1)
    assert stats["head_irrelevance"] == pytest.approx(1)
    assert stats["entropy"] == pytest.approx(1)
    assert stats["top1pct_mass"] == pytest.approx(3 / 250)  # k = ceil(2.5) = 3 weights of 1/250


def test_distinct_one_hot_rows():
    attn = torch.eye(7).expand(2, 3, 7, 7)
    stats = attention_stats(attn)
    assert stats["query_irrelevance"] == pytest.approx(0)
    assert stats["entropy"] == pytest.approx(0)
    assert stats["top1pct_mass"] == pytest.approx(1)
    assert stats["head_irrelevance"] == pytest.approx(1)  # every head is the same identity


def test_identical_heads():
    attn = random_attention(2, 1, 6, 9).expand(2, 4, 6, 9)
    stats = attention_stats(attn)
    assert stats["head_irrelevance"] == pytest.approx(1)
    assert stats["query_irrelevance"] < 0.99


def test_hand_computed_case():
    # head 0 rows [1, 0], [.5, .5]; head 1 rows [0, 1], [.5, .5]
    attn = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]]])
    stats = attention_stats(attn)
    # cos([1,0],[.5,.5]) = cos([0,1],[.5,.5]) = 1/sqrt(2)
    assert stats["query_irrelevance"] == pytest.approx(1 / math.sqrt(2))
    # query 0: cos([1,0],[0,1]) = 0; query 1: identical rows, 1
    assert stats["head_irrelevance"] == pytest.approx(0.5)
    # entropies 0, 1, 0, 1; top-1 weights 1, .5, 1, .5 (k = 1)
    assert stats["entropy"] == pytest.approx(0.5)
    assert stats["top1pct_mass"] == pytest.approx(0.75)


def test_matches_pairwise_definition_on_random_attention():
    attn = random_attention(2, 3, 5, 120)  # k = 2
    stats, reference = attention_stats(attn), brute_force(attn.double())
    for name in STAT_NAMES:
        assert stats[name] == pytest.approx(reference[name], rel=1e-9), name


def test_batch_mean():
    a, b = random_attention(1, 2, 4, 6, seed=1), random_attention(1, 2, 4, 6, seed=2)
    both, sa, sb = attention_stats(torch.cat([a, b])), attention_stats(a), attention_stats(b)
    for name in STAT_NAMES:
        assert both[name] == pytest.approx((sa[name] + sb[name]) / 2)


def test_single_head_and_single_query_are_undefined():
    one_head = attention_stats(random_attention(2, 1, 4, 6))
    assert math.isnan(one_head["head_irrelevance"]) and not math.isnan(one_head["query_irrelevance"])
    one_query = attention_stats(random_attention(2, 3, 1, 6))
    assert math.isnan(one_query["query_irrelevance"]) and not math.isnan(one_query["head_irrelevance"])
    one_key = attention_stats(torch.ones(1, 2, 3, 1))  # one position (a 1x1 map): nothing to measure
    assert all(math.isnan(one_key[name]) for name in STAT_NAMES)


def test_class_token_is_dropped_and_keys_renormalised():
    # half of every row goes to the class token, the other half is uniform over 16 patches
    attn = torch.full((1, 2, 17, 17), 0.5 / 16)
    attn[..., 0] = 0.5
    patches = drop_prefix_tokens(attn, 1)
    assert patches.shape == (1, 2, 16, 16)
    torch.testing.assert_close(patches, torch.full((1, 2, 16, 16), 1 / 16))
    assert attention_stats(attn, num_prefix_tokens=1)["entropy"] == pytest.approx(1)
    assert attention_stats(attn)["entropy"] < 0.9  # the class token left in makes the rows peaked


def test_distillation_and_register_tokens():
    attn = random_attention(1, 2, 12, 12)
    expected = attn[..., 3:, 3:] / attn[..., 3:, 3:].sum(-1, keepdim=True)
    torch.testing.assert_close(drop_prefix_tokens(attn, 3), expected)
    assert attention_stats(attn, 3) == pytest.approx(attention_stats(expected))
    with pytest.raises(ValueError, match="prefix tokens"):
        drop_prefix_tokens(attn, 12)


@pytest.mark.parametrize(
    "attn, message",
    [
        (torch.full((2, 4, 4), 0.25), "shape"),
        (torch.full((1, 1, 4, 4), 0.3), "sum to 1"),
        (torch.tensor([[[[1.5, -0.5]]]]), "non-negative"),
        (torch.ones(1, 1, 1, 1, dtype=torch.long), "floating"),
    ],
)
def test_bad_attention_is_refused(attn, message):
    with pytest.raises(ValueError, match=message):
        attention_stats(attn)
