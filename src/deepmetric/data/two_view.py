"""Two independently augmented views of each instance, for unsupervised (instance-wise) training (SPEC §1)."""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Optional, Tuple

import torch
from torch.utils.data import Dataset


def _unit_uniform(seed: int, epoch: int, index: int) -> float:
    """A number in [0, 1) that depends only on (seed, epoch, index) (stable across processes)."""
    h = hashlib.blake2b(f"neighbour:{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return (int.from_bytes(h, "little") >> 11) / float(1 << 53)


class TwoViewDataset(Dataset):
    """Items ``(view1, view2, index)``: two independent draws of ``transform`` on the instance ``index``.

    Labels of ``base`` are never returned (nor exposed as an attribute): unsupervised training sees only
    the instance index, which is the "label" of the instance-wise softmax loss.

    Neighbour positives (SPEC §1, released CUB code): after :meth:`set_neighbours`, view 2 of instance i
    is, with probability ``prob``, an augmented view of the image ``table[i]`` (e.g. i's nearest neighbour
    in the current embedding) instead of a second view of i. Whether item i of an epoch uses its
    neighbour is a pure function of (seed, epoch, i); call :meth:`set_epoch` each epoch.

    Args:
        base: a dataset yielding ``(image, label)`` with images NOT yet transformed (transform=None).
        transform: the random augmentation applied to each view (e.g. ``build_transform(..., train=True)``).
    """

    def __init__(self, base: Dataset, transform: Callable) -> None:
        self.base = base
        self.transform = transform
        self.epoch = 0
        self.table: Optional[torch.Tensor] = None
        self.prob = 0.0
        self.seed = 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Select which items use their neighbour this epoch (no effect without a neighbour table)."""
        self.epoch = int(epoch)

    def set_neighbours(self, table: Optional[torch.Tensor], prob: float, seed: int = 0) -> None:
        """Use ``table[i]`` as view 2 of instance i with probability ``prob``; ``table=None`` turns it off.

        Args:
            table: (N,) integer tensor or array, N = len(self): the partner instance of every instance.
            prob: probability in [0, 1] that view 2 comes from the partner.
            seed: seed of the per-(epoch, index) draw.
        """
        if table is None:
            self.table, self.prob = None, 0.0
            return
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"TwoViewDataset.set_neighbours: prob={prob} must be in [0, 1]")
        t = torch.as_tensor(table).long().reshape(-1).cpu()
        if len(t) != len(self):
            raise ValueError(f"TwoViewDataset.set_neighbours: table has {len(t)} entries for {len(self)} instances; give one partner per instance")
        if len(t) and (int(t.min()) < 0 or int(t.max()) >= len(self)):
            raise ValueError(f"TwoViewDataset.set_neighbours: table values span {int(t.min())}..{int(t.max())}; they must be instance indices in 0..{len(self) - 1}")
        self.table, self.prob, self.seed = t, float(prob), int(seed)

    def partner(self, index: int) -> int:
        """The instance whose image view 2 of ``index`` shows in the current epoch."""
        if self.table is None or self.prob <= 0.0:
            return index
        return int(self.table[index]) if _unit_uniform(self.seed, self.epoch, index) < self.prob else index

    def _image(self, index: int) -> Any:
        return self.base[index][0]  # the label is dropped here on purpose

    def __getitem__(self, index: int) -> Tuple[Any, Any, int]:
        index = int(index)
        image = self._image(index)
        other = self.partner(index)
        second = image if other == index else self._image(other)
        return self.transform(image), self.transform(second), index
