"""Intra-class ranking over synthetic intensities (Liu et al., EAAI 2024; SPEC.md §5), as pure functions.

Liu, Liu, Lang, Liu, Zhou, Li, "Deep Metric Learning Assisted by Intra-variance in A Semi-supervised View
of Learning", Engineering Applications of Artificial Intelligence 131 (2024), arXiv 2304.10941, building
on Fu et al., "Deep Metric Learning with Self-Supervised Ranking", AAAI 2021. The paper text is not
available: the two terms below are SPEC §5's description, their exact form is the project's **[choice]**.
"""
from __future__ import annotations

import torch

from deepmetric.functional.similarity import l2_normalize

__all__ = ["intensity_ranking_hinge", "source_closeness_hinge", "intra_ranking_loss"]


def intensity_ranking_hinge(similarity: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge on consecutive intensities: [m − (s(r, r^j) − s(r, r^{j+1}))]_+ for j = 1..J−1.

    Args:
        similarity: (m, J) s(r_i, r_i^j), column j−1 = intensity j.
        margin: m >= 0, the required drop of similarity from one intensity to the next.

    Returns:
        (m, J − 1) hinge values (zero where s_j >= s_{j+1} + margin).
    """
    return torch.relu(margin - (similarity[:, :-1] - similarity[:, 1:]))


def source_closeness_hinge(
    synthetic: torch.Tensor,
    sources: torch.Tensor,
    source_labels: torch.Tensor,
    references: torch.Tensor,
    reference_labels: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """Keep each synthetic point closer to its source than to any other class.

    [max_{k: y_k ≠ y_i} s(r_i^j, c_k) − s(r_i^j, r_i) + margin]_+ with c_k the references (proxies or class
    centres) of the other classes. Items whose class is the only reference class get 0.

    Args:
        synthetic: (m, J, d) unit synthetic points.
        sources: (m, d) unit sources.
        source_labels: (m,).
        references: (K, d) unit references.
        reference_labels: (K,).
        margin: >= 0.

    Returns:
        (m, J) hinge values; ``valid`` rows are those with another class among the references.
    """
    to_source = (synthetic * sources[:, None, :]).sum(dim=-1)  # (m, J)
    to_refs = torch.einsum("mjd,kd->mjk", synthetic, references)
    other = source_labels[:, None] != reference_labels[None, :]  # (m, K)
    hardest = to_refs.masked_fill(~other[:, None, :], float("-inf")).amax(dim=-1)
    has_other = other.any(dim=1)[:, None]
    # No other class: nothing to stay away from (where() keeps the -inf branch out of the gradient).
    return torch.where(has_other, torch.relu(torch.where(has_other, hardest, to_source) - to_source + margin), torch.zeros_like(to_source))


def intra_ranking_loss(
    sources: torch.Tensor,
    synthetic: torch.Tensor,
    source_labels: torch.Tensor,
    references: torch.Tensor,
    reference_labels: torch.Tensor,
    *,
    margin: float = 0.05,
    class_margin: float = 0.1,
) -> torch.Tensor:
    """Intra-class ranking loss (SPEC §5): order the intensities, keep them near their source.

    With cosine similarities s, r_i the sources, r_i^j their synthetic points at intensity j = 1..J and
    c_k the references::

        L = mean_{i, j<J} [m − (s(r_i, r_i^j) − s(r_i, r_i^{j+1}))]_+
          + mean_{i, j} [max_{k: y_k ≠ y_i} s(r_i^j, c_k) − s(r_i^j, r_i) + m_c]_+

    (the second mean over the items that have another class among the references). Inputs are
    L2-normalised here. No sources → a zero still attached to the graph.

    Args:
        sources: (m, d) r_i.
        synthetic: (m, J, d) r_i^j, column j−1 = intensity j.
        source_labels: (m,) y_i.
        references: (K, d) proxies or class centres.
        reference_labels: (K,) their classes.
        margin: m, the required similarity drop per intensity step.
        class_margin: m_c, how much closer to the source than to another class.

    Returns:
        Scalar.
    """
    if synthetic.ndim != 3 or sources.ndim != 2 or synthetic.shape[0] != sources.shape[0] or synthetic.shape[2] != sources.shape[1]:
        raise ValueError(f"expected sources (m, d) and synthetic (m, J, d), got {tuple(sources.shape)} and {tuple(synthetic.shape)}")
    zero = (sources.sum() + synthetic.sum() + references.sum()) * 0.0
    if sources.shape[0] == 0 or synthetic.shape[1] == 0:
        return zero
    r = l2_normalize(sources)
    rj = l2_normalize(synthetic)
    c = l2_normalize(references)
    sim = (rj * r[:, None, :]).sum(dim=-1)
    total = zero
    if sim.shape[1] > 1:
        total = total + intensity_ranking_hinge(sim, margin).mean()
    other = (source_labels[:, None] != reference_labels[None, :]).any(dim=1)
    if bool(other.any()):
        total = total + source_closeness_hinge(rj, r, source_labels, c, reference_labels, class_margin)[other].mean()
    return total
