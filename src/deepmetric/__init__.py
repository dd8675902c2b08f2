"""deepmetric: deep metric learning — instance-wise softmax embedding, spherical embedding expansion,
intra-variance ranking, with training, evaluation and retrieval serving around them."""

__version__ = "0.1.0"
