"""The one training loop of the package, for every method."""
from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from .. import __version__
from ..config import flatten, from_dict, parse_override, set_key, to_dict, to_yaml
from ..data import build_data, groups as class_groups
from ..errors import ConfigError, RunDirError, TrainingDiverged
from ..methods.base import DataInfo, Method, StepState, build_method
from ..metrics import nc_summary
from ..models import count_parameters
from .. import dist
from ..rundir import CHECKPOINT, atomic_write_json, atomic_write_text
from .checkpoint import load_checkpoint, save_checkpoint
from .evaluate import autocast_ctx, evaluate_accuracy, neural_collapse
from .loaders import build_train_loaders, choose_pipeline, iter_eval
from .schedule import lr_at


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible; use device=cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dist.is_dist():
        dev = torch.device("cuda", dist.rank() % torch.cuda.device_count())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def versions() -> dict:
    import torchvision

    return {"allnc": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def git_commit() -> str | None:
    """The checkout's commit; where there is no git repository (a copied working tree on
    another machine) the ALLNC_COMMIT environment variable says it."""
    env = os.environ.get("ALLNC_COMMIT")
    if env:
        return env
    try:
        here = Path(__file__).resolve().parent
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class _TrainStep(nn.Module):
    """What DistributedDataParallel wraps: its forward is the method's training loss."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, batches, state):
        return self.method.training_loss(batches, state)


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write into an existing run unless asked: never an interactive prompt."""
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise RunDirError(f"--resume: no {CHECKPOINT} in {out}; drop --resume to start a new run there")
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"run directory {out} already exists and is not empty; pass --resume to continue it, "
                "--overwrite to replace it, or choose another --out"
            )
        if dist.is_main():
            shutil.rmtree(out)
    dist.barrier()


class Trainer:
    def __init__(self, cfg: DictConfig | None, out: str | Path, resume: bool = False, overwrite: bool = False,
                 log=print, overrides: list[str] | tuple = ()):
        """``cfg`` may be None with ``resume``: the run's saved config is used, with
        ``overrides`` limited to runtime keys (device, data.root, ...)."""
        self.out = Path(out)
        self.log = log if dist.is_main() else (lambda *a, **k: None)
        self.resume = resume
        ckpt = None
        if resume:
            prepare_run_dir(self.out, True, False)
            ckpt = load_checkpoint(self.out / CHECKPOINT)
            saved = from_dict(ckpt["config"])
            self._check_resume_config(saved, cfg)
            cfg = saved_with_runtime(saved, cfg, overrides)
        else:
            prepare_run_dir(self.out, False, overwrite)
        self._build(cfg, init_from=cfg.init_from if ckpt is None else None)
        on_gpu = self.device.type == "cuda"
        self.loaders = build_train_loaders(cfg, self.bundle, self.method.loaders, self.choice, self.device,
                                           self.channels_last)
        self.steps = len(self.loaders[0])

        compile_ = cfg.train.compile == "on" or (cfg.train.compile == "auto" and on_gpu and self.choice.fast)
        groups = self.method.parameter_groups(float(cfg.train.weight_decay))
        # a compiled optimizer step reads the learning rate from a tensor (no recompilation when
        # it changes); otherwise a fused kernel on the GPU
        # (on the device, so that CUDA graphs can hold it)
        lr0 = torch.tensor(float(cfg.train.lr), device=self.device) if compile_ else float(cfg.train.lr)
        self.opt = torch.optim.SGD(groups, lr=lr0, momentum=float(cfg.train.momentum),
                                   nesterov=bool(cfg.train.nesterov),
                                   **({"fused": True} if on_gpu and not compile_ else {}))
        self.step_module: nn.Module = _TrainStep(self.method)
        if dist.is_dist():
            dev_ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_module = nn.parallel.DistributedDataParallel(self.step_module, device_ids=dev_ids)
        self.step_fn = self.step_module
        self.opt_step = self.opt.step
        # what was asked for and what runs: a failed compilation falls back (see _probe_compiled)
        self.compile_info = {"requested": bool(compile_), "used": False, "backend": str(cfg.train.compile_backend),
                             "mode": str(cfg.train.compile_mode), "fallback": None, "probe_s": None}
        self._mark_step = False
        if compile_:
            self._compile(str(cfg.train.compile_mode))

        self.start_epoch = 0
        self.history: list[dict] = []
        if ckpt is not None:
            self.method.load_state_dict(ckpt["method"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.start_epoch = int(ckpt["epoch"])
            self.history = list(ckpt.get("history", []))
        self.wall_before = float(ckpt.get("wall_time", 0.0)) if ckpt else 0.0

    def _build(self, cfg: DictConfig, init_from: str | None = None) -> None:
        """Device, precision, data, method (on the device) and data path of a config."""
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        dist.init_from_env(self.device.type)
        on_gpu = self.device.type == "cuda"
        self.amp = cfg.train.amp == "bf16" or (cfg.train.amp == "auto" and on_gpu)
        self.channels_last = cfg.train.channels_last == "on" or (cfg.train.channels_last == "auto" and on_gpu)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:  # fixed shapes every step: let cuDNN pick its fastest kernels once
            torch.backends.cudnn.benchmark = True
        seed_everything(int(cfg.seed))
        self.bundle = build_data(cfg)
        self.info = DataInfo(np.asarray(self.bundle.class_counts), self.bundle.in_channels,
                             tuple(self.bundle.image_hw))
        self.method = build_method(cfg, self.info)
        if init_from:
            src = Path(init_from) / CHECKPOINT
            if not src.is_file():
                raise ConfigError(f"init_from={init_from}: no {CHECKPOINT} there; point it at a finished run directory")
            self.method.load_backbone_from(load_checkpoint(src)["method"])
        if cfg.train.sync_bn and dist.is_dist():
            self.method = dist.convert_sync_batchnorm(self.method, self.device.type)
        self.method.to(self.device)
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.n_params = count_parameters(self.method)
        self.choice = choose_pipeline(cfg, self.bundle, self.method.loaders)

    # ------------------------------------------------------------------ compilation
    def _compile(self, mode: str) -> None:
        backend = str(self.cfg.train.compile_backend)
        kw = {"mode": mode} if backend == "inductor" and mode != "default" else {}
        self.step_fn = torch.compile(self.step_module, backend=backend, **kw)
        self.opt_step = torch.compile(self.opt.step, backend=backend, **kw)
        self.compile_info.update(used=True, mode=mode)
        # CUDA graph trees want to know where a training iteration begins
        self._mark_step = self.device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")

    def _uncompile(self) -> None:
        self.step_fn, self.opt_step = self.step_module, self.opt.step
        self._mark_step = False
        self.compile_info["used"] = False
        for g in self.opt.param_groups:  # eager SGD takes a plain float
            if torch.is_tensor(g["lr"]):
                g["lr"] = float(g["lr"])

    def _snapshot(self) -> dict:
        """Every value a training step changes: parameters, buffers, optimizer state."""
        return {
            "tensors": [t.detach().clone() for t in self._state_tensors()],
            "opt": {id(p): {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in st.items()}
                    for p, st in self.opt.state.items()},
        }

    def _state_tensors(self) -> list[torch.Tensor]:
        return [*self.method.parameters(), *self.method.buffers()]

    @torch.no_grad()
    def _restore(self, snap: dict) -> None:
        """Put the snapshot back in place (the same tensor objects, so compiled code that
        holds them stays valid). SGD momentum buffers created since the snapshot are zeroed:
        SGD's first step sets the buffer to the gradient, and 0.9 * 0 + g is g, so a zero
        buffer gives exactly the step that a missing one would."""
        for t, v in zip(self._state_tensors(), snap["tensors"]):
            t.copy_(v)
        for p, st in self.opt.state.items():
            old = snap["opt"].get(id(p), {})
            for k, v in st.items():
                if not torch.is_tensor(v):
                    continue
                if k in old and torch.is_tensor(old[k]):
                    v.copy_(old[k])
                elif k == "momentum_buffer":
                    v.zero_()
                else:
                    raise RuntimeError(f"optimizer state '{k}' appeared during the compilation probe")

    def _probe_compiled(self, steps: int = 3) -> None:
        """Run the first ``steps`` compiled steps (compilation, CUDA-graph recording and the
        first replay happen here), then put every parameter, buffer and optimizer value back:
        the run is the one it would have been without the probe. If compilation or CUDA
        graphs fail, CUDA-graph modes fall back to the default mode, then to eager; the
        engine says so once and ``metrics.json`` records it under ``compile``."""
        if self.step_fn is self.step_module:
            return
        epoch = self.start_epoch
        modes = [self.compile_info["mode"]]
        if modes[0] != "default":
            modes.append("default")
        errors = []
        t0 = time.time()
        for i, mode in enumerate(modes):
            if i:
                torch._dynamo.reset()
                self._compile(mode)
            snap = self._snapshot()
            try:
                self.method.on_epoch_start(epoch, int(self.cfg.train.epochs))
                self.method.train()
                for ld in self.loaders:
                    ld.set_epoch(epoch)
                lr = float(self.cfg.train.lr) * 1e-3
                for step, batches in zip(range(steps), zip(*self.loaders)):
                    self._set_lr(lr)
                    self._train_step([self._to_device(b) for b in batches], StepState(epoch, int(self.cfg.train.epochs),
                                                                                       step, self.steps))
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self._restore(snap)
                self.compile_info["probe_s"] = round(time.time() - t0, 2)
                if errors:
                    self.compile_info["fallback"] = "; ".join(errors)
                    self.log(f"compile  {errors[-1]}; using train.compile_mode={mode} instead")
                return
            except Exception as e:  # noqa: BLE001 - any compiler or CUDA-graph failure
                self._restore(snap)
                first = (str(e).strip().splitlines() or [""])[0][:300]
                errors.append(f"train.compile_mode={mode} failed ({type(e).__name__}: {first})")
        torch._dynamo.reset()
        self._uncompile()
        self.compile_info["fallback"] = "; ".join(errors) + "; trained eagerly"
        self.compile_info["probe_s"] = round(time.time() - t0, 2)
        self.log(f"compile  {errors[-1]}; training eagerly (not compiled)")

    def _train_step(self, batches: list[dict], state: StepState) -> tuple[torch.Tensor, dict]:
        if self._mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast_ctx(self.device, self.amp):
            loss, logs = self.step_fn(batches, state)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_step()
        return loss, logs

    @staticmethod
    def _check_resume_config(saved: DictConfig, given: DictConfig | None) -> None:
        if given is None:
            return
        a, b = flatten(to_dict(saved)), flatten(to_dict(given))
        diff = [k for k in a if k.split(".")[0] not in RUNTIME_TOP and k not in RUNTIME_KEYS and a[k] != b.get(k)]
        if diff:
            k = diff[0]
            raise ConfigError(
                f"--resume: '{k}' is {b.get(k)!r} here but {a[k]!r} in the saved run; resume with the run's own "
                "config (omit --config and overrides) or start a new run"
            )

    # ------------------------------------------------------------------------------
    def describe(self) -> None:
        c, b = self.cfg, self.bundle
        counts = np.asarray(b.class_counts)
        g = class_groups(counts)
        self.log(f"data     {b.label}: {len(b.train.targets)} train / {len(b.test.targets)} test images, "
                 f"{b.num_classes} classes, n_max {counts.max()} n_min {counts.min()}, "
                 f"groups many/medium/few {len(g['many'])}/{len(g['medium'])}/{len(g['few'])}")
        self.log(f"model    {c.model.name} (width {c.model.width}) + {c.method.name}: {self.n_params:,} parameters")
        self.log(f"device   {device_name(self.device)}; pipeline {self.choice.name} [{self.choice.reason}]; "
                 f"{'bf16 autocast' if self.amp else 'fp32'}"
                 f"{', channels_last' if self.channels_last else ''}"
                 f"{', compiled step (' + self.compile_info['mode'] + ')' if self.compile_info['used'] else ''}"
                 f"{f', {dist.world_size()} processes' if dist.is_dist() else ''}")
        self.log(f"schedule {c.train.epochs} epochs x {self.steps} steps, batch {c.train.batch_size}, "
                 f"lr {c.train.lr} ({c.train.schedule}), out {self.out}")
        if c.train.schedule == "step" and any(m >= c.train.epochs for m in c.train.milestones):
            self.log(f"warning  train.milestones {list(c.train.milestones)} reach beyond train.epochs="
                     f"{c.train.epochs}: those decays never happen")

    def _set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:
            if torch.is_tensor(g["lr"]):
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr

    def _save(self, epoch_done: int, wall: float) -> None:
        if not dist.is_main():
            return
        save_checkpoint(self.out / CHECKPOINT, {
            "method": self.method.state_dict(), "optimizer": self.opt.state_dict(), "epoch": epoch_done,
            "config": to_dict(self.cfg), "history": self.history, "wall_time": wall, "versions": versions(),
        })

    def _log_epoch(self, rec: dict, tb) -> None:
        self.history.append(rec)
        if not dist.is_main():
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if tb is not None:
            for k, v in flatten(rec).items():
                if isinstance(v, (int, float)) and v is not None and k != "epoch":
                    tb.add_scalar(k.replace(".", "/"), v, rec["epoch"])
            tb.flush()

    def fit(self) -> dict:
        cfg = self.cfg
        if dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.yaml", to_yaml(cfg))
            if self.resume and (self.out / "metrics.jsonl").exists():
                # keep exactly the epochs the checkpoint knows about
                atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        if self.start_epoch < int(cfg.train.epochs):
            self._probe_compiled()
        self.describe()
        tb = _tensorboard(self.out / "tb") if dist.is_main() else None
        epochs, steps = int(cfg.train.epochs), self.steps
        if self.start_epoch >= epochs:
            self.log(f"resume   the run already finished its {epochs} epochs; evaluating it again")
        elif self.start_epoch:
            self.log(f"resume   from epoch {self.start_epoch} of {epochs}")
        # a bar on a terminal; one line per epoch in logs and pipes
        bar = _progress(total=(epochs - self.start_epoch) * steps,
                        enabled=bool(cfg.train.progress) and dist.is_main() and sys.stderr.isatty())
        t_start = time.time()
        last_ckpt_epoch = self.start_epoch
        for epoch in range(self.start_epoch, epochs):
            t0 = time.time()
            # every random stream is a function of (seed, epoch): resume draws what a full run draws
            torch.manual_seed(int(cfg.seed) * 1_000_003 + epoch)
            np.random.seed((int(cfg.seed) * 1_000_003 + epoch) % 2**32)
            self.method.on_epoch_start(epoch, epochs)
            for ld in self.loaders:
                ld.set_epoch(epoch)
            self.method.train()
            sums: dict[str, torch.Tensor] = {}
            state = StepState(epoch, epochs, 0, steps)
            for step, batches in enumerate(zip(*self.loaders)):
                state.step = step
                lr = lr_at(float(cfg.train.lr), epoch, step, steps, epochs, int(cfg.train.warmup_epochs),
                           cfg.train.schedule, tuple(cfg.train.milestones), float(cfg.train.lr_decay))
                self._set_lr(lr)
                loss, logs = self._train_step([self._to_device(b) for b in batches], state)
                logs = {"loss": loss.detach(), **logs}
                for k, v in logs.items():  # summed where they live: no host sync per step on a GPU
                    v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v), device=self.device)
                    sums[k] = sums.get(k, 0) + v
                check = self.device.type == "cpu" or (step + 1) % int(cfg.train.log_every_steps) == 0 or step == steps - 1
                if check and not math.isfinite(float(sums["loss"])):
                    bar.close()
                    raise TrainingDiverged(
                        f"the training loss became {float(loss.detach())} at epoch {epoch + 1} step {step + 1}; "
                        f"the last good checkpoint (epoch {last_ckpt_epoch}) is kept in {self.out}; "
                        "lower train.lr or the loss weights and start again, or --resume from it"
                    )
                bar.update(1)
                if step % 10 == 0 or step == steps - 1:
                    bar.set_postfix_str(f"epoch {epoch + 1}/{epochs} loss {float(loss.detach()):.3f} lr {lr:.4f}")
            t1 = time.time()
            rec = {"epoch": epoch + 1, "lr": lr, "time_s": round(t1 - t0, 3), "t_end": round(t1, 3)}
            keys = sorted(sums)
            packed = torch.stack([sums[k].reshape(()).to(self.device) for k in keys]).double()
            dist.all_reduce_sum(packed)  # every rank logs the mean over all ranks
            rec.update({k: float(v) / (steps * dist.world_size()) for k, v in zip(keys, packed)})
            last = epoch + 1 == epochs
            if (epoch + 1) % int(cfg.train.eval_every) == 0 or last:
                ev = self._evaluate()
                self._last_eval = (epoch + 1, ev)  # the final metrics reuse the last epoch's
                for split, res in ev.items():
                    rec[f"{split}_top1"] = res["top1"]
                    rec[f"{split}_groups"] = res["groups"]
            if int(cfg.nc.every) and ((epoch + 1) % int(cfg.nc.every) == 0 or last):
                nc, _ = neural_collapse(self.method, cfg, self.bundle, self.choice, self.device, splits=("train",),
                                        amp=self.amp, channels_last=self.channels_last,
                                        max_samples=int(cfg.nc.max_samples))
                rec["nc"] = nc_summary(nc["train"])
            self._log_epoch(rec, tb)
            if not bar.enabled and dist.is_main():
                self.log(_epoch_line(rec, epochs))
            if (epoch + 1) % int(cfg.train.ckpt_every) == 0 or last:
                self._save(epoch + 1, self.wall_before + time.time() - t_start)
                last_ckpt_epoch = epoch + 1
        bar.close()
        self._calibrate()
        wall = self.wall_before + time.time() - t_start
        result = self.final_metrics(wall)
        if tb is not None:
            tb.close()
        return result

    def _to_device(self, b: dict) -> dict:
        def mv(x):
            x = x.to(self.device, non_blocking=True)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            return x

        x = b["x"]
        return {"x": [mv(v) for v in x] if isinstance(x, (list, tuple)) else mv(x),
                "y": b["y"].to(self.device, non_blocking=True), "index": b["index"]}

    def _calibrate(self) -> None:
        """Let the method settle inference-time choices on the validation split (never the test set)."""
        self.calibration = None
        if self.bundle.val is None:
            return

        def val_batches():
            for x, y in iter_eval(self.cfg, self.bundle, "val", self.choice, self.device):
                yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x), y

        was = self.method.training
        self.method.eval()
        with autocast_ctx(self.device, self.amp):
            self.calibration = self.method.calibrate(val_batches)
        self.method.train(was)
        if self.calibration:
            self.log("calibrate " + ", ".join(f"{k} {v}" for k, v in self.calibration.items() if not isinstance(v, dict)))

    def _evaluate(self) -> dict[str, dict]:
        """Accuracy on the validation split (if any) and the test set (unless train.eval_test is off)."""
        out = {}
        if self.bundle.val is not None:
            out["val"] = evaluate_accuracy(self.method, self.cfg, self.bundle, self.choice, self.device, self.amp,
                                           self.channels_last, split="val")
        if self.cfg.train.eval_test:
            out["test"] = evaluate_accuracy(self.method, self.cfg, self.bundle, self.choice, self.device, self.amp,
                                            self.channels_last, split="test")
        return out

    def final_metrics(self, wall: float) -> dict:
        last = getattr(self, "_last_eval", None)
        # the last epoch was evaluated in the loop: the same model, so read each split once
        # (again only if the method changed its inference on the validation split since)
        reuse = last is not None and last[0] == int(self.cfg.train.epochs) and not getattr(self, "calibration", None)
        ev = last[1] if reuse else self._evaluate()
        res = ev.get("test", {})
        out = {
            **res,
            "test_evaluated": "test" in ev,
            "class_counts": [int(c) for c in self.bundle.class_counts],
            **({"val": ev["val"], "val_per_class": int(self.cfg.data.val_per_class),
                "val_moved_from_train": self.bundle.val_moved} if "val" in ev else {}),
            "epoch": int(self.cfg.train.epochs),
            "data": self.bundle.label,
            "pipeline": "fast" if self.choice.fast else "conventional",
            "compile": dict(self.compile_info),
            "calibration": getattr(self, "calibration", None),
            "device": device_name(self.device),
            "world_size": dist.world_size(),
            "parameters": self.n_params,
            "wall_time_s": round(wall, 2),
            "git_commit": git_commit(),
            "versions": versions(),
            "config": to_dict(self.cfg),
        }
        if dist.is_main():
            atomic_write_json(self.out / "metrics.json", out)
        return out


# runtime settings that may differ when a run is resumed or re-evaluated elsewhere
RUNTIME_TOP = {"device"}
RUNTIME_KEYS = {"data.root", "data.num_workers", "data.download", "data.cache_dir", "train.progress", "name"}


def _is_runtime(key: str) -> bool:
    return key in RUNTIME_KEYS or key.split(".")[0] in RUNTIME_TOP


def saved_with_runtime(saved: DictConfig, given: DictConfig | None, overrides=()) -> DictConfig:
    """The saved config with the runtime keys of ``given`` and of ``overrides`` applied."""
    if given is not None:
        d = flatten(to_dict(given))
        for k in d:
            if _is_runtime(k):
                set_key(saved, k, d[k], "the command line")
    for text in overrides:
        k, v = parse_override(text)
        if not _is_runtime(k):
            raise ConfigError(
                f"'{k}' cannot change in a resumed run or a re-evaluation (only {', '.join(sorted(RUNTIME_KEYS | RUNTIME_TOP))}); "
                "start a new run to change it"
            )
        set_key(saved, k, v, "the command line")
    return saved


def _epoch_line(rec: dict, epochs: int) -> str:
    s = f"epoch {rec['epoch']:>3}/{epochs} loss {rec['loss']:.4f} lr {rec['lr']:.4f} {rec['time_s']:.1f}s"
    for split in ("val", "test"):
        if f"{split}_top1" in rec:
            g = rec[f"{split}_groups"]
            s += f" | {split} top1 {rec[f'{split}_top1']:.2f}" + "".join(
                f" {k} {'-' if g[k] is None else f'{g[k]:.1f}'}" for k in ("many", "medium", "few"))
    return s


class _NullBar:
    enabled = False

    def update(self, n):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled or total <= 0:
        return _NullBar()
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="step", dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
    bar.enabled = True
    return bar


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if it is broken
        return None
    return SummaryWriter(str(path))


def load_run(run_dir: str | Path, device: str = "auto", overrides=()) -> "Trainer":
    """A Trainer restored from a run directory's checkpoint (for eval, nc and report);
    ``overrides`` may change runtime keys only (data.root where the data moved, ...)."""
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).is_file():
        raise RunDirError(f"{run_dir} holds no {CHECKPOINT}: is it a run directory made by `allnc train`?")
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    cfg = saved_with_runtime(from_dict(ckpt["config"]), None, [f"device={device}", *overrides])
    t = Trainer.__new__(Trainer)
    t.out, t.resume, t.log = run_dir, False, print
    t._build(cfg)
    t.method.load_state_dict(ckpt["method"])
    t.ckpt_epoch = int(ckpt["epoch"])
    return t
