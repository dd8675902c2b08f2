"""Pure tensor maths: similarities, loss terms, synthesis geometry (no state, no I/O)."""
from deepmetric.functional.geometry import (
    chord_points,
    class_centres,
    max_mahalanobis_centers,
    max_pairwise_cosine,
    reflect,
    spherical_expansion_points,
)
from deepmetric.functional.instance import category_softmax_loss, instance_softmax_loss, rotate_on_sphere, slerp
from deepmetric.functional.ranking import intra_ranking_loss
from deepmetric.functional.similarity import cosine_similarity_matrix, l2_normalize

__all__ = [
    "category_softmax_loss",
    "chord_points",
    "class_centres",
    "cosine_similarity_matrix",
    "instance_softmax_loss",
    "intra_ranking_loss",
    "l2_normalize",
    "max_mahalanobis_centers",
    "max_pairwise_cosine",
    "reflect",
    "rotate_on_sphere",
    "slerp",
    "spherical_expansion_points",
]
