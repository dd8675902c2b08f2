"""Name -> class tables for losses, synthesisers, datasets, backbones and samplers.

Modules register themselves with a decorator::

    @LOSSES.register("instance_softmax")
    class InstanceSoftmaxLoss(nn.Module): ...

A lookup imports the sub-package that fills the table first, so ``LOSSES.get("x")`` works without
the caller importing anything else. An unknown name is a ``KeyError`` that lists the valid choices.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Dict, Iterator, List, Optional


class Registry:
    """A named table of constructors (classes or factory functions)."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self._package = package
        self._table: Dict[str, Any] = {}

    def register(self, name: str, obj: Optional[Any] = None) -> Callable[[Any], Any]:
        """Register ``obj`` under ``name``; usable as a decorator."""

        def deco(o: Any) -> Any:
            if name in self._table and self._table[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({self._table[name]!r} and {o!r})")
            self._table[name] = o
            return o

        return deco(obj) if obj is not None else deco

    def _load(self) -> None:
        importlib.import_module(self._package)

    def get(self, name: str) -> Any:
        self._load()
        if name not in self._table:
            close = difflib.get_close_matches(name, self._table, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}.{hint} Valid choices: {', '.join(self.names())}")
        return self._table[name]

    def names(self) -> List[str]:
        self._load()
        return sorted(self._table)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


LOSSES = Registry("loss", "deepmetric.losses")
SYNTHESISERS = Registry("synthesiser", "deepmetric.synthesis")
DATASETS = Registry("dataset", "deepmetric.data")
BACKBONES = Registry("backbone", "deepmetric.models")
SAMPLERS = Registry("sampler", "deepmetric.data")
