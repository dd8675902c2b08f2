"""deepmetric.synthesis

Every module of this sub-package is imported here so that its registry entries exist.
"""
import importlib as _importlib
import pkgutil as _pkgutil

for _m in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_m.name}")

from deepmetric.synthesis.angular_perturbation import AngularPerturbation  # noqa: E402
from deepmetric.synthesis.base import SynthBatch  # noqa: E402
from deepmetric.synthesis.embedding_expansion import EmbeddingExpansion, TracedSynthBatch  # noqa: E402
from deepmetric.synthesis.feature_interpolation import FeatureInterpolation  # noqa: E402
from deepmetric.synthesis.intra_variance import IntraVarianceSynthesis  # noqa: E402
from deepmetric.synthesis.spherical_expansion import SphericalExpansion  # noqa: E402
from deepmetric.synthesis.symmetrical import SymmetricalSynthesis  # noqa: E402

__all__ = ["AngularPerturbation", "EmbeddingExpansion", "FeatureInterpolation", "IntraVarianceSynthesis",
           "SphericalExpansion", "SymmetricalSynthesis", "SynthBatch", "TracedSynthBatch"]
