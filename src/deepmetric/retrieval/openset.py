"""Open-set decisions: a similarity threshold that says "match" or "no match", chosen for an error rate.

A search over a gallery always returns neighbours, even for a query of a class the gallery does not hold.
Deciding "match" needs a threshold t on the cosine similarity: a pair (query, item) is declared a match
when s ≥ t. On a labelled split whose classes the model never trained on (the class-disjoint validation
split), every pair of items is either *genuine* (same class) or *impostor* (different classes), and

* FMR(t)  = #{impostor pairs with s ≥ t} / #impostor pairs   (false match rate)
* FNMR(t) = #{genuine pairs with s < t} / #genuine pairs     (false non-match rate)
* precision(t) = #{genuine, s ≥ t} / #{all pairs with s ≥ t}  (depends on the share of genuine pairs)

(ISO/IEC 19795-1 definitions; every unordered pair {i, j}, i ≠ j, counts once.) ``FNMR@FMR=x`` is the
FNMR at the smallest threshold whose FMR is at most x — the usual operating point of verification systems.
Ties cannot bias the choice: a threshold splits equal scores together.

:func:`pair_scores` collects the scores with bounded memory (blocked products over the upper triangle);
impostor pairs beyond ``max_impostor_pairs`` are subsampled uniformly with an explicit seed and the
sampling is reported, so a large split is still exact for the genuine side and unbiased for the other.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from deepmetric.functional.similarity import l2_normalize
from deepmetric.retrieval.knn import as_float32_matrix

__all__ = ["PairScores", "Threshold", "pair_scores", "roc_curve", "fnmr_at_fmr", "threshold_at_fmr",
           "threshold_at_precision", "plot_roc", "DEFAULT_FMRS"]

#: FMR operating points reported by evaluation
DEFAULT_FMRS = (1e-1, 1e-2, 1e-3)


@dataclass
class PairScores:
    """Similarity of every genuine pair and of (a uniform sample of) the impostor pairs.

    Attributes:
        genuine: float32 (G,) scores of the same-class pairs (all of them).
        impostor: float32 (I,) scores of the different-class pairs (all, or a uniform sample).
        impostor_total: number of impostor pairs in the split (I when nothing was sampled).
    """

    genuine: np.ndarray
    impostor: np.ndarray
    impostor_total: int

    @property
    def sampled(self) -> bool:
        return self.impostor.size < self.impostor_total


def pair_scores(embeddings: Any, labels: Any, *, max_impostor_pairs: int = 20_000_000, seed: int = 0,
                block_size: int = 2048) -> PairScores:
    """Cosine similarity of every unordered pair {i, j}, i < j, split into genuine and impostor pairs.

    Args:
        embeddings: (n, d) numpy or torch; L2-normalised here.
        labels: (n,) integer class ids.
        max_impostor_pairs: keep at most about this many impostor scores (80 MB at the default): when the
            split has more, each impostor pair is kept independently with probability max/total, drawn
            from a private generator seeded with ``seed``.
        seed: seed of that generator.
        block_size: rows per block of the product (memory ≈ block_size² floats).

    Raises:
        ValueError: fewer than two items, or no genuine or no impostor pair (one class / all singletons).
    """
    x = l2_normalize(as_float32_matrix(embeddings, "embeddings"))
    y = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)).long()
    n = x.shape[0]
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), one per embedding row; got {tuple(y.shape)}")
    counts = torch.bincount(torch.unique(y, return_inverse=True)[1]).long()
    n_gen = int((counts * (counts - 1) // 2).sum())
    n_imp = n * (n - 1) // 2 - n_gen
    if n_gen == 0 or n_imp == 0:
        raise ValueError(f"calibration needs pairs of the same class and of different classes; the {n} items give "
                         f"{n_gen} genuine and {n_imp} impostor pairs: use a split with several classes of >= 2 items")
    keep_p = min(1.0, max_impostor_pairs / n_imp)
    gen = torch.Generator().manual_seed(seed)
    genuine, impostor = [], []
    for a in range(0, n, block_size):
        for b in range(a, n, block_size):
            s = x[a : a + block_size] @ x[b : b + block_size].t()
            upper = torch.ones_like(s, dtype=torch.bool)
            if a == b:
                upper = torch.triu(upper, diagonal=1)
            same = y[a : a + block_size, None] == y[None, b : b + block_size]
            genuine.append(s[upper & same])
            imp = s[upper & ~same]
            if keep_p < 1.0:
                imp = imp[torch.rand(imp.numel(), generator=gen) < keep_p]
            impostor.append(imp)
    return PairScores(torch.cat(genuine).numpy(), torch.cat(impostor).numpy(), n_imp)


def _rates_at(scores: PairScores, t: float) -> tuple[float, float]:
    fmr = float((scores.impostor >= t).mean())
    fnmr = float((scores.genuine < t).mean())
    return fmr, fnmr


@dataclass
class Threshold:
    """A calibrated decision rule "match iff cosine similarity ≥ value", with its measured error rates.

    Attributes:
        value: the threshold t (a float32 value).
        criterion: "fmr" or "precision"; target: the asked-for FMR (at most) or precision (at least).
        fmr / fnmr / precision: measured at t on the calibration pairs.
        genuine_pairs / impostor_pairs: pairs the rates were measured on (impostor: total, sampled or not).
        split: name of the calibration split (filled in by the caller).
    """

    value: float
    criterion: str
    target: float
    fmr: float
    fnmr: float
    precision: float
    genuine_pairs: int
    impostor_pairs: int
    split: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Threshold":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _make(scores: PairScores, t: float, criterion: str, target: float) -> Threshold:
    fmr, fnmr = _rates_at(scores, t)
    # precision with the impostor side re-weighted to its true count when it was sampled
    tp = (scores.genuine >= t).sum()
    fp = fmr * scores.impostor_total
    precision = float(tp / (tp + fp)) if tp + fp > 0 else 1.0
    return Threshold(float(t), criterion, float(target), fmr, fnmr, precision, int(scores.genuine.size), int(scores.impostor_total))


def threshold_at_fmr(scores: PairScores, target_fmr: float) -> Threshold:
    """The smallest threshold whose FMR is at most ``target_fmr`` (so the FNMR is as low as it can be).

    With impostor scores sorted descending s₁ ≥ s₂ ≥ …, at most a = ⌊target·I⌋ of them may reach t, so t is
    the next float32 above s_{a+1}: any t in (s_{a+1}, s_a] gives the same FMR, and the smallest has the
    lowest FNMR. Ties at s_{a+1} = s_a all fall below t (the FMR may then be under the target).
    """
    if not (isinstance(target_fmr, (int, float)) and 0 < target_fmr < 1):
        raise ValueError(f"target FMR must be in (0, 1), e.g. 1e-3; got {target_fmr!r}")
    imp = np.sort(scores.impostor)[::-1]
    allowed = int(math.floor(target_fmr * imp.size + 1e-9))
    if allowed >= imp.size:
        t = float(min(imp.min(), scores.genuine.min()))
    else:
        t = float(np.nextafter(np.float32(imp[allowed]), np.float32(np.inf)))
    return _make(scores, t, "fmr", target_fmr)


def threshold_at_precision(scores: PairScores, target_precision: float) -> Threshold:
    """The smallest threshold (most matches) at which the precision of the declared matches is at least
    ``target_precision``; candidates are the observed scores.

    Raises:
        ValueError: no threshold reaches the target (the message gives the best precision reachable).
    """
    if not (isinstance(target_precision, (int, float)) and 0 < target_precision <= 1):
        raise ValueError(f"target precision must be in (0, 1], e.g. 0.99; got {target_precision!r}")
    weight = scores.impostor_total / max(scores.impostor.size, 1)  # undo the impostor sampling
    vals = np.concatenate([scores.genuine, scores.impostor])
    is_gen = np.concatenate([np.ones(scores.genuine.size), np.zeros(scores.impostor.size)])
    order = np.argsort(-vals, kind="stable")
    vals, is_gen = vals[order], is_gen[order]
    tp = np.cumsum(is_gen)
    fp = np.cumsum(1 - is_gen) * weight
    last_of_value = np.r_[vals[1:] != vals[:-1], True]  # thresholds sit at the end of each tie group
    prec = tp / np.maximum(tp + fp, 1e-300)
    ok = last_of_value & (prec >= target_precision - 1e-12)
    if not ok.any():
        best = float(prec[last_of_value].max())
        raise ValueError(f"no threshold reaches precision {target_precision}; the best on this split is {best:.4f}. "
                         "Lower the target or calibrate by FMR (--fmr)")
    return _make(scores, float(vals[np.nonzero(ok)[0][-1]]), "precision", target_precision)


def roc_curve(scores: PairScores) -> Dict[str, np.ndarray]:
    """FMR and FNMR at every distinct observed score used as threshold (descending thresholds).

    Returns:
        ``{"threshold", "fmr", "fnmr"}`` float64 arrays of equal length.
    """
    vals = np.concatenate([scores.genuine, scores.impostor])
    is_gen = np.concatenate([np.ones(scores.genuine.size), np.zeros(scores.impostor.size)])
    order = np.argsort(-vals, kind="stable")
    vals, is_gen = vals[order], is_gen[order]
    last = np.r_[vals[1:] != vals[:-1], True]
    tp, fp = np.cumsum(is_gen)[last], np.cumsum(1 - is_gen)[last]
    return {"threshold": vals[last].astype(np.float64), "fmr": fp / max(scores.impostor.size, 1),
            "fnmr": 1.0 - tp / scores.genuine.size}


def fnmr_at_fmr(scores: PairScores, fmrs: Sequence[float] = DEFAULT_FMRS) -> Dict[str, float]:
    """``{"fnmr@fmr=x": FNMR at the threshold of :func:`threshold_at_fmr` (x)}`` for each x."""
    return {f"fnmr@fmr={x:g}": threshold_at_fmr(scores, x).fnmr for x in fmrs}


def plot_roc(scores: PairScores, path: str | Path, *, marked: Optional[Threshold] = None, title: str = "ROC") -> Path:
    """Write the ROC (FMR on a log axis against 1 − FNMR) as a PNG, the chosen threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roc = roc_curve(scores)
    floor = 0.5 / max(scores.impostor.size, 1)  # FMR 0 drawn at half the smallest measurable rate
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.plot(np.maximum(roc["fmr"], floor), 1 - roc["fnmr"], lw=1.5)
    if marked is not None:
        ax.plot([max(marked.fmr, floor)], [1 - marked.fnmr], "o", color="C3",
                label=f"t = {marked.value:.4f}: FMR {marked.fmr:.2g}, FNMR {marked.fnmr:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("false match rate (FMR)")
    ax.set_ylabel("true match rate (1 − FNMR)")
    ax.set_title(title + (" (impostor pairs sampled)" if scores.sampled else ""), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
