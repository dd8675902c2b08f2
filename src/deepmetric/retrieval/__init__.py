"""Retrieval evaluation: exact blocked kNN, retrieval/clustering metrics, embedding a dataset.

``embed → topk_search → retrieval_metrics`` (SPEC.md §7); ``knn_accuracy`` is the weighted kNN
classifier of SPEC.md §1. Pure functions, bounded memory; depends only on torch/numpy/faiss/sklearn and
``deepmetric.functional``.
"""
from deepmetric.retrieval.evaluate import embed, evaluate_retrieval
from deepmetric.retrieval.knn import topk_search
from deepmetric.retrieval.metrics import knn_accuracy, nmi_score, retrieval_metrics
from deepmetric.retrieval.openset import fnmr_at_fmr, pair_scores, threshold_at_fmr, threshold_at_precision
from deepmetric.retrieval.topk_metrics import topk_metrics

__all__ = ["embed", "evaluate_retrieval", "fnmr_at_fmr", "knn_accuracy", "nmi_score", "pair_scores", "retrieval_metrics",
           "threshold_at_fmr", "threshold_at_precision", "topk_metrics", "topk_search"]
