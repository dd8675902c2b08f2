"""Retrieval evaluation: exact blocked kNN, retrieval/clustering metrics, embedding a dataset.

``embed → topk_search → retrieval_metrics`` (SPEC.md §7); ``knn_accuracy`` is the weighted kNN
classifier of SPEC.md §1. Pure functions, bounded memory; depends only on torch/numpy/faiss/sklearn and
``deepmetric.functional``.
"""
from deepmetric.retrieval.evaluate import embed, evaluate_retrieval
from deepmetric.retrieval.knn import topk_search
from deepmetric.retrieval.metrics import knn_accuracy, nmi_score, retrieval_metrics

__all__ = ["embed", "evaluate_retrieval", "knn_accuracy", "nmi_score", "retrieval_metrics", "topk_search"]
