"""The training step: the method's loss (through DistributedDataParallel when there are
several processes), backward and the SGD step, optionally compiled, with the compilation
probe and its fallback."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from .. import dist
from ..errors import ConfigError
from ..methods import Method, StepState
from .evaluate import autocast_ctx


class _TrainStep(nn.Module):
    """What DistributedDataParallel wraps: its forward is the method's training loss."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, batches, state):
        return self.method.training_loss(batches, state)


class Stepper:
    """``step(batches, state)`` runs one training step and returns (loss, logs).

    With compilation the method's step and the optimizer step go through ``torch.compile``
    (``train.compile_backend``, ``train.compile_mode``); ``probe`` then runs the first steps
    (compilation, CUDA-graph recording, the first replay), puts every value back, and falls
    back along ``compile_stages`` (a CUDA-graph mode, the default mode, on a GPU the
    ``cudagraphs`` backend, then eager) if anything fails, saying so once through ``log`` and
    recording it in ``info``. A Triton failure on a persistent-reduction kernel first gets the
    same stage again with persistent reductions off (``persistent_reduction_failure``)."""

    def __init__(self, method: Method, cfg, device: torch.device, amp: bool, compile_: bool, log: Callable = print):
        self.method, self.cfg, self.device, self.amp, self.log = method, cfg, device, amp, log
        on_gpu = device.type == "cuda"
        groups = method.parameter_groups(float(cfg.train.weight_decay))
        # a compiled optimizer step reads the learning rate from a tensor on the device (no
        # recompilation when it changes; CUDA graphs can hold it); otherwise a fused kernel on the GPU
        lr0 = torch.tensor(float(cfg.train.lr), device=device) if compile_ else float(cfg.train.lr)
        self.opt = torch.optim.SGD(groups, lr=lr0, momentum=float(cfg.train.momentum), nesterov=bool(cfg.train.nesterov),
                                   **({"fused": True} if on_gpu and not compile_ else {}))
        if compile_:  # each group its own tensor: a group's ``lr_mult`` scales the rate it is given
            for g in self.opt.param_groups:
                g["lr"] = torch.tensor(float(cfg.train.lr) * g.get("lr_mult", 1.0), device=device)
        self.step_module: nn.Module = _TrainStep(method)
        backend = str(cfg.train.compile_backend)
        if compile_ and backend == "cudagraphs" and not on_gpu:
            raise ConfigError(f"train.compile_backend=cudagraphs needs a CUDA device (device is {device.type}); "
                              "use train.compile_backend=inductor or train.compile=off")
        if dist.is_dist():
            dev_ids = [device.index] if device.type == "cuda" else None
            self.step_module = nn.parallel.DistributedDataParallel(self.step_module, device_ids=dev_ids)
        self.step_fn = self.step_module
        self.opt_step = self.opt.step
        # what was asked for and what runs: a failed compilation falls back (see probe)
        self.info = {"requested": bool(compile_), "used": False, "backend": backend,
                     "mode": str(cfg.train.compile_mode),
                     "persistent_reductions": bool(cfg.train.compile_persistent_reductions),
                     "fallback": None, "probe_s": None}
        self._mark_step = False
        self.error_log: Optional[Path] = None  # where the probe writes a compiler failure in full
        if compile_:
            self._init_momentum()
            self.compile(str(cfg.train.compile_mode), backend)

    # ------------------------------------------------------------------ the step
    def set_lr(self, lr: float) -> None:
        """Every parameter group's rate: ``lr`` times the group's ``lr_mult`` (1 without one;
        a method sets it in ``parameter_groups``)."""
        for g in self.opt.param_groups:
            v = lr * g.get("lr_mult", 1.0)
            if torch.is_tensor(g["lr"]):
                g["lr"].fill_(v)
            else:
                g["lr"] = v

    def step(self, batches: list[dict], state: StepState) -> tuple[torch.Tensor, dict]:
        if self._mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast_ctx(self.device, self.amp):
            loss, logs = self.step_fn(batches, state)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_step()
        self.method.after_step(state)
        return loss, logs

    # ------------------------------------------------------------------ compilation
    @torch.no_grad()
    def _init_momentum(self) -> None:
        """Create SGD's momentum buffers now, as zeros, outside any compiled code: a buffer
        created inside a CUDA-graph step would live in the graph's memory and be overwritten
        by the next replay. SGD treats a zero buffer exactly like a missing one
        (0.9 * 0 + g = g), so the steps are unchanged."""
        if float(self.cfg.train.momentum) == 0:
            return
        for g in self.opt.param_groups:
            for p in g["params"]:
                if p.requires_grad and "momentum_buffer" not in self.opt.state[p]:
                    self.opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def compile(self, mode: str, backend: str, persistent: Optional[bool] = None) -> None:
        """Compile the step in ``backend`` and ``mode``; ``persistent``: inductor's persistent
        reductions (default: as ``info`` says, from ``train.compile_persistent_reductions``)."""
        persistent = self.info["persistent_reductions"] if persistent is None else bool(persistent)
        if backend == "cudagraphs":
            # no generated kernels: the step's forward and backward are recorded as CUDA graphs
            # and replayed; the optimizer stays eager (its buffers in ordinary memory)
            mode = "default"
            self.step_fn = torch.compile(self.step_module, backend=backend)
            self.opt_step = self.opt.step
            self._float_lr()
        else:
            self.step_fn = torch.compile(self.step_module, backend=backend, **compile_kwargs(backend, mode, persistent))
            # the optimizer step is a few fused element-wise kernels: compiled without CUDA graphs,
            # so that its state stays in ordinary memory
            self.opt_step = torch.compile(self.opt.step, backend=backend, **compile_kwargs(backend, "default", persistent))
        self.info.update(used=True, backend=backend, mode=mode, persistent_reductions=persistent)
        # CUDA graph trees want to know where a training iteration begins
        self._mark_step = self.device.type == "cuda" and (
            backend == "cudagraphs" or mode in ("reduce-overhead", "max-autotune"))

    def _float_lr(self) -> None:
        for g in self.opt.param_groups:  # eager SGD takes a plain float
            if torch.is_tensor(g["lr"]):
                g["lr"] = float(g["lr"])

    def uncompile(self) -> None:
        self.step_fn, self.opt_step = self.step_module, self.opt.step
        self._mark_step = False
        self.info["used"] = False
        self._float_lr()

    def _state_tensors(self) -> list[torch.Tensor]:
        return [*self.method.parameters(), *self.method.buffers()]

    def _snapshot(self) -> dict:
        """Every value a training step changes: parameters, buffers, optimizer state."""
        return {
            "tensors": [t.detach().clone() for t in self._state_tensors()],
            "opt": {id(p): {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in st.items()}
                    for p, st in self.opt.state.items()},
        }

    @torch.no_grad()
    def _restore(self, snap: dict) -> None:
        """Put the snapshot back in place (the same tensor objects, so compiled code that
        holds them stays valid). SGD momentum buffers created since the snapshot are zeroed:
        SGD's first step sets the buffer to the gradient, and 0.9 * 0 + g is g, so a zero
        buffer gives exactly the step that a missing one would."""
        for t, v in zip(self._state_tensors(), snap["tensors"]):
            try:
                t.copy_(v)
            except RuntimeError:  # a tensor a failed CUDA graph left unusable: replace its storage
                t.data = v.clone()
        for p, st in self.opt.state.items():
            old = snap["opt"].get(id(p), {})
            for k, v in st.items():
                if not torch.is_tensor(v):
                    continue
                if k in old and torch.is_tensor(old[k]):
                    st[k] = _copied_into(v, old[k])
                elif k == "momentum_buffer":
                    st[k] = _copied_into(v, torch.zeros_like(v))
                else:
                    raise RuntimeError(f"optimizer state '{k}' appeared during the compilation probe")

    def _keep_error(self, stage: str, e: BaseException) -> None:
        """The whole traceback of a compiler failure, for whoever debugs it (the console gets one line)."""
        if self.error_log is None:
            return
        import traceback

        try:
            with open(self.error_log, "a") as f:
                f.write(f"== {stage}\n{''.join(traceback.format_exception(e))}\n")
        except OSError:
            pass

    def probe(self, first_batches: Callable[[], Iterable[list[dict]]], epoch: int, steps_per_epoch: int,
              steps: int = 3) -> None:
        """Run the first ``steps`` compiled steps on ``first_batches()`` (batches of epoch
        ``epoch``, already on the device), then put every parameter, buffer and optimizer value
        back: the run is the one it would have been without the probe. On any failure, a
        CUDA-graph mode falls back to the default mode, then to eager; a persistent-reduction
        kernel that Triton cannot compile first gets the failed stage again with persistent
        reductions off (and they stay off for the later stages)."""
        if self.step_fn is self.step_module:
            return
        epochs = int(self.cfg.train.epochs)
        persistent = self.info["persistent_reductions"]
        stages = [(b, m, persistent) for b, m in compile_stages(self.device.type, self.info["backend"], self.info["mode"])]
        errors = []
        t0 = time.time()
        i = 0
        while i < len(stages):
            backend, mode, persistent = stages[i]
            if i:
                torch._dynamo.reset()
                self.compile(mode, backend, persistent)
            i += 1
            snap = self._snapshot()
            try:
                self.method.on_epoch_start(epoch, epochs)
                self.method.train()
                self.set_lr(float(self.cfg.train.lr) * 1e-3)
                for step, batches in zip(range(steps), first_batches()):
                    self.step(batches, StepState(epoch, epochs, step, steps_per_epoch))
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self._restore(snap)
                self.info["probe_s"] = round(time.time() - t0, 2)
                if errors:
                    self.info["fallback"] = "; ".join(errors)
                    self.log(f"compile  {errors[-1]}; using {_stage_name(backend, mode, persistent)} instead")
                return
            except Exception as e:  # noqa: BLE001 - any compiler or CUDA-graph failure
                self._restore(snap)
                name = _stage_name(backend, mode, persistent)
                errors.append(f"{name} failed ({type(e).__name__}: {_reason(e)})")
                self._keep_error(name, e)
                if backend == "inductor" and persistent and persistent_reduction_failure(e):
                    stages = stages[:i] + [(backend, mode, False)] + [
                        (b, m, False if b == "inductor" else p) for b, m, p in stages[i:]]
        torch._dynamo.reset()
        self.uncompile()
        self.info["fallback"] = "; ".join(errors) + "; trained eagerly"
        self.info["probe_s"] = round(time.time() - t0, 2)
        self.log(f"compile  {errors[-1]}; training eagerly (not compiled)"
                 + (f"; the full error is in {self.error_log}" if self.error_log else ""))


# inductor settings of every compiled step, on top of its mode's own
INDUCTOR_OPTIONS = {
    # torch 2.11's reordering for peak memory can place a buffer's first use before its
    # allocation in the generated backward (UnboundLocalError: 'buf8'), seen for LDAM-DRW, fixed
    # ETF + DR and BCL on ResNet-32 under bf16 autocast (the GPU's precision, run on the CPU);
    # a network this small has no memory to save
    "reorder_for_peak_memory": False,
}


def compile_kwargs(backend: str, mode: str, persistent_reductions: bool = True) -> dict:
    """``torch.compile``'s keywords for ``backend`` in ``mode``: for inductor, the mode's own
    options plus those of ``INDUCTOR_OPTIONS`` that this torch knows (torch.compile takes a
    mode or options, not both, and refuses an option it does not know), and
    ``triton.persistent_reductions=False`` when ``persistent_reductions`` is false."""
    if backend != "inductor":
        return {}
    from torch._inductor import config as inductor_config, list_mode_options

    known = inductor_config.get_config_copy()  # the names torch.compile checks options against ("a.b" too)
    extra = dict(INDUCTOR_OPTIONS, **({} if persistent_reductions else {"triton.persistent_reductions": False}))
    return {"options": {**list_mode_options(mode), **{k: v for k, v in extra.items() if k in known}}}


def persistent_reduction_failure(e: BaseException) -> bool:
    """Whether ``e`` is Triton failing to compile one of inductor's persistent-reduction kernels
    (their names begin ``triton_per_``). On an H200 under torch 2.11 (2026-11-29) the fused
    batch-norm backward of AllNC (ResNet-32, bf16, normalised features) was such a kernel,
    ``PassManager::run failed`` in both compile modes; looped reductions (``triton_red_``)
    come from other code."""
    import traceback

    return "triton_per_" in "".join(traceback.format_exception(e))


def compile_stages(device_type: str, backend: str, mode: str) -> list[tuple[str, str]]:
    """The (backend, mode) pairs the probe tries, in order, before training eagerly: the
    configured one; inductor's default mode after a CUDA-graph or autotuning mode; on a GPU,
    after inductor, the ``cudagraphs`` backend (CUDA graphs without generated kernels, so a
    code-generation failure still leaves the launch-overhead saving)."""
    stages = [(backend, mode if backend == "inductor" else "default")]
    if backend == "inductor" and mode != "default":
        stages.append(("inductor", "default"))
    if backend == "inductor" and device_type == "cuda":
        stages.append(("cudagraphs", "default"))
    return stages


def _stage_name(backend: str, mode: str, persistent: bool = True) -> str:
    if backend == "cudagraphs":
        return "train.compile_backend=cudagraphs"
    return f"train.compile_mode={mode}" + ("" if persistent or backend != "inductor"
                                           else " train.compile_persistent_reductions=false")


def _copied_into(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``src`` copied into ``dst`` in place where ``dst`` is usable, else a fresh copy."""
    try:
        dst.copy_(src)
        return dst
    except RuntimeError:
        return src.clone()


def _reason(e: BaseException) -> str:
    """The message that says why: compiler errors wrap the cause, whose text follows the
    first line (``backend='inductor' raised:``) or sits in ``__cause__``."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("Set TORCH")]
    cause = e.__cause__ or e.__context__
    if cause is not None and len(lines) <= 1:
        lines.append(f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}")
    return " ".join(lines[:3])[:400]
