"""Use a trained model: classify new images (``predict``) and export a run as plain tensors
plus JSON (``export_run``); docs/predict.md describes the formats.

A model source is a run directory (``checkpoint.pt``, read weights-only; class names,
training counts and preprocessing from its ``metrics.json``, or, for a run that lacks them
there, from the training data rebuilt by ``load_run``) or an export folder
(``model.safetensors`` + ``model.json``: loading it runs no pickled code). Inputs are an
image folder (sub-folders named like the classes give labels, images directly in it none),
a "relative/path label" list file, or one image file. Images go through the run's own
evaluation transform, in batches, so a large folder never sits in memory.
"""
from __future__ import annotations

import csv
import os
import io
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from ..config import from_dict, to_dict
from ..data import build_transform
from ..data.sources.base import IMAGE_EXTENSIONS, _is_image, _reason, to_mode
from ..errors import ConfigError, DataError, RunDirError
from ..methods import DataInfo, Method, build_method
from ..metrics import AccuracyAccumulator
from ..rundir import CHECKPOINT, METRICS, atomic_write_bytes, atomic_write_json, holds_run, read_json
from .checkpoint import load_checkpoint
from .context import load_run, saved_with_runtime, weights_follow
from .evaluate import autocast_ctx
from .runtime import git_commit, precision, resolve_device, seed_everything, versions

WEIGHTS, META, FORMAT = "model.safetensors", "model.json", "allnc-export/1"


def _say(msg: str) -> None:
    print(f"allnc: {msg}", file=sys.stderr)


def folder_name(cls: str) -> str:
    """The folder (and list-file label) spelling of a class name: '/' becomes '_'."""
    return cls.replace("/", "_")


@dataclass
class Model:
    """A trained method ready for inference and what its inputs must look like."""

    method: Method
    cfg: DictConfig
    classes: list[str]
    class_counts: np.ndarray  # the training counts: many/medium/few come from them
    prep: dict  # mean, std, image_hw, in_channels, small
    device: torch.device
    amp: bool
    provenance: dict

    @property
    def mode(self) -> str:
        return "L" if int(self.prep["in_channels"]) == 1 else "RGB"

    def transform(self):
        like = SimpleNamespace(small=bool(self.prep["small"]), image_hw=tuple(self.prep["image_hw"]),
                               in_channels=int(self.prep["in_channels"]), mean=tuple(self.prep["mean"]),
                               std=tuple(self.prep["std"]))
        return build_transform(self.cfg.data, like, train=False)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self.method.eval()
        with autocast_ctx(self.device, self.amp):
            return self.method(x.to(self.device)).float()


def _device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except RuntimeError as e:
        why = str(e).splitlines()[0][:80]
        raise ConfigError(f"--device {name!r} is not a device ({why}); use cpu, cuda or auto") from None


def _finish(cfg, method, classes, counts, prep, device, provenance) -> Model:
    method.to(device).eval()
    amp, _ = precision(cfg, device)  # as in training; predict feeds images in the default layout
    return Model(method, cfg, [str(c) for c in classes], np.asarray(counts, dtype=np.int64), dict(prep), device, amp,
                 provenance)


def _build(cfg, counts, prep) -> Method:
    seed_everything(int(cfg.seed))  # the same construction as RunContext.build
    return build_method(weights_follow(cfg), DataInfo(np.asarray(counts, dtype=np.int64), int(prep["in_channels"]),
                                      tuple(int(v) for v in prep["image_hw"])))


def _load_state(method: Method, state: dict, where: Path) -> None:
    try:
        method.load_state_dict(state, strict=True)
    except RuntimeError as e:
        why = " ".join(str(e).split())[:200]
        raise RunDirError(f"{where} does not fit the model its config builds ({why})") from None


def load_model(source, device: str = "auto") -> Model:
    """The model of a run directory or of an export folder, on ``device``."""
    p = Path(source)
    dev = _device(device)
    if (p / META).is_file():
        return _load_export(p, dev)
    if not (p / CHECKPOINT).is_file():
        raise RunDirError(f"{p} is neither a run directory ({CHECKPOINT}) nor an export folder ({META} + {WEIGHTS})")
    ckpt = load_checkpoint(p / CHECKPOINT)
    cfg = saved_with_runtime(from_dict(ckpt["config"]), None, [f"device={dev}"])
    m = read_json(p / METRICS) if (p / METRICS).is_file() else {}
    prov = {"source_run": str(p.resolve()), "checkpoint_epoch": int(ckpt["epoch"]), "commit": m.get("git_commit"),
            "versions": ckpt.get("versions") or m.get("versions")}
    missing = [k for k in ("classes", "class_counts", "preprocessing") if not m.get(k)]
    if not missing:
        method = _build(cfg, m["class_counts"], m["preprocessing"])
        _load_state(method, ckpt["method"], p / CHECKPOINT)
        return _finish(cfg, method, m["classes"], m["class_counts"], m["preprocessing"], dev, prov)
    _say(f"{p / METRICS} lacks {', '.join(missing)}; rebuilding them from the training data "
         f"(data.root={cfg.data.root})")
    ctx = load_run(p, device=str(dev))
    b = ctx.bundle
    prep = {"mean": list(b.mean), "std": list(b.std), "image_hw": list(b.image_hw), "in_channels": b.in_channels,
            "small": bool(b.small)}
    return _finish(ctx.cfg, ctx.method, b.classes, b.class_counts, prep, dev, prov)


def _load_export(p: Path, dev: torch.device) -> Model:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_json(p / META, "the export's description")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RunDirError(f"{p / META} is not an allnc export ({FORMAT}); make one with `allnc export RUN_DIR OUT_DIR`")
    cfg = saved_with_runtime(from_dict(meta["config"]), None, [f"device={dev}"])
    pre = meta["preprocessing"]
    method = _build(cfg, meta["class_counts"], pre)
    try:
        state = load_file(str(p / WEIGHTS), device="cpu")
    except (OSError, SafetensorError) as e:
        raise RunDirError(f"{p / WEIGHTS} cannot be read ({str(e).splitlines()[0][:120]})") from None
    _load_state(method, state, p / WEIGHTS)
    return _finish(cfg, method, meta["classes"], meta["class_counts"], pre, dev, meta.get("provenance", {}))


def check_export_dir(out_dir, overwrite: bool = False) -> None:
    """An export goes into a new or empty folder, or replaces an earlier export with
    ``overwrite``; never into a run directory (``predict`` would then read the export, not the
    run) or a folder of other files."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out} is a file; give a folder for the export")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if holds_run(out):
        raise RunDirError(f"{out} is a run directory; give the export a folder of its own")
    if (out / META).is_file() and all(p.name in (META, WEIGHTS) for p in out.iterdir()):
        if not overwrite:
            raise RunDirError(f"{out} already holds an export; pass --overwrite to replace it, or choose another folder")
        return
    raise RunDirError(f"{out} is not empty and holds no export; choose a new or empty folder")


def export_run(run_dir, out_dir, overwrite: bool = False) -> Path:
    """Write ``out_dir/model.safetensors`` (the method's state-dict tensors) and
    ``out_dir/model.json`` (config, classes, preprocessing, training counts, provenance)."""
    from safetensors.torch import save

    if (Path(run_dir) / META).is_file():
        raise RunDirError(f"{run_dir} is already an export; give a run directory made by `allnc train`")
    check_export_dir(out_dir, overwrite)
    m = load_model(run_dir, device="cpu")
    # a copy of every tensor: tied weights and views become separate, plain tensors
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in m.method.state_dict().items()}
    out = Path(out_dir)
    atomic_write_bytes(out / WEIGHTS, lambda f: f.write(save(tensors, metadata={"format": FORMAT})))
    prov = {**m.provenance, "exported_commit": git_commit(), "exported_versions": versions(),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(out / META, {"format": FORMAT, "config": to_dict(m.cfg), "classes": m.classes,
                                   "class_counts": [int(c) for c in m.class_counts], "preprocessing": m.prep,
                                   "provenance": prov})
    return out


# ------------------------------------------------------------------------------ inputs
def _label_index(classes: list[str]) -> dict[str, int]:
    idx = {str(i): i for i in range(len(classes))}  # class ids; names win where they clash
    for i, c in enumerate(classes):
        idx[folder_name(c)] = i
        idx[c] = i
    return idx


def _shown(classes: list[str]) -> str:
    return ", ".join(classes[:12]) + (" ..." if len(classes) > 12 else "")


def list_inputs(inputs, classes: list[str]) -> list[tuple[str, Optional[int]]]:
    """(image path, class index or None) of an image folder, a list file or one image."""
    p, labels = Path(inputs), _label_index(classes)
    if p.is_dir():
        import os

        items: list[tuple[str, Optional[int]]] = []
        entries = sorted(os.scandir(p), key=lambda e: e.name)
        items += [(str(p / e.name), None) for e in entries if e.is_file() and _is_image(e.name)]
        for d in (e for e in entries if e.is_dir() and not e.name.startswith(".")):
            files = sorted(f.name for f in os.scandir(d.path) if f.is_file() and _is_image(f.name))
            if files and d.name not in labels:
                raise DataError(f"{d.path}: folder name '{d.name}' is not a class of the model ({_shown(classes)})")
            items += [(str(Path(d.path) / f), labels[d.name]) for f in files]
        if not items:
            raise DataError(f"{p} holds no images ({' '.join(IMAGE_EXTENSIONS)}) in it or in class sub-folders")
        return items
    if not p.is_file():
        raise DataError(f"input {p} does not exist; give an image folder, a list file or an image")
    if _is_image(p.name):
        return [(str(p), None)]
    return _read_list(p, labels, classes)


def _read_list(p: Path, labels: dict, classes: list[str]) -> list[tuple[str, Optional[int]]]:
    items = []
    try:
        lines = p.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    except OSError as e:
        raise DataError(f"list file {p} cannot be read ({_reason(e)})") from None
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        # the label is the longest tail after a space that names a class (names may hold spaces)
        hit = next(((s[:m.start()], labels[s[m.end():]]) for m in re.finditer(r"\s+", s) if s[m.end():] in labels),
                   None)
        if hit is None:
            whole = Path(s) if Path(s).is_absolute() else p.parent / s
            if len(s.split()) > 1 and not whole.is_file():
                raise DataError(f"{p} line {n}: label '{s.split()[-1]}' is not a class of the model "
                                f"({_shown(classes)})")
            hit = (s, None)
        rel = Path(hit[0])
        items.append((str(rel if rel.is_absolute() else p.parent / rel), hit[1]))
    if not items:
        raise DataError(f"list file {p} holds no 'relative/path label' lines")
    return items


# ---------------------------------------------------------------------------- predict
def _loader(model: Model):
    tf, mode = model.transform(), model.mode
    hw = tuple(int(v) for v in model.prep["image_hw"])
    told = []

    def load(path: str) -> torch.Tensor:
        try:
            with Image.open(path) as im:
                img = to_mode(im, mode)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
            raise DataError(f"cannot read image {path}: {_reason(e)}") from None
        if model.prep["small"] and img.size != (hw[1], hw[0]):
            if not told:
                told.append(1)
                _say(f"images not of the training size {hw[1]}x{hw[0]} are resized to it "
                     f"(first: {path}, {img.size[0]}x{img.size[1]})")
            img = img.resize((hw[1], hw[0]), Image.BILINEAR)
        return tf(img)

    return load


def _check(topk: int, batch_size: int) -> None:
    if int(topk) < 1 or int(batch_size) < 1:
        raise ConfigError(f"--topk and --batch-size must be at least 1 (got {topk}, {batch_size})")


def iter_predict(model: Model, items, topk: int = 5, batch_size: int = 256) -> Iterator[dict]:
    """One row per image, computed batch by batch: path, label (name or None), target and
    pred (indices), topk [(class name, probability), ...]."""
    _check(topk, batch_size)
    k, load = min(int(topk), len(model.classes)), _loader(model)
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        probs = torch.softmax(model.logits(torch.stack([load(p) for p, _ in chunk])), dim=1).cpu()
        val, idx = probs.topk(k, dim=1)
        for (path, t), v, j in zip(chunk, val.tolist(), idx.tolist()):
            yield {"path": path, "label": None if t is None else model.classes[t], "target": t, "pred": j[0],
                   "topk": [(model.classes[c], p) for c, p in zip(j, v)]}


def predict(source, inputs, topk: int = 5, batch_size: int = 256, device: str = "auto") -> list[dict]:
    """Rows of ``iter_predict`` for ``inputs`` (folder, list file or image) classified by
    ``source`` (a run directory, an export folder or a loaded ``Model``)."""
    model = source if isinstance(source, Model) else load_model(source, device)
    return list(iter_predict(model, list_inputs(inputs, model.classes), topk, batch_size))


def accuracy(model: Model, rows: Iterable[dict]) -> Optional[dict]:
    """Top-1, per-class, confusion and many/medium/few (training counts) of the labelled
    rows; None where no row has a label."""
    pairs = [(r["pred"], r["target"]) for r in rows if r["target"] is not None]
    if not pairs:
        return None
    acc = AccuracyAccumulator(len(model.classes), device="cpu")
    acc.update(torch.tensor([a for a, _ in pairs]), torch.tensor([b for _, b in pairs]))
    return acc.result(model.class_counts)


def predict_to_files(source, inputs, out, topk: int = 5, batch_size: int = 256, device: str = "auto") -> dict:
    """Write the CSV ``out`` (streamed, atomically; ``out/predictions.csv`` when ``out`` is a
    folder) and, where labels are known, the accuracy JSON beside it; returns {rows, csv,
    json, accuracy}."""
    _check(topk, batch_size)
    folder = str(out).endswith(("/", os.sep))  # a trailing slash names a folder, made if missing
    out = Path(out)
    if out.is_dir() or folder:
        out = out / "predictions.csv"
    model = load_model(source, device)
    items = list_inputs(inputs, model.classes)
    k = min(int(topk), len(model.classes))
    kept: list[dict] = []  # pred and target only, for the accuracy

    def write(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        w = csv.writer(text)
        w.writerow(["path", "label"] + [c for i in range(1, k + 1) for c in (f"top{i}", f"top{i}_prob")])
        for r in iter_predict(model, items, k, batch_size):
            w.writerow([r["path"], r["label"] or ""] + [x for n, p in r["topk"] for x in (n, f"{p:.6f}")])
            kept.append({"pred": r["pred"], "target": r["target"]})
        text.flush()
        text.detach()

    atomic_write_bytes(out, write)
    res = accuracy(model, kept)
    js = None
    if res is not None:
        js = out.with_suffix(".json") if out.suffix != ".json" else out.with_suffix(".accuracy.json")
        atomic_write_json(js, {**res, "labelled": len([r for r in kept if r["target"] is not None]),
                               "images": len(kept), "input": str(inputs), "model": model.provenance,
                               "classes": model.classes, "class_counts": [int(c) for c in model.class_counts]})
    return {"rows": len(kept), "csv": out, "json": js, "accuracy": res}
