"""The compiled step's probe and fallback: the probe leaves the run exactly as it found it;
a compiler or CUDA-graph failure falls back (CUDA-graph mode -> default mode -> eager) on
its own, says so once and is recorded in metrics.json; the fallen-back run is the eager run."""
import json

import pytest
import torch
from torch._inductor import list_mode_options

from allnc.config import load_config
from allnc.engine.checkpoint import load_checkpoint
from allnc.engine.stepper import compile_kwargs
from allnc.engine.trainer import Trainer

FAST = ["device=cpu", "train.progress=false", "model.width=8", "train.batch_size=32", "data.num_workers=0",
        "data.imbalance_factor=10", "train.warmup_epochs=1"]


def cfg_of(root, config, *extra):
    return load_config(config, [f"data.root={root}", *FAST, *extra])


def state(t: Trainer) -> dict:
    out = {f"m.{k}": v.detach().clone() for k, v in t.method.state_dict().items()}
    for i, (p, st) in enumerate(t.opt.state.items()):
        for k, v in st.items():
            if torch.is_tensor(v):
                out[f"o.{i}.{k}"] = v.detach().clone()
    return out


@pytest.mark.parametrize("config", ["fmnist_lt_ce", "fmnist_lt_allnc"])
def test_probe_leaves_every_value_as_it_found_it(config, tiny_learnable_fmnist, tmp_path):
    """Three compiled steps run (weights, BN statistics, class-mean memories and the
    adaptor move), then every value is back; SGD momentum buffers created by the probe are
    zero, which SGD's next step treats exactly like no buffer (0.9 * 0 + g = g)."""
    t = Trainer(cfg_of(tiny_learnable_fmnist, config, "train.compile=on", "train.compile_backend=aot_eager"),
                tmp_path / "r")
    before = state(t)
    # momentum buffers exist from the start, as zeros (made outside any compiled code)
    assert t.opt.state and all(int(torch.count_nonzero(st["momentum_buffer"])) == 0 for st in t.opt.state.values())
    seen_change = {}
    orig = t.stepper._restore

    def spy(snap):  # the probe really changed the state before restoring it
        now = state(t)
        seen_change["weights"] = any(not torch.equal(now[k], before[k]) for k in before if k.endswith("weight"))
        orig(snap)

    t.stepper._restore = spy
    t.stepper.probe(t._first_batches(0), 0, t.steps, steps=3)
    assert seen_change["weights"]
    after = state(t)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    momenta = [k for k in after if k.startswith("o.")]
    assert momenta and all(torch.count_nonzero(after[k]) == 0 for k in momenta)
    info = t.stepper.info
    assert info["used"] and info["fallback"] is None and info["probe_s"] >= 0


def mode_of(kw: dict) -> str:
    """The compile mode that torch.compile's keywords ask for (a mode, or its options)."""
    if "mode" in kw:
        return kw["mode"]
    opts = kw.get("options") or {}
    for mode in ("max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead"):
        if list_mode_options(mode).items() <= opts.items():
            return mode
    return "default"


def test_inductor_gets_its_mode_and_the_extra_options():
    """Each mode reaches inductor as its own options plus INDUCTOR_OPTIONS; other backends get
    no options."""
    for mode in ("default", "reduce-overhead", "max-autotune"):
        opts = compile_kwargs("inductor", mode)["options"]
        assert mode_of({"options": opts}) == mode
        assert opts["reorder_for_peak_memory"] is False
    assert compile_kwargs("inductor", "reduce-overhead")["options"]["triton.cudagraphs"] is True
    assert "triton.cudagraphs" not in compile_kwargs("inductor", "default")["options"]
    assert compile_kwargs("aot_eager", "default") == compile_kwargs("cudagraphs", "default") == {}


def test_an_option_this_torch_does_not_know_is_left_out(monkeypatch):
    """A later torch without one of INDUCTOR_OPTIONS still compiles (torch.compile would refuse
    the unknown option); the known ones stay."""
    from allnc.engine import stepper

    extra = {"no_such_inductor_option": 1, "triton.no_such_option": 1, "triton.cudagraph_trees": True}
    monkeypatch.setattr(stepper, "INDUCTOR_OPTIONS", {**stepper.INDUCTOR_OPTIONS, **extra})
    opts = compile_kwargs("inductor", "default")["options"]
    assert opts == {"reorder_for_peak_memory": False, "triton.cudagraph_trees": True}
    with pytest.raises(RuntimeError, match="no_such_inductor_option"):
        torch.compile(lambda x: x * 2, backend="inductor", options={"no_such_inductor_option": 1})


def _failing_compile(monkeypatch, fail_when):
    """torch.compile replaced by a wrapper that runs the function eagerly until
    ``fail_when(kwargs, call_number)`` says to raise (as a compiler or CUDA-graph error would)."""
    made = []

    def fake_compile(fn, backend=None, **kw):
        calls = {"n": 0}
        made.append(mode_of(kw))

        def wrapped(*a, **k):
            calls["n"] += 1
            if fail_when(kw, calls["n"]):
                raise RuntimeError("simulated compiler failure\nsecond line")
            return fn(*a, **k)

        return wrapped

    monkeypatch.setattr(torch, "compile", fake_compile)
    return made


@pytest.mark.parametrize("config", ["fmnist_lt_ce", "fmnist_lt_allnc"])
def test_failed_compilation_falls_back_to_the_eager_run(config, tiny_learnable_fmnist, tmp_path, monkeypatch):
    """Every compiled call fails from the second one on (after one step changed the state):
    both compile modes fail, the run trains eagerly, says so once, records why, and ends with
    exactly the weights and metrics of a run with train.compile=off."""
    extra = ("train.epochs=2", "train.compile_backend=inductor")
    eager = Trainer(cfg_of(tiny_learnable_fmnist, config, *extra, "train.compile=off"), tmp_path / "eager").fit()
    made = _failing_compile(monkeypatch, lambda kw, n: n >= 2)
    lines = []
    t = Trainer(cfg_of(tiny_learnable_fmnist, config, *extra, "train.compile=on",
                       "train.compile_mode=reduce-overhead"), tmp_path / "fb", log=lines.append)
    m = t.fit()
    # the step in the CUDA-graph mode, the optimizer never in one; then both in the default mode
    assert made == ["reduce-overhead", "default", "default", "default"]
    said = [ln for ln in lines if ln.startswith("compile ")]
    assert len(said) == 1 and "training eagerly" in said[0] and "simulated compiler failure" in said[0]
    rec = json.loads((tmp_path / "fb" / "metrics.json").read_text())["compile"]
    assert rec["requested"] and not rec["used"]
    assert "reduce-overhead failed" in rec["fallback"] and "default failed" in rec["fallback"]
    # the reason's text past its first line (a compiler error puts the cause there), and the
    # whole traceback kept in the run directory
    assert "simulated compiler failure second line" in rec["fallback"]
    assert "simulated compiler failure" in (tmp_path / "fb" / "compile_error.txt").read_text()
    assert m["top1"] == eager["top1"] and m["per_class"] == eager["per_class"]
    a = load_checkpoint(tmp_path / "eager" / "checkpoint.pt")["method"]
    b = load_checkpoint(tmp_path / "fb" / "checkpoint.pt")["method"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_cuda_graph_failure_falls_back_to_the_default_mode(tiny_learnable_fmnist, tmp_path, monkeypatch):
    """Only the CUDA-graph mode fails: the run keeps a compiled step in the default mode."""
    made = _failing_compile(monkeypatch, lambda kw, n: mode_of(kw) == "reduce-overhead" and n >= 2)
    lines = []
    t = Trainer(cfg_of(tiny_learnable_fmnist, "fmnist_lt_ce", "train.epochs=1", "train.compile=on",
                       "train.compile_backend=inductor", "train.compile_mode=reduce-overhead"),
                tmp_path / "r", log=lines.append)
    t.fit()
    rec = json.loads((tmp_path / "r" / "metrics.json").read_text())["compile"]
    assert rec["used"] and rec["mode"] == "default"
    assert rec["fallback"].startswith("train.compile_mode=reduce-overhead failed (RuntimeError: simulated")
    assert sum(ln.startswith("compile ") for ln in lines) == 1
    assert made == ["reduce-overhead", "default", "default", "default"]  # then step and optimizer again


def test_compile_stages_end_on_the_cudagraphs_backend_on_a_gpu_only():
    from allnc.engine.stepper import compile_stages

    assert compile_stages("cuda", "inductor", "reduce-overhead") == [
        ("inductor", "reduce-overhead"), ("inductor", "default"), ("cudagraphs", "default")]
    assert compile_stages("cuda", "inductor", "default") == [("inductor", "default"), ("cudagraphs", "default")]
    assert compile_stages("cpu", "inductor", "reduce-overhead") == [("inductor", "reduce-overhead"), ("inductor", "default")]
    # a backend asked for by name is tried alone
    assert compile_stages("cuda", "cudagraphs", "reduce-overhead") == [("cudagraphs", "default")]
    assert compile_stages("cpu", "aot_eager", "default") == [("aot_eager", "default")]


def test_fallback_to_the_cudagraphs_backend_keeps_the_optimizer_eager(tiny_learnable_fmnist, tmp_path, monkeypatch):
    """On a GPU the last stage before eager is the cudagraphs backend (simulated here on the CPU:
    the stage list is the GPU's and the compiler a stand-in that runs eagerly). Inductor fails;
    the step alone is compiled with the cudagraphs backend, the optimizer runs eagerly with a
    float learning rate, the switch is said once and recorded, and the run equals the eager run."""
    import allnc.engine.stepper as stepper

    extra = ("train.epochs=2", "train.compile_backend=inductor")
    eager = Trainer(cfg_of(tiny_learnable_fmnist, "fmnist_lt_allnc", *extra, "train.compile=off"), tmp_path / "eager").fit()
    monkeypatch.setattr(stepper, "compile_stages", lambda dev, b, m: [("inductor", "default"), ("cudagraphs", "default")])
    made = []

    def fake_compile(fn, backend=None, **kw):
        made.append(backend)

        def wrapped(*a, **k):
            if backend == "inductor":
                raise RuntimeError("simulated code-generation failure")
            return fn(*a, **k)

        return wrapped

    monkeypatch.setattr(torch, "compile", fake_compile)
    lines = []
    t = Trainer(cfg_of(tiny_learnable_fmnist, "fmnist_lt_allnc", *extra, "train.compile=on"), tmp_path / "cg",
                log=lines.append)
    m = t.fit()
    assert made == ["inductor", "inductor", "cudagraphs"]  # step + optimizer, then the step alone
    assert t.stepper.opt_step == t.opt.step
    assert all(isinstance(g["lr"], float) for g in t.opt.param_groups)
    said = [ln for ln in lines if ln.startswith("compile ")]
    assert len(said) == 1 and "using train.compile_backend=cudagraphs instead" in said[0]
    rec = json.loads((tmp_path / "cg" / "metrics.json").read_text())["compile"]
    assert rec["used"] and rec["backend"] == "cudagraphs"
    assert rec["fallback"].startswith("train.compile_mode=default failed (RuntimeError: simulated code-generation")
    assert m["top1"] == eager["top1"] and m["per_class"] == eager["per_class"]
    a = load_checkpoint(tmp_path / "eager" / "checkpoint.pt")["method"]
    b = load_checkpoint(tmp_path / "cg" / "checkpoint.pt")["method"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


# what the H200 said (torch 2.11, 2026-11-29), shortened: Triton could not compile inductor's
# fused batch-norm backward as a persistent reduction, in either compile mode
TRITON_PER_FAILURE = ("SubprocException: An exception occurred in a subprocess:\n\n"
                      "Name=triton_per_fused__native_batch_norm_legit_functional_clamp_min_div_mean_relu_26\n"
                      "RuntimeError: PassManager::run failed")
GPU_STAGES = [("inductor", "reduce-overhead"), ("inductor", "default"), ("cudagraphs", "default")]


def _recording_compile(monkeypatch, fails):
    """torch.compile replaced by a stand-in that runs eagerly and records (backend, mode,
    persistent reductions) of each call; ``fails(backend, persistent)`` gives the error text
    that the compiled function raises, or None."""
    made = []

    def fake_compile(fn, backend=None, **kw):
        persistent = (kw.get("options") or {}).get("triton.persistent_reductions", True)
        made.append((backend, mode_of(kw), persistent))
        why = fails(backend, persistent)

        def wrapped(*a, **k):
            if why:
                raise RuntimeError(why)
            return fn(*a, **k)

        return wrapped

    monkeypatch.setattr(torch, "compile", fake_compile)
    return made


def test_a_persistent_reduction_kernel_triton_cannot_compile_gets_looped_reductions(
        tiny_learnable_fmnist, tmp_path, monkeypatch):
    """On a GPU (its stage list, the compiler a stand-in on the CPU) Triton fails on a
    persistent-reduction kernel whenever they are on: the probe tries the same CUDA-graph mode
    with them off before giving the mode up, keeps that, gives the optimizer step the same
    option, says so once and records it; the run is the eager run."""
    import allnc.engine.stepper as stepper

    extra = ("train.epochs=2", "train.compile_backend=inductor")
    eager = Trainer(cfg_of(tiny_learnable_fmnist, "fmnist_lt_allnc", *extra, "train.compile=off"), tmp_path / "eager").fit()
    monkeypatch.setattr(stepper, "compile_stages", lambda dev, b, m: GPU_STAGES)
    made = _recording_compile(monkeypatch, lambda b, persistent: TRITON_PER_FAILURE if persistent else None)
    lines = []
    t = Trainer(cfg_of(tiny_learnable_fmnist, "fmnist_lt_allnc", *extra, "train.compile=on",
                       "train.compile_mode=reduce-overhead"), tmp_path / "r", log=lines.append)
    m = t.fit()
    # step and optimizer step: first as configured, then the same mode with looped reductions
    assert made == [("inductor", "reduce-overhead", True), ("inductor", "default", True),
                    ("inductor", "reduce-overhead", False), ("inductor", "default", False)]
    rec = json.loads((tmp_path / "r" / "metrics.json").read_text())["compile"]
    assert rec["used"] and rec["backend"] == "inductor" and rec["mode"] == "reduce-overhead"
    assert rec["persistent_reductions"] is False
    assert rec["fallback"].startswith("train.compile_mode=reduce-overhead failed (RuntimeError: SubprocException")
    said = [ln for ln in lines if ln.startswith("compile ")]
    assert len(said) == 1
    assert said[0].endswith("using train.compile_mode=reduce-overhead train.compile_persistent_reductions=false instead")
    assert m["top1"] == eager["top1"] and m["per_class"] == eager["per_class"]


def test_looped_reductions_stay_off_down_the_ladder_and_other_failures_skip_them(
        tiny_learnable_fmnist, tmp_path, monkeypatch):
    """Inductor fails in every form: after the persistent-reduction failure the later inductor
    stages keep them off, and the cudagraphs backend is last. A failure that names no
    persistent-reduction kernel never gets the extra stage."""
    import allnc.engine.stepper as stepper

    monkeypatch.setattr(stepper, "compile_stages", lambda dev, b, m: GPU_STAGES)
    made = _recording_compile(monkeypatch, lambda b, persistent: (
        (TRITON_PER_FAILURE if persistent else "another code-generation failure") if b == "inductor" else None))
    cfg = cfg_of(tiny_learnable_fmnist, "fmnist_lt_ce", "train.epochs=1", "train.compile=on",
                 "train.compile_backend=inductor", "train.compile_mode=reduce-overhead")
    Trainer(cfg, tmp_path / "a").fit()
    assert made[:6:2] == [
        ("inductor", "reduce-overhead", True), ("inductor", "reduce-overhead", False), ("inductor", "default", False)]
    assert made[6:] == [("cudagraphs", "default", True)]  # the step alone
    rec = json.loads((tmp_path / "a" / "metrics.json").read_text())["compile"]
    assert rec["backend"] == "cudagraphs" and len(rec["fallback"].split("; ")) == 3
    made.clear()
    monkeypatch.setattr(stepper, "compile_stages", lambda dev, b, m: GPU_STAGES)
    _recording_compile(monkeypatch, lambda b, persistent: "another code-generation failure" if b == "inductor" else None)
    Trainer(cfg, tmp_path / "b").fit()
    rec = json.loads((tmp_path / "b" / "metrics.json").read_text())["compile"]
    assert "persistent" not in rec["fallback"] and len(rec["fallback"].split("; ")) == 2


def test_persistent_reductions_off_from_the_start_and_in_the_kwargs():
    """train.compile_persistent_reductions=false reaches inductor as
    triton.persistent_reductions=False in every mode (nothing for the other backends); a
    failure is recognised in the exception's cause chain too."""
    from allnc.engine.stepper import persistent_reduction_failure

    for mode in ("default", "reduce-overhead"):
        off = compile_kwargs("inductor", mode, persistent_reductions=False)["options"]
        on = compile_kwargs("inductor", mode)["options"]
        assert off == {**on, "triton.persistent_reductions": False} and "triton.persistent_reductions" not in on
    assert compile_kwargs("cudagraphs", "default", persistent_reductions=False) == {}
    try:
        try:
            raise RuntimeError(TRITON_PER_FAILURE)
        except RuntimeError as inner:
            raise ValueError("InductorError: SubprocException") from inner
    except ValueError as e:
        assert persistent_reduction_failure(e)
    assert not persistent_reduction_failure(RuntimeError("Name=triton_red_fused_sum_0 PassManager::run failed"))


def test_the_config_key_turns_them_off_from_the_first_compile(tiny_learnable_fmnist, tmp_path, monkeypatch):
    made = _recording_compile(monkeypatch, lambda b, persistent: None)
    t = Trainer(cfg_of(tiny_learnable_fmnist, "fmnist_lt_ce", "train.epochs=1", "train.compile=on",
                       "train.compile_backend=inductor", "train.compile_persistent_reductions=false"), tmp_path / "r")
    t.fit()
    assert made == [("inductor", "default", False), ("inductor", "default", False)]
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["compile"]["persistent_reductions"] is False


def test_cudagraphs_backend_on_the_cpu_is_a_config_error(tiny_learnable_fmnist, tmp_path):
    from allnc.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a CUDA device"):
        Trainer(cfg_of(tiny_learnable_fmnist, "fmnist_lt_ce", "train.compile=on", "train.compile_backend=cudagraphs"),
                tmp_path / "r")


@pytest.mark.parametrize("amp,want", [("bf16", torch.bfloat16), ("auto", torch.float32)])
def test_bf16_autocast_runs_on_the_cpu_when_asked_for(amp, want, tiny_learnable_fmnist, tmp_path):
    """train.amp=bf16 on the CPU: the step's convolutions run in bf16, as on a GPU, and the loss
    stays float32; auto leaves the CPU in float32."""
    from allnc.methods.base import StepState

    t = Trainer(cfg_of(tiny_learnable_fmnist, "fmnist_lt_ce", "train.epochs=1", f"train.amp={amp}"), tmp_path / "r")
    conv = next(m for m in t.method.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    conv.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    loss, _ = t.stepper.step(next(t._first_batches(0)()), StepState(0, 1, 0, t.steps))
    assert seen == [want] and loss.dtype == torch.float32 and torch.isfinite(loss)


def test_a_run_may_resume_with_other_compile_settings():
    """Compilation is how a step runs, not what it computes: a run begun compiled may go on
    eagerly or in another backend (the next machine's), but not with another learning rate."""
    from allnc.engine.context import check_resume_config
    from allnc.errors import ConfigError

    saved = load_config("fmnist_lt_ce", ["train.compile=on", "train.compile_mode=reduce-overhead"])
    check_resume_config(saved, load_config("fmnist_lt_ce", ["train.compile=off", "train.compile_backend=cudagraphs"]))
    with pytest.raises(ConfigError, match="train.lr"):
        check_resume_config(saved, load_config("fmnist_lt_ce", ["train.compile=off", "train.lr=0.05"]))


@pytest.mark.parametrize("amp,layout,device,want", [
    ("auto", "auto", "cpu", (False, False)),
    ("auto", "auto", "cuda", (True, True)),
    ("bf16", "on", "cpu", (True, True)),
    ("off", "off", "cuda", (False, False)),
])
def test_precision_auto_means_on_a_gpu_only(amp, layout, device, want):
    """One rule for training, evaluation and prediction: auto turns bf16 autocast and
    channels_last on on a GPU only; bf16 / on ask for them anywhere, off nowhere."""
    from allnc.engine.runtime import precision

    cfg = load_config("fmnist_lt_ce", [f"train.amp={amp}", f"train.channels_last={layout}"])
    assert precision(cfg, torch.device(device)) == want
