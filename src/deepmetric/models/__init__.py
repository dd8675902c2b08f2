"""deepmetric.models

Every module of this sub-package is imported here so that its registry entries exist.
"""
import importlib as _importlib
import pkgutil as _pkgutil

for _m in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_m.name}")


from deepmetric.models.backbones import Backbone, GlobalPool, build_backbone  # noqa: E402
from deepmetric.models.embedding import EmbeddingHead, EmbeddingModel, build_model, model_signature  # noqa: E402
from deepmetric.models.pretrained import PretrainedWeightsError, load_efficientnet_lite0_offline  # noqa: E402

__all__ = [
    "Backbone",
    "EmbeddingHead",
    "EmbeddingModel",
    "GlobalPool",
    "PretrainedWeightsError",
    "build_backbone",
    "build_model",
    "load_efficientnet_lite0_offline",
    "model_signature",
]
