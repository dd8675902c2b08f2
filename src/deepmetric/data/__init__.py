"""deepmetric.data

Every module of this sub-package that registers datasets or samplers is imported here so that its
registry entries exist; ``transforms`` registers nothing and imports torchvision (seconds), so it is
imported where transforms are built.
"""
import importlib as _importlib
import pkgutil as _pkgutil

_REGISTER_NOTHING = {"transforms"}
for _m in _pkgutil.iter_modules(__path__):
    if _m.name not in _REGISTER_NOTHING:
        _importlib.import_module(f"{__name__}.{_m.name}")


from deepmetric.data.base import DatasetError, UnreadableImageError, UnreadableImageWarning  # noqa: E402
from deepmetric.data.cars import Cars196  # noqa: E402
from deepmetric.data.cifar import CIFAR10  # noqa: E402
from deepmetric.data.csv_dataset import CSVDataset  # noqa: E402
from deepmetric.data.cub import CUB200  # noqa: E402
from deepmetric.data.embedded import MNIST, Digits  # noqa: E402
from deepmetric.data.folder import ImageFolderDataset  # noqa: E402
from deepmetric.data.inshop import InShop  # noqa: E402
from deepmetric.data.samplers import MPerClassSampler, RandomBatchSampler  # noqa: E402
from deepmetric.data.sop import StanfordOnlineProducts  # noqa: E402
from deepmetric.data.stl10 import STL10  # noqa: E402
from deepmetric.data.two_view import TwoViewDataset  # noqa: E402

__all__ = [
    "CIFAR10", "CSVDataset", "CUB200", "Cars196", "DatasetError", "Digits", "ImageFolderDataset", "InShop", "MNIST",
    "MPerClassSampler", "RandomBatchSampler", "STL10", "StanfordOnlineProducts", "TwoViewDataset",
    "UnreadableImageError", "UnreadableImageWarning",
]
