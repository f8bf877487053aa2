"""The two RankMixup ranking losses: MRL and M-NDCG. Pure tensor code.

References:
    Noh et al., "RankMixup: Ranking-Based Mixup Training for Network Calibration", ICCV 2023,
    arXiv 2308.11990.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def mrl_loss(
    raw_logits: Tensor,
    mixed_logits: Tensor,
    valid: Tensor,
    margin: float,
    mask: Literal["faithful", "per_sample"] = "faithful",
) -> Tensor:
    """Mixup ranking loss: a raw sample's max logit should beat its mixed version's by ``margin``.

    The hinge ``max(0, s̃_i − s_i + m)`` is computed on max *logits* (not probabilities) and
    nothing is detached, so the raw score is pushed up and the mixed one down.

    Args:
        raw_logits: Logits of the raw batch, (B, K).
        mixed_logits: Logits of the mixed copies, copy-major, (N·B, K); N = 1 is the official
            setting, N > 1 averages the hinge over copies (our extension).
        valid: Bool (N·B,) or (B,) for N = 1: the pair's mixed label is not one-hot.
        margin: Margin in logit units.
        mask: ``faithful`` reproduces the official code, whose (B,) mask and (B, 1) hinge
            broadcast to B×B, so the loss is ``mean(mask) · mean(hinge)``: the mask only rescales
            by the share of valid pairs. ``per_sample`` masks each pair and averages over the
            valid ones (0 when there are none).

    Returns:
        Scalar loss.

    References:
        Noh et al., ICCV 2023 (arXiv 2308.11990), Eq. 4.
    """
    copies = mixed_logits.shape[0] // raw_logits.shape[0]
    raw_score = raw_logits.max(dim=1).values.repeat(copies)
    mixed_score = mixed_logits.max(dim=1).values
    hinge = torch.clamp(mixed_score - raw_score + margin, min=0.0)
    weights = valid.to(hinge.dtype)
    if mask == "faithful":
        return weights.mean() * hinge.mean()
    return (weights * hinge).sum() / weights.sum().clamp(min=1.0)


def mndcg_loss(raw_logits: Tensor, mixed_logits: Tensor, relevance: Tensor) -> Tensor:
    """M-NDCG loss: confidences of a raw sample and its N mixed copies, ranked by relevance.

    For each raw sample the list holds the raw item (relevance 1) and its N mixed copies
    (relevance = max of the mixed label), all scored by max-softmax confidence. Mixed items are
    sorted by relevance, descending, after the raw one; the discount of rank j (1-based) is
    ``log2(j + 1)``. ``NDCG = DCG/IDCG`` when ``IDCG > DCG``, else ``IDCG/DCG``, so over- and
    under-confidence are both penalised; the loss is ``mean(1 − NDCG)``.

    Args:
        raw_logits: (B, K).
        mixed_logits: (N·B, K), copy-major.
        relevance: (N, B) relevances of the mixed copies.

    Returns:
        Scalar loss.

    References:
        Noh et al., ICCV 2023 (arXiv 2308.11990), Eqs. 5-8.
    """
    batch = raw_logits.shape[0]
    copies = relevance.shape[0]
    raw_conf = raw_logits.softmax(dim=1).max(dim=1).values
    mixed_conf = mixed_logits.softmax(dim=1).max(dim=1).values.view(copies, batch)
    order = torch.argsort(relevance, dim=0, descending=True, stable=True)
    conf = torch.cat([raw_conf[None], mixed_conf.gather(0, order)])
    rel = torch.cat([torch.ones_like(raw_conf)[None], relevance.gather(0, order)])
    ranks = torch.arange(1, copies + 2, dtype=conf.dtype, device=conf.device)
    discount = torch.log2(ranks + 1.0)[:, None]
    dcg = (conf / discount).sum(dim=0)
    idcg = (rel.to(conf.dtype) / discount).sum(dim=0)
    ndcg = torch.where(idcg > dcg, dcg / idcg, idcg / dcg)
    return (1.0 - ndcg).mean()
