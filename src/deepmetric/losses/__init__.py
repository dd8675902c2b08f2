"""deepmetric.losses

Every module of this sub-package is imported here so that its registry entries exist.
"""
import importlib as _importlib
import pkgutil as _pkgutil

for _m in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_m.name}")

