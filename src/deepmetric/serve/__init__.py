"""deepmetric.serve: gallery indexes from checkpoints, and an HTTP search service with a web page over them."""
from deepmetric.serve.app import create_app
from deepmetric.serve.indexing import IndexSearcher, build_index_from_checkpoint, search_images

__all__ = ["IndexSearcher", "build_index_from_checkpoint", "create_app", "search_images"]
