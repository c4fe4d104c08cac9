"""Training and evaluation batches for the engine, from either data path.

fast: the split lives on the device as uint8, samplers give index tensors, augmentation
      runs batched on the device (allnc.data.fast).
conventional: torchvision transforms in DataLoader workers (any dataset, large images).
Both give, per step, dicts {"x": tensor or list of views, "y": labels, "index": indices}.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ..data import ClassAwareSampler, build_transform, make_dataset
from ..data.augment import MultiView
from ..data.fast import BatchAugment, DeviceImages, FastLoader, eval_batches, fast_path_applicable
from ..errors import AllncWarning, ConfigError
from .. import dist


@dataclass
class PipelineChoice:
    fast: bool
    reason: str
    # device-resident evaluation splits, made once per run
    eval_images: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "fast (device-resident data, batched augmentation)" if self.fast else "conventional (DataLoader workers)"


def choose_pipeline(cfg, bundle, specs=()) -> PipelineChoice:
    """The data path of a run; ``specs`` (the method's loader specs) name per-view presets."""
    views = [p for s in specs for p in (s.view_augments or ())]
    ok, why = fast_path_applicable(bundle, cfg.data, views)
    want = cfg.data.pipeline
    if want == "fast" and not ok:
        raise ConfigError(f"data.pipeline=fast does not apply here: {why}; use data.pipeline=auto or conventional")
    if want == "conventional":
        return PipelineChoice(False, "data.pipeline=conventional")
    if ok:
        return PipelineChoice(True, "small images held in memory" if want == "auto" else "data.pipeline=fast")
    return PipelineChoice(False, why)


class EpochSeededDataLoader:
    """A DataLoader whose worker seeds and main-process randomness are fixed per epoch,
    so that a resumed run draws exactly the batches of an uninterrupted one."""

    def __init__(self, dataset, sampler: ClassAwareSampler, batch_size: int, num_workers: int, seed: int, pin: bool):
        self.sampler = sampler
        self.seed = seed
        self.gen = torch.Generator()
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=False,
            generator=self.gen, pin_memory=pin, persistent_workers=False,
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.gen.manual_seed(self.seed * 1_000_003 + epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        for x, y, idx in self.loader:
            yield {"x": x, "y": y, "index": idx}


def _with_augment(data_cfg, preset: str):
    """A copy of the data config with another augmentation preset."""
    d = data_cfg.copy()
    d.augment = preset
    return d


def build_train_loaders(cfg, bundle, specs, choice: PipelineChoice, device: torch.device, channels_last: bool = False):
    """One loader per LoaderSpec; every sampler draws as many samples as the training set,
    so all loaders have the same number of steps per epoch."""
    world, rank = dist.world_size(), dist.rank()
    B = int(cfg.train.batch_size)
    if B % world:
        raise ConfigError(f"train.batch_size={B} is not divisible by the {world} processes; choose a multiple of {world}")
    targets = bundle.train.targets
    loaders = []
    images = None
    for i, spec in enumerate(specs):
        sampler = ClassAwareSampler(
            targets, mode=spec.sampler, batch_size=B, seed=int(cfg.seed) * 7919 + i, rank=rank, world_size=world,
            drop_last=bool(cfg.train.drop_last) or choice.fast, power=float(spec.power),
        )
        if len(sampler) == 0:
            raise ConfigError(
                f"train.batch_size={B} is larger than the training set ({len(targets)} images); lower train.batch_size"
            )
        presets = list(spec.view_augments or [cfg.data.augment] * spec.views)
        if choice.fast:
            if images is None:
                images = DeviceImages(bundle.train.images, targets, device, channels_last=channels_last)
            augs = [BatchAugment(preset=p, mean=bundle.mean, std=bundle.std, cutout=int(cfg.data.cutout))
                    for p in presets]
            loaders.append(FastLoader(images, sampler, B // world, augs, views=spec.views, seed=int(cfg.seed) * 31 + i))
        else:
            tfs = [build_transform(_with_augment(cfg.data, p), bundle, train=True) for p in presets]
            ds = make_dataset(bundle.train, MultiView(tfs, spec.views) if spec.views > 1 else tfs[0], views=spec.views)
            loaders.append(
                EpochSeededDataLoader(ds, sampler, B // world, int(cfg.data.num_workers), int(cfg.seed) * 31 + i,
                                      pin=device.type == "cuda")
            )
    return loaders


def iter_eval(cfg, bundle, split_name: str, choice: PipelineChoice, device: torch.device,
              batch_size: int = 512, shard: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of a split without augmentation; under data parallel each rank gets
    every world_size-th sample, and the callers all-reduce what they accumulate."""
    if split_name == "test" and not bool(cfg.train.eval_test):  # never during training: the trainer skips it
        warnings.warn(AllncWarning("the run was trained with train.eval_test=false, keeping its test set unread; "
                                   "this command reads the test set"), stacklevel=2)
    split = getattr(bundle, split_name)
    world, rank = (dist.world_size(), dist.rank()) if shard else (1, 0)
    idx = np.arange(rank, len(split.targets), world)
    if choice.fast:
        key = (split_name, rank, world, str(device))
        if key not in choice.eval_images:
            choice.eval_images[key] = DeviceImages(split.images[idx], split.targets[idx], device)
        for x, y in eval_batches(choice.eval_images[key], batch_size, bundle.mean, bundle.std):
            yield x, y
        return
    tf = build_transform(cfg.data, bundle, train=False)
    ds = Subset(make_dataset(split, tf, views=1), idx.tolist())
    dl = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=int(cfg.data.num_workers),
                    pin_memory=device.type == "cuda")
    for x, y, _ in dl:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
