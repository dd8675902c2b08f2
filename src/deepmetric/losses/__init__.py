"""deepmetric.losses

Every module of this sub-package is imported here so that its registry entries exist.
"""
import importlib as _importlib
import pkgutil as _pkgutil

for _m in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_m.name}")

from deepmetric.losses.build import build_loss, loss_parameters  # noqa: E402
from deepmetric.losses.category_softmax import CategorySoftmaxLoss  # noqa: E402
from deepmetric.losses.hphn_triplet import HPHNTripletLoss  # noqa: E402
from deepmetric.losses.instance_softmax import InstanceSoftmaxLoss, two_view_batch  # noqa: E402
from deepmetric.losses.intra_ranking import IntraClassRankingLoss  # noqa: E402
from deepmetric.losses.synthesis_loss import ComposedSynthesisLoss, SynthesisLoss  # noqa: E402

__all__ = ["CategorySoftmaxLoss", "ComposedSynthesisLoss", "HPHNTripletLoss", "InstanceSoftmaxLoss", "IntraClassRankingLoss",
           "SynthesisLoss", "build_loss", "loss_parameters", "two_view_batch"]
