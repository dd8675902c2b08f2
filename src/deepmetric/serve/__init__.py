"""deepmetric.serve: gallery indexes from checkpoints, an HTTP search service with a web page, run reports."""
from deepmetric.serve.app import create_app
from deepmetric.serve.indexing import IndexSearcher, build_index_from_checkpoint, search_images
from deepmetric.serve.report import write_report

__all__ = ["IndexSearcher", "build_index_from_checkpoint", "create_app", "search_images", "write_report"]
