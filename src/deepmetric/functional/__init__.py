"""Pure tensor maths: similarities, loss terms, synthesis geometry (no state, no I/O)."""
from deepmetric.functional.similarity import cosine_similarity_matrix, l2_normalize

__all__ = ["cosine_similarity_matrix", "l2_normalize"]
