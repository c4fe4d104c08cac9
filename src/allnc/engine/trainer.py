"""The one training loop of the package, for every method."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from .. import dist
from ..config import from_dict, to_dict, to_yaml
from ..data import groups as class_groups, validation_key
from ..errors import ConfigError, RunDirError, TrainingDiverged
from ..methods import StepState
from ..metrics import nc_summary
from ..rundir import (CHECKPOINT, COMPILE_ERROR, CONFIG, LOCK, LOG, METRICS, METRICS_LOG, RUN_FILES, RunLock,
                      atomic_write_json, atomic_write_text, describe_os_error, holds_run, is_run_entry)
from .checkpoint import load_checkpoint, save_checkpoint
from .context import (RunContext, check_resume_config, check_same_data, data_facts, load_run,  # noqa: F401 (load_run: public)
                      load_state, saved_with_runtime)
from .evaluate import autocast_ctx, evaluate_accuracy, neural_collapse
from .loaders import build_train_loaders, iter_eval
from .loggers import NullLogger, make_logger
from .progress import Heartbeat, epoch_line, progress_bar
from .runtime import device_name, git_commit, resolve_device, seed_epoch, source_state, versions  # noqa: F401 (public here too)
from .schedule import lr_at
from .stepper import Stepper


def _foreign(out: Path) -> bool:
    """A folder that holds files, none of them a run's: not ours to write into or empty (the
    lock, and the log a grid opens before its run starts, are a run's)."""
    return (out.is_dir() and any(p.name not in (LOCK, LOG) for p in out.iterdir())
            and not holds_run(out))


def refuse_foreign(out: Path, resume: bool) -> None:
    if _foreign(out):
        if resume:
            raise RunDirError(f"--resume: no run in {out}; drop --resume and choose another --out")
        raise RunDirError(f"{out} is not empty and is not a run directory (it has none of {', '.join(RUN_FILES)}), "
                          "choose another --out: a run writes only into a new or empty folder or its own run directory")


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write into an existing run unless asked: never an interactive prompt; and
    --overwrite empties only a run directory, never a folder of other files."""
    refuse_foreign(out, resume)
    if resume:
        if not (out / CHECKPOINT).is_file():
            if holds_run(out):
                raise RunDirError(f"--resume: {out} holds no {CHECKPOINT} (the run stopped before its first "
                                  "checkpoint); start it again with --overwrite")
            raise RunDirError(f"--resume: no run in {out}; drop --resume to start a new run there")
        return
    if out.exists() and any(p.name not in (LOCK, LOG) for p in out.iterdir()):
        if not overwrite:
            if not (out / CHECKPOINT).is_file():  # nothing to continue: do not offer --resume
                raise RunDirError(f"run directory {out} holds a run that stopped before its first checkpoint; "
                                  "pass --overwrite to start it again, or choose another --out")
            raise RunDirError(
                f"run directory {out} already exists and is not empty; pass --resume to continue it, "
                "--overwrite to replace it, or choose another --out"
            )
        others = sorted(p.name for p in out.iterdir() if not is_run_entry(p.name))
        if others:  # --overwrite empties a run directory, never the user's own files beside a run's
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise RunDirError(f"--overwrite: {out} holds files that are not a run's ({shown}); nothing was deleted: "
                              "move them away or choose another --out")
        if dist.is_main():
            for p in out.iterdir():
                if p.name not in (LOCK, LOG):  # the log of the process now starting stays
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    dist.barrier()


class Trainer:
    def __init__(self, cfg: DictConfig | None, out: str | Path, resume: bool = False, overwrite: bool = False,
                 log=print, overrides: list[str] | tuple = ()):
        """``cfg`` may be None with ``resume``: the run's saved config is used, with
        ``overrides`` limited to runtime keys (device, data.root, ...)."""
        self.out = Path(out)
        self.log = log if dist.is_main() else (lambda *a, **k: None)
        self.resume = resume
        self.last_ckpt_epoch = 0
        if resume and overwrite:
            raise RunDirError(f"--resume continues the run in {self.out} and --overwrite replaces it; give one of them")
        if resume and not self.out.is_dir():  # before the lock would make the folder
            raise RunDirError(f"--resume: no run in {self.out}; drop --resume to start a new run there")
        refuse_foreign(self.out, resume)  # before the lock leaves its file in someone else's folder
        # one writer per run directory, from the check of the directory to the end of the run
        try:
            self.lock = RunLock(self.out).acquire() if dist.is_main() else None
        except OSError as e:
            raise RunDirError(describe_os_error(e, "creating the run directory") + "; choose another --out") from None
        try:
            ckpt = None
            if resume:
                prepare_run_dir(self.out, True, False)
                ckpt = load_checkpoint(self.out / CHECKPOINT)
                saved = from_dict(ckpt["config"])
                check_resume_config(saved, cfg)
                cfg = saved_with_runtime(saved, cfg, overrides)
            else:
                prepare_run_dir(self.out, False, overwrite)
            self._setup(cfg, ckpt)
        except BaseException:
            self.release()
            raise

    def _setup(self, cfg: DictConfig, ckpt: dict | None) -> None:
        # train.logger (a missing wandb is a one-line error here, before any data is read)
        self.run_logger = make_logger(cfg) if dist.is_main() else NullLogger()
        self.ctx = ctx = RunContext.build(cfg, init_from=cfg.init_from if ckpt is None else None,
                                            restored=ckpt is not None)
        self.cfg, self.device, self.amp, self.channels_last = ctx.cfg, ctx.device, ctx.amp, ctx.channels_last
        self.bundle, self.info, self.method, self.choice, self.n_params = (ctx.bundle, ctx.info, ctx.method, ctx.choice,
                                                                           ctx.n_params)
        k, nc_max = self.bundle.num_classes, int(cfg.nc.max_samples)
        if int(cfg.nc.every) and 0 < nc_max < k:  # found now, not after nc.every epochs of training
            raise ConfigError(f"nc.max_samples={nc_max} is below the {k} classes (one image each at least); give "
                              f"nc.max_samples >= {k} or 0 for all")
        if ckpt is not None:  # a resume goes on with the data it began with
            check_same_data(ckpt, self.out, self.bundle, cfg, f"the run in {self.out}")
        self.loaders = build_train_loaders(cfg, self.bundle, self.method.loaders, self.choice, self.device,
                                           self.channels_last)
        self.steps = len(self.loaders[0])
        self.data_facts = data_facts(self.bundle)  # recorded in every checkpoint
        on_gpu = self.device.type == "cuda"
        compile_ = cfg.train.compile == "on" or (cfg.train.compile == "auto" and on_gpu and self.choice.fast)
        self.stepper = Stepper(self.method, cfg, self.device, self.amp, compile_, log=self.log)
        self.opt = self.stepper.opt
        self.start_epoch = 0
        self.history: list[dict] = []
        if ckpt is not None:
            load_state(lambda: self.method.load_state_dict(ckpt["method"]), f"the checkpoint of {self.out}")
            self.opt.load_state_dict(ckpt["optimizer"])
            self.start_epoch = int(ckpt["epoch"])
            self.history = list(ckpt.get("history", []))
        self.last_ckpt_epoch = self.start_epoch  # an interrupt during start-up keeps the checkpoint's advice
        # the code each start of this run executed (read now, not when the run ends: a commit
        # made while it trains is not the code it ran); a resume adds one entry
        self.sources = (list(ckpt.get("sources", [])) if ckpt else []) + [source_state(self.start_epoch)]
        self.wall_before = float(ckpt.get("wall_time", 0.0)) if ckpt else 0.0

    def release(self) -> None:
        if getattr(self, "lock", None) is not None:
            self.lock.release()
            self.lock = None

    # ------------------------------------------------------------------------------
    def describe(self) -> None:
        c, b = self.cfg, self.bundle
        counts = np.asarray(b.class_counts)
        g = class_groups(counts)
        info = self.stepper.info
        self.log(f"data     {b.label}: {len(b.train.targets)} train / {len(b.test.targets)} test images, "
                 f"{b.num_classes} classes, n_max {counts.max()} n_min {counts.min()}, "
                 f"groups many/medium/few {len(g['many'])}/{len(g['medium'])}/{len(g['few'])}")
        self.log(f"run      {c.display_name or c.method.name} ({c.config_name or 'no named config'})")
        stem = f", stem stride {c.model.stem_stride}" if c.model.stem_stride != 1 else ""
        self.log(f"model    {c.model.name} (width {c.model.width}{stem}) + {c.method.name}: {self.n_params:,} parameters")
        self.log(f"device   {device_name(self.device)}; pipeline {self.choice.name} [{self.choice.reason}]; "
                 f"{'bf16 autocast' if self.amp else 'fp32'}"
                 f"{', channels_last' if self.channels_last else ''}"
                 f"{', compiled step (' + _compile_label(info) + ')' if info['used'] else ''}"
                 f"{f', {dist.world_size()} processes' if dist.is_dist() else ''}")
        self.log(f"schedule {c.train.epochs} epochs x {self.steps} steps, batch {c.train.batch_size}, "
                 f"lr {c.train.lr} ({c.train.schedule}), out {self.out}")
        if c.train.schedule == "step" and any(m >= c.train.epochs for m in c.train.milestones):
            self.log(f"warning  train.milestones {list(c.train.milestones)} reach beyond train.epochs="
                     f"{c.train.epochs}: those decays never happen")
        if not c.train.eval_test and b.val is None:
            self.log("warning  train.eval_test=false and no validation split: this run evaluates nothing (a backbone "
                     f"for a second stage, say); give {validation_key(c)} to measure it")
        if c.train.warmup_epochs >= c.train.epochs:
            self.log(f"warning  train.warmup_epochs={c.train.warmup_epochs} is not shorter than train.epochs="
                     f"{c.train.epochs}: the learning rate never reaches train.lr={c.train.lr}")

    def _save(self, epoch_done: int, wall: float) -> None:
        if not dist.is_main():
            return
        save_checkpoint(self.out / CHECKPOINT, {
            "method": self.method.state_dict(), "optimizer": self.opt.state_dict(), "epoch": epoch_done,
            "config": to_dict(self.cfg), "history": self.history, "wall_time": wall, "versions": versions(),
            "sources": self.sources, "data_facts": self.data_facts,
        })

    def _log_epoch(self, rec: dict) -> None:
        self.history.append(rec)
        if not dist.is_main():
            return
        with open(self.out / METRICS_LOG, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.run_logger.log_epoch(rec)

    def _to_device(self, b: dict) -> dict:
        def mv(x):
            x = x.to(self.device, non_blocking=True)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            return x

        x = b["x"]
        return {"x": [mv(v) for v in x] if isinstance(x, (list, tuple)) else mv(x),
                "y": b["y"].to(self.device, non_blocking=True), "index": b["index"]}

    def _first_batches(self, epoch: int):
        def gen():
            for ld in self.loaders:
                ld.set_epoch(epoch)
            for batches in zip(*self.loaders):
                yield [self._to_device(b) for b in batches]

        return gen

    def fit(self) -> dict:
        try:
            return self._fit()
        except OSError as e:
            kept = (f"the last good checkpoint (epoch {self.last_ckpt_epoch}) is kept: fix that and continue with "
                    "--resume" if self.last_ckpt_epoch else "no checkpoint was written: fix that and start again "
                    "with --overwrite")
            raise RunDirError(describe_os_error(e, "writing") + f"; {kept}") from None
        finally:
            if getattr(self, "run_logger", None) is not None:
                self.run_logger.close(exit_code=1)  # after a failure; nothing left to close after success
            self.release()

    def _fit(self) -> dict:
        cfg = self.cfg
        if dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / CONFIG, to_yaml(cfg))
            if self.resume and (self.out / METRICS_LOG).exists():
                # keep exactly the epochs the checkpoint knows about
                atomic_write_text(self.out / METRICS_LOG, "".join(json.dumps(r) + "\n" for r in self.history))
        if self.start_epoch < int(cfg.train.epochs):
            self.stepper.error_log = self.out / COMPILE_ERROR if dist.is_main() else None
            self.stepper.probe(self._first_batches(self.start_epoch), self.start_epoch, self.steps)
        self.describe()
        self.run_logger.start(self.out, cfg, resume=self.resume)  # tensorboard | wandb | none (train.logger)
        epochs, steps = int(cfg.train.epochs), self.steps
        if self.start_epoch >= epochs:
            self.log(f"resume   the run already finished its {epochs} epochs; evaluating it again")
        elif self.start_epoch:
            self.log(f"resume   from epoch {self.start_epoch} of {epochs}")
        # a bar on a terminal; one line per epoch in logs and pipes
        bar = progress_bar(total=(epochs - self.start_epoch) * steps,
                           enabled=bool(cfg.train.progress) and dist.is_main() and sys.stderr.isatty())
        t_start = time.time()
        self.last_ckpt_epoch = self.start_epoch
        # in logs and pipes a line at least every 30 s inside an epoch: step, images/s, ETA
        heartbeat = Heartbeat(self.log, epochs, self.start_epoch, steps,
                              images_per_step=int(cfg.train.batch_size) * len(self.loaders))
        for epoch in range(self.start_epoch, epochs):
            t0 = time.time()
            seed_epoch(int(cfg.seed), epoch)
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
                self.stepper.set_lr(lr)
                loss, logs = self.stepper.step([self._to_device(b) for b in batches], state)
                logs = {"loss": loss.detach(), **logs}
                for k, v in logs.items():  # summed where they live: no host sync per step on a GPU
                    v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v), device=self.device)
                    sums[k] = sums.get(k, 0) + v
                check = self.device.type == "cpu" or (step + 1) % int(cfg.train.log_every_steps) == 0 or step == steps - 1
                if check and not math.isfinite(float(sums["loss"])):
                    bar.close()
                    kept = (f"the last good checkpoint (epoch {self.last_ckpt_epoch}) is kept in {self.out}; lower "
                            "train.lr or the loss weights and start again with --overwrite (a resume would repeat "
                            "the same steps: they are deterministic and train.lr cannot change in a resumed run)"
                            if self.last_ckpt_epoch else
                            "no checkpoint was written yet; lower train.lr or the loss weights and start again with "
                            "--overwrite")
                    raise TrainingDiverged(
                        f"the training loss became {float(loss.detach())} at epoch {epoch + 1} step {step + 1}; {kept}")
                bar.update(1)
                if bar.enabled and (step % 10 == 0 or step == steps - 1):  # reading the loss waits for the GPU
                    bar.set_postfix_str(f"epoch {epoch + 1}/{epochs} loss {float(loss.detach()):.3f} lr {lr:.4f}")
                if not bar.enabled and dist.is_main():
                    heartbeat.tick(epoch, step, steps)
            t1 = time.time()
            rec = {"epoch": epoch + 1, "lr": lr, "time_s": round(t1 - t0, 3), "t_end": round(t1, 3)}
            keys = sorted(sums)
            packed = torch.stack([sums[k].reshape(()).to(self.device) for k in keys]).double()
            dist.all_reduce_sum(packed)  # every rank logs the mean over all ranks
            rec.update({k: float(v) / (steps * dist.world_size()) for k, v in zip(keys, packed)})
            last = epoch + 1 == epochs
            self._measure(rec, epoch + 1, last)
            self._log_epoch(rec)
            if dist.is_main():  # at a terminal above the bar, else a plain line
                (bar.write if bar.enabled else self.log)(epoch_line(rec, epochs))
            if (epoch + 1) % int(cfg.train.ckpt_every) == 0 or last:
                self._save(epoch + 1, self.wall_before + time.time() - t_start)
                self.last_ckpt_epoch = epoch + 1
        bar.close()
        if self.start_epoch >= epochs:
            self._measure_again()
        # the time spent training: measuring a finished run again adds none
        wall = self.wall_before + (time.time() - t_start if self.start_epoch < epochs else 0.0)
        result = self.final_metrics(wall)
        last_nc = self.history[-1].get("nc") if self.history and self.history[-1]["epoch"] == epochs else None
        self.run_logger.log_final(result, last_nc)
        self.run_logger.close()
        return result

    def _measure(self, rec: dict, epoch_done: int, last: bool) -> None:
        """The epoch's evaluation and NC figures into ``rec``. After the last epoch the method
        first settles its inference on the validation split, so that the last record, the
        final metrics and the checkpoint saved next all describe one model."""
        cfg = self.cfg
        if last:
            self._calibrate()
        if epoch_done % int(cfg.train.eval_every) == 0 or last:
            ev = self._evaluate()
            self._last_eval = (epoch_done, ev)  # the final metrics reuse the last epoch's
            for split, res in ev.items():
                rec[f"{split}_top1"] = res["top1"]
                rec[f"{split}_groups"] = res["groups"]
        if int(cfg.nc.every) and (epoch_done % int(cfg.nc.every) == 0 or last):
            nc, _ = neural_collapse(self.ctx, splits=("train",), max_samples=int(cfg.nc.max_samples))
            rec["nc"] = nc_summary(nc["train"])

    def _measure_again(self) -> None:
        """--resume of a finished run: the end of training once more with this code (calibration,
        the last record's evaluation and NC figures, the checkpoint); the epochs are not re-run."""
        epochs = int(self.cfg.train.epochs)
        if not self.history or self.history[-1].get("epoch") != epochs:
            self._calibrate()
            return
        rec = {k: v for k, v in self.history[-1].items()
               if not (k == "nc" or k.startswith(("val_", "test_")))}
        self._measure(rec, epochs, last=True)
        self.history[-1] = rec
        if dist.is_main():
            atomic_write_text(self.out / METRICS_LOG, "".join(json.dumps(r) + "\n" for r in self.history))
        self._save(epochs, self.wall_before)

    def _calibrate(self) -> None:
        """Let the method settle inference-time choices on the validation split (never the test set)."""
        self.calibration = None
        if self.bundle.val is None:
            return

        def val_batches():
            for x, y in iter_eval(self.cfg, self.bundle, "val", self.choice, self.device):
                yield self.ctx.prep(x), y

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
            out["val"] = evaluate_accuracy(self.ctx, split="val")
        if self.cfg.train.eval_test:
            out["test"] = evaluate_accuracy(self.ctx, split="test")
        return out

    def final_metrics(self, wall: float) -> dict:
        last = getattr(self, "_last_eval", None)
        # the last epoch was evaluated (after any calibration): the same model, so read each split once
        reuse = last is not None and last[0] == int(self.cfg.train.epochs)
        ev = last[1] if reuse else self._evaluate()
        res = ev.get("test", {})
        out = {
            **res,
            "test_evaluated": "test" in ev,
            "config_name": str(self.cfg.config_name),
            "display_name": str(self.cfg.display_name),
            "classes": list(self.bundle.classes),
            "class_counts": [int(c) for c in self.bundle.class_counts],
            # with classes and class_counts: what `allnc predict` needs without the training data
            "preprocessing": {"mean": list(self.bundle.mean), "std": list(self.bundle.std),
                              "image_hw": list(self.bundle.image_hw), "in_channels": int(self.bundle.in_channels),
                              "small": bool(self.bundle.small)},
            **({"val": ev["val"], "val_per_class": int(self.cfg.data.val_per_class),
                **({"val_list": str(self.cfg.data.val_list)} if self.cfg.data.get("val_list") else {}),
                "val_moved_from_train": self.bundle.val_moved} if "val" in ev else {}),
            "epoch": int(self.cfg.train.epochs),
            "data": self.bundle.label,
            "pipeline": "fast" if self.choice.fast else "conventional",
            "compile": dict(self.stepper.info),
            "calibration": getattr(self, "calibration", None),
            "device": device_name(self.device),
            "world_size": dist.world_size(),
            "parameters": self.n_params,
            "wall_time_s": round(wall, 2),
            # the commit the last start of the run executed; `sources` has every start's
            "git_commit": self.sources[-1]["git_commit"],
            "source_modified": self.sources[-1]["source_modified"],
            "sources": self.sources,
            "versions": versions(),
            "config": to_dict(self.cfg),
        }
        if dist.is_main():
            atomic_write_json(self.out / METRICS, out)
        return out


def _compile_label(info: dict) -> str:
    """``default``, ``reduce-overhead``, ...; the backend too where it is not inductor."""
    return info["mode"] if info["backend"] == "inductor" else f"{info['backend']}, {info['mode']}"
