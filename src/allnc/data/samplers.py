"""Class-aware sampling with one epoch order shared by every rank.

Every rank builds the same global order of the epoch (a ``torch.Generator`` seeded from
``(seed, epoch)``), cut into global batches of ``batch_size``; rank ``r`` of ``world_size``
yields the contiguous chunk ``[r * B/W, (r + 1) * B/W)`` of each global batch. The ranks
together therefore see exactly the samples, batch by batch, that a single process sees with
the same global batch size.

Modes (``n_k`` = training images of class k):

* ``instance``: a random permutation of the training set (each image once per epoch);
* ``balanced``: class k drawn with probability proportional to 1;
* ``sqrt``: proportional to ``sqrt(n_k)``;
* ``reversed``: proportional to ``n_max / n_k`` (BBN's reversed sampler);
* ``power``: proportional to ``n_k ** power`` (the general form: 1 is instance-proportional
  draws with replacement, 0.5 square-root, 0 balanced, -1 reversed; GLMC's re-sampling loader
  weighs each image by ``n_k ** -q``, which is ``power = 1 - q``). Methods ask for it through
  a ``LoaderSpec``; ``method.sampler`` offers the named modes only (``MODES``);

then, for these modes, a uniformly drawn image of the chosen class, with replacement,
``num_samples`` draws per epoch (default: the training-set size). And:

* ``class_aware``: the class-aware sampling of the decoupling paper's released code (cRT, and
  MiSLAS's second stage): the classes in a cycle reshuffled at every pass, and for each class
  in turn the next ``CLASS_AWARE_RUN`` (4) images of that class's own cycle through its images,
  reshuffled at every pass. Every class gets the same number of draws (within one run of
  ``CLASS_AWARE_RUN``) and within a class no image repeats before all have been drawn. The
  cycles start afresh each epoch (the released iterators carry their place over).
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import ConfigError

MODES = ("instance", "balanced", "sqrt", "reversed", "class_aware")
#: images of one class drawn in a row by ``class_aware`` (the released cRT and MiSLAS value)
CLASS_AWARE_RUN = 4
#: every mode the sampler draws: the named ones and the general ``power``
ALL_MODES = (*MODES, "power")


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch)."""
    ss = np.random.SeedSequence([int(seed) % 2**64, int(epoch) % 2**64])
    return int(ss.generate_state(1, dtype=np.uint64)[0]) >> 1


class ClassAwareSampler(Sampler[int]):
    """A torch ``Sampler`` over training indices; see the module docstring.

    ``batch_size`` is the global batch size (over all ranks). With ``drop_last`` an epoch
    has ``floor(num_samples / batch_size)`` global batches; without it the last, partial
    global batch is cut the same way, so the last chunk of a rank may be shorter or empty
    (use ``drop_last`` with several ranks).
    """

    def __init__(
        self,
        targets: Sequence[int] | np.ndarray | torch.Tensor,
        mode: str = "instance",
        batch_size: int = 128,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        num_samples: Optional[int] = None,
        num_classes: Optional[int] = None,
        power: float = 1.0,
    ):
        if mode not in ALL_MODES:
            raise ConfigError(f"sampler mode '{mode}' is not one of: {', '.join(ALL_MODES)}")
        if not np.isfinite(power):
            raise ConfigError(f"sampler power must be a finite number, got {power}")
        t = torch.as_tensor(np.asarray(targets), dtype=torch.long).flatten()
        if len(t) == 0:
            raise ValueError("ClassAwareSampler needs at least one target")
        if int(t.min()) < 0:
            raise ValueError("targets must be class ids >= 0")
        k = int(t.max()) + 1 if num_classes is None else int(num_classes)
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        if batch_size % world_size:
            raise ConfigError(
                f"the global batch size {batch_size} is not divisible by the {world_size} processes; "
                "set train.batch_size to a multiple of the number of processes"
            )
        n = len(t)
        if mode == "instance" and num_samples is not None and num_samples != n:
            raise ValueError("instance mode is one permutation of the training set: num_samples must be None or N")
        self.targets = t
        self.mode = mode
        self.power = float(power)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.num_samples = n if num_samples is None else int(num_samples)
        self.num_classes = k
        self.epoch = 0
        self.counts = torch.bincount(t, minlength=k)
        # indices grouped by class (stable), and where each class starts
        self._by_class = torch.argsort(t, stable=True)
        self._starts = torch.cumsum(self.counts, 0) - self.counts
        if self.drop_last and self.num_samples < self.batch_size:
            raise ConfigError(
                f"the global batch size {self.batch_size} is larger than the {self.num_samples} samples of an "
                "epoch, so drop_last leaves no batch; lower train.batch_size (or set train.drop_last=false with "
                "data.pipeline=conventional: the fast path always drops the last, partial batch)"
            )

    # ------------------------------------------------------------------ the epoch order
    def class_probabilities(self) -> np.ndarray:
        """The class frequencies this sampler draws (float64, K, sums to 1)."""
        n = self.counts.double().numpy()
        present = n > 0
        w = np.zeros_like(n)
        if self.mode == "instance":
            w = n.copy()
        elif self.mode in ("balanced", "class_aware"):
            w[present] = 1.0
        elif self.mode == "sqrt":
            w = np.sqrt(n)
        elif self.mode == "power":
            w[present] = n[present] ** self.power
        else:  # reversed
            w[present] = n.max() / n[present]
        return w / w.sum()

    def global_indices(self, epoch: Optional[int] = None) -> torch.Tensor:
        """The whole epoch's order of samples (LongTensor), the global batches one after
        another (``num_batches() * batch_size`` long with ``drop_last``)."""
        e = self.epoch if epoch is None else int(epoch)
        g = torch.Generator()
        g.manual_seed(_epoch_seed(self.seed, e))
        n = len(self.targets)
        if self.mode == "instance":
            order = torch.randperm(n, generator=g)
        elif self.mode == "class_aware":
            order = self._class_aware_order(g)
        else:
            probs = torch.as_tensor(self.class_probabilities(), dtype=torch.double)
            cls = torch.multinomial(probs, self.num_samples, replacement=True, generator=g)
            cnt = self.counts[cls]
            within = (torch.rand(self.num_samples, generator=g, dtype=torch.double) * cnt).long()
            within = torch.minimum(within, cnt - 1)
            order = self._by_class[self._starts[cls] + within]
        if self.drop_last:
            order = order[: (len(order) // self.batch_size) * self.batch_size]
        return order

    def _class_aware_order(self, g: torch.Generator) -> torch.Tensor:
        """``num_samples`` indices of the ``class_aware`` mode (module docstring)."""
        run = CLASS_AWARE_RUN
        present = torch.nonzero(self.counts > 0).flatten()
        picks = -(-self.num_samples // run)  # class turns needed
        passes = -(-picks // len(present))
        cls = present[torch.argsort(torch.rand(passes, len(present), generator=g), dim=1)].flatten()[:picks]
        turns = torch.bincount(cls, minlength=self.num_classes)
        # the i-th turn of a class takes items [i * run, (i + 1) * run) of that class's cycle
        by_cls = torch.argsort(cls, stable=True)
        first = torch.cumsum(turns, 0) - turns
        nth = torch.empty_like(cls)
        nth[by_cls] = torch.arange(picks) - first[cls[by_cls]]
        need = turns * run
        offset = torch.cumsum(need, 0) - need  # where each class's cycle starts in their concatenation
        cycles = []
        for k in torch.nonzero(turns).flatten().tolist():
            nk, nd = int(self.counts[k]), int(need[k])
            members = self._by_class[self._starts[k]:self._starts[k] + nk]
            cycles.append(members[torch.argsort(torch.rand(-(-nd // nk), nk, generator=g), dim=1)].flatten()[:nd])
        pos = (offset[cls] + nth * run)[:, None] + torch.arange(run)[None, :]
        return torch.cat(cycles)[pos.flatten()][: self.num_samples]

    def num_batches(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def _rank_chunk(self, order: torch.Tensor) -> torch.Tensor:
        b, c, r = self.batch_size, self.batch_size // self.world_size, self.rank
        full = (len(order) // b) * b
        head = order[:full].view(-1, b)[:, r * c:(r + 1) * c].reshape(-1)
        tail = order[full:][r * c:(r + 1) * c]
        return torch.cat([head, tail])

    def rank_indices(self, epoch: Optional[int] = None) -> torch.Tensor:
        """This rank's samples of the epoch, in order."""
        return self._rank_chunk(self.global_indices(epoch))

    # -------------------------------------------------------------------- Sampler API
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices().tolist())

    def __len__(self) -> int:
        b, c, r = self.batch_size, self.batch_size // self.world_size, self.rank
        full, rest = divmod(self.num_samples, b)
        n = full * c
        if not self.drop_last:
            n += max(0, min(rest, (r + 1) * c) - r * c)
        return n
