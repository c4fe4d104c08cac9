"""The one default config tree, built-in configs composed from fragments, YAML experiment
files and ``key=value`` overrides.

The tree is the dataclasses below plus, under ``method``, the section each method registers
with its config dataclass (``allnc.methods``): adding a method adds its keys. Built-in names
resolve through ``allnc.compose``; an experiment YAML overrides part of the tree and may name
parents with ``_base_: name`` or ``_base_: [name, other.yaml]`` (built-in names or paths
relative to the file). Unknown keys are errors that name the key and suggest the closest one;
every choice is checked against the registry or list it comes from.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import MISSING as DC_MISSING
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from . import compose, plugins as plugin_imports
from .config_io import flatten, load_yaml, parse_override, read_yaml_mapping  # noqa: F401 (public here too)
from .data.augment import PRESETS
from .data.sources import SOURCES
from .data.build import has_validation, validation_key
from .data.samplers import MODES
from .errors import ConfigError
from .methods import METHODS, SECTIONS
from .models import BACKBONES, CLASSIFIERS, FROZEN

# ----------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    choices: ClassVar[dict] = {
        "name": lambda: tuple(SOURCES.names()), "imbalance_type": ("exp", "step"),
        "augment": PRESETS, "pipeline": ("auto", "fast", "conventional"),
    }
    # the data source (a plugin may register more)
    name: str = "fmnist"
    # where the data lives; null = the dataset's default place (see docs/data.md)
    root: Optional[str] = None
    # download with torchvision when nothing is found at root (needs internet)
    download: bool = False
    # imbalance factor n_max / n_min; 1 = keep the balanced training set
    imbalance_factor: float = 100.0
    # exp | step
    imbalance_type: str = "exp"
    # seed of the long-tail subset (the NumPy stream of docs/reference.md)
    lt_seed: int = 0
    # balanced validation split: this many images per class from the training images the long
    # tail leaves out (0 = none); choices are made on it, never on the test set
    val_per_class: int = 0
    # listfile sources: "relative/path label" files, relative to root
    train_list: Optional[str] = None
    # the test list of a listfile source (relative to root)
    test_list: Optional[str] = None
    # the validation list of a listfile source (relative to root; ImageNet_LT_val.txt, ...): the
    # split choices are made on (list files are long-tailed as given: no split can be drawn)
    val_list: Optional[str] = None
    # training augmentation: standard (crop + flip), strong (AutoAugment CIFAR policy + Cutout),
    # none, sim (SimAugment: the contrastive views of SimCLR-style methods), randaug (RandAugment:
    # the ImageNet-LT classification view of BCL and PaCo; conventional data path only) or
    # jitter (standard + colour jitter 0.4/0.4/0.4/0: MiSLAS's and cRT's large-image recipes)
    augment: str = "standard"
    # Cutout square size in pixels (strong augmentation); 0 = off
    cutout: int = 16
    # RandAugment (augment randaug): operations per image, their magnitude (0-10) and its noise's std
    randaug_n: int = 2
    randaug_m: float = 10.0
    randaug_mstd: float = 0.5
    # training image size for large-image datasets (random resized crop); small data keeps its size
    image_size: int = 224
    # per-channel normalization; null = dataset default
    mean: Optional[list[float]] = None
    # per-channel std for normalization; null = dataset default
    std: Optional[list[float]] = None
    # auto | fast | conventional: fast = device-resident tensors + batched augmentation
    pipeline: str = "auto"
    # DataLoader worker processes of the conventional data path
    num_workers: int = 2
    # image folders and list files: decode every image into memory resized to this many pixels
    # square, whatever its size (null = images of at most 64x64 keep their size, which must be one)
    small_size: Optional[int] = None
    # decoded small image folders are cached as .npz here (null = no cache)
    cache_dir: Optional[str] = None


# ---------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    choices: ClassVar[dict] = {"name": lambda: tuple(BACKBONES.names()), "classifier": lambda: tuple(CLASSIFIERS.names()),
                               "frozen": FROZEN}
    # resnet32 | resnet_small | resnet50 | resnet152 | resnext50
    name: str = "resnet32"
    # base width of the CIFAR/small ResNets (16 = the standard ResNet-32)
    width: int = 16
    # stride of the CIFAR/small ResNets' stem convolution: 2 runs every stage at half the
    # resolution (about a quarter of the convolution work; the fast preset, the CPU demo)
    stem_stride: int = 1
    # linear | normed (cosine, LDAM) | etf (fixed simplex ETF buffer)
    classifier: str = "linear"
    # a bias in the linear classifier
    bias: bool = True
    # seed of a fixed ETF classifier
    etf_seed: int = 0
    # torchvision weights are never downloaded; a local state_dict path may be given
    pretrained: Optional[str] = None
    # what of the backbone learns (the heads always do). none | convs_but_last_block: every
    # convolution's weights frozen except those of the last residual block, batch norm learning
    # (PaCo's Places-LT fine-tuning of an ImageNet-pretrained ResNet-152) | all_but_last_block:
    # everything before the last residual block fixed, its batch norms too (fixed statistics
    # whatever the mode): MiSLAS's Places-LT model
    frozen: str = "none"
    # start the last residual block afresh (PyTorch's own layer initialisation) after
    # model.pretrained is loaded: MiSLAS's Places-LT model trains a new last block on the frozen
    # ImageNet-pretrained ResNet-152
    fresh_last_block: bool = False


# --------------------------------------------------------------------------- method
@lru_cache(maxsize=None)
def method_config_class() -> type:
    """``method``: its name and main sampler, then every registered section (each method's own
    config dataclass, and the shared HyCon / P2P / memory sections), in name order."""
    sections: dict[str, type] = {}
    for name in METHODS.names():
        meta = METHODS.meta(name)
        if meta.get("section"):
            sections[meta["section"]] = meta["config"]
    for name in SECTIONS.names():
        sections[name] = SECTIONS.get(name)
    spec: list = [("name", str, field(default="ce")), ("sampler", str, field(default="instance"))]
    spec += [(sec, cls, field(default_factory=cls)) for sec, cls in sorted(sections.items())]
    cls = make_dataclass("MethodConfig", spec)
    cls.choices = {"name": lambda: tuple(METHODS.names()), "sampler": MODES}
    return cls


@lru_cache(maxsize=None)
def config_class() -> type:
    return make_dataclass("Config", [
        ("seed", int, field(default=0)),
        # auto | cpu | cuda | cuda:N
        ("device", str, field(default="auto")),
        ("data", DataConfig, field(default_factory=DataConfig)),
        ("model", ModelConfig, field(default_factory=ModelConfig)),
        ("method", method_config_class(), field(default_factory=method_config_class())),
        ("train", TrainConfig, field(default_factory=TrainConfig)),
        ("nc", NCConfig, field(default_factory=NCConfig)),
        # cRT: the run directory whose checkpoint initialises the model
        ("init_from", Optional[str], field(default=None)),
        # free-form label written into metrics.json
        ("name", str, field(default="")),
        # the config this run was made from (set by load_config: a built-in name or a YAML file's name)
        ("config_name", str, field(default="")),
        # the method as tables show it: AllNC, BBN, GBBN only, ... (set by load_config from the fragments)
        ("display_name", str, field(default="")),
        # your own modules, imported before the tree is built (module names or .py files)
        ("plugins", List[str], field(default_factory=list)),
    ])


def import_plugins(names) -> list[str]:
    """Import the plugins ``names`` (resolved: module names, absolute file paths); when they
    register a method or a method section, the tree is built again to hold it."""
    before = (METHODS.names(), SECTIONS.names())
    plugin_imports.import_plugins(names)
    if (METHODS.names(), SECTIONS.names()) != before:
        method_config_class.cache_clear()
        config_class.cache_clear()
    return list(names)


def import_plugins_named(overrides: list[str]) -> list[str]:
    """Import the plugins that ``plugins=...`` among command-line overrides name."""
    return import_plugins(_gather_plugins([], overrides))


def plugin_list(value: Any, where: str) -> list[str]:
    """A plugins value (one name or a list of names) as a list; anything else is a ConfigError."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"plugins in {where} must be a module name, a .py file or a list of them, not {value!r}")


def _gather_plugins(layers: list[tuple[str, dict]], overrides: list[str]) -> list[str]:
    """Every plugin the layers and the overrides name, resolved, in order, once each: a file
    named in a YAML file is taken relative to that file's folder, one on the command line
    relative to the current directory."""
    out: list[str] = []
    for where, data in layers:
        base = Path(where).parent if Path(where).is_file() else None
        out += [plugin_imports.resolve(n, base) for n in plugin_list(data.get("plugins"), where)]
    for text in overrides:
        k, v = parse_override(text)
        if k == "plugins":
            out += [plugin_imports.resolve(n) for n in plugin_list(v, "the command line")]
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------ machinery
def default_config() -> DictConfig:
    cfg = OmegaConf.structured(config_class())
    OmegaConf.set_struct(cfg, True)
    return cfg


def builtin_names() -> list[str]:
    return list(compose.builtin_names())


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            out.append(full)
            out.extend(_all_keys(node[k], full + "."))
    return out


def _unknown_key_error(key: str, where: str, value: Any = None) -> ConfigError:
    keys = _all_keys(default_config())
    if key in keys and isinstance(value, (dict, DictConfig)):
        # a section given whole (train={lr: 0.1, lrr: 2}): name the unknown key inside it
        def inner(prefix: str, d) -> Optional[str]:
            for k, v in d.items():
                full = f"{prefix}.{k}"
                if full not in keys:
                    return full
                if isinstance(v, (dict, DictConfig)) and (bad := inner(full, v)):
                    return bad
            return None

        key = inner(key, value) or key
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "; `allnc config --keys` lists every key"
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


def _file_layers(ref: str, relative_to: Optional[Path] = None, depth: int = 0) -> list[tuple[str, dict]]:
    """The (label, mapping) layers of a YAML file or a built-in name, bases first."""
    if depth > 20:
        raise ConfigError(f"config '{ref}': _base_ chain is deeper than 20 (a cycle?)")
    p = Path(ref)
    path = None
    if relative_to is not None and not p.is_absolute():
        for cand in (relative_to / p, (relative_to / p).with_suffix(".yaml")):
            if cand.is_file():
                path = cand
                break
    if path is None and p.is_file():
        path = p
    if path is None:
        if ref in set(compose.builtin_names()):
            return compose.compose(ref)
        close = compose.suggest(ref)
        hint = f"; did you mean '{close}'?" if close else "; `allnc config --list` lists the built-in configs"
        raise ConfigError(f"config '{ref}' is neither a YAML file nor a built-in config{hint}")
    data = read_yaml_mapping(path, "config file", "keys")
    bases = data.pop("_base_", None)
    layers: list[tuple[str, dict]] = []
    for b in ([] if bases is None else [bases] if isinstance(bases, str) else list(bases)):
        layers.extend(_file_layers(str(b), path.parent, depth + 1))
    return layers + [(str(path), data)]


def _builtin_bases(ref: str, relative_to: Optional[Path] = None, depth: int = 0):
    """The built-in configs a name or YAML file rests on, nearest first."""
    if ref in set(compose.builtin_names()) and not (relative_to and (relative_to / ref).is_file()):
        yield ref
        return
    p = Path(ref) if Path(ref).is_file() else (relative_to / ref if relative_to else Path(ref))
    if depth > 20 or not p.is_file():
        return
    bases = read_yaml_mapping(p, "config file", "keys").get("_base_")
    for b in reversed([] if bases is None else [bases] if isinstance(bases, str) else list(bases)):
        yield from _builtin_bases(str(b), p.parent, depth + 1)


def set_key(cfg: DictConfig, key: str, value: Any, where: str = "the command line") -> None:
    """Set one dotted key; unknown keys and bad values are one-line ConfigErrors."""
    try:
        OmegaConf.update(cfg, key, value, merge=True)
    except (ConfigKeyError, AttributeError, KeyError):
        raise _unknown_key_error(key, where, value) from None
    except ValidationError as e:
        raise ConfigError(f"bad value {value!r} for '{key}' in {where}: {e.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        if "Key" in msg and ("not in struct" in msg or "not found" in msg):
            raise _unknown_key_error(key, where, value) from None
        raise ConfigError(f"bad value {value!r} for '{key}' in {where}: {msg}") from None


# ---------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    choices: ClassVar[dict] = {
        "schedule": ("step", "cosine", "constant"), "amp": ("auto", "bf16", "off"), "channels_last": ("auto", "on", "off"),
        "compile": ("auto", "on", "off"),
        "compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        "compile_backend": ("inductor", "cudagraphs", "aot_eager", "eager"),
        "logger": ("tensorboard", "wandb", "none"), "wandb_mode": ("auto", "online", "offline"),
    }
    # training epochs
    epochs: int = 200
    # the global batch size (split across data-parallel processes)
    batch_size: int = 128
    # base learning rate of SGD
    lr: float = 0.1
    # SGD momentum
    momentum: float = 0.9
    # Nesterov momentum
    nesterov: bool = False
    # L2 weight decay
    weight_decay: float = 2e-4
    # linear learning-rate warm-up, in epochs (per step)
    warmup_epochs: int = 5
    # step | cosine | constant
    schedule: str = "step"
    # step schedule: epochs at which the learning rate is multiplied by lr_decay
    milestones: list[int] = field(default_factory=lambda: [160, 180])
    # step schedule: the factor at each milestone
    lr_decay: float = 0.01
    # mixup alpha; 0 = off
    mixup: float = 0.0
    # drop the last partial batch of an epoch (the fast path always does)
    drop_last: bool = True
    # auto (bf16 autocast on GPU, off on CPU) | bf16 (on the CPU too: slow there without AMX or
    # AVX-512 BF16, but the GPU's numerics and compiled graphs can be checked on a CPU) | off
    amp: str = "auto"
    # auto (on GPU) | on | off
    channels_last: str = "auto"
    # off | on | auto: torch.compile of the training step (auto: on with the fast path on GPU)
    compile: str = "auto"
    # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs
    compile_mode: str = "default"
    # torch.compile backend: inductor (generated kernels) | cudagraphs (the step replayed as a
    # CUDA graph, no generated kernels; GPU only) | aot_eager (capture only, for checks)
    compile_backend: str = "inductor"
    # inductor's persistent reductions on a GPU (a reduction row held in one Triton block);
    # false: looped reductions instead. The compilation probe turns them off by itself when
    # Triton fails to compile a persistent-reduction kernel (docs/fast_path.md)
    compile_persistent_reductions: bool = True
    # batch norm over the global batch under data parallel training
    sync_bn: bool = False
    # write the checkpoint every N epochs (and at the last)
    ckpt_every: int = 10
    # evaluate on the test set every N epochs (the last epoch always)
    eval_every: int = 10
    # false: never read the test set (model selection on data.val_per_class's split only; with
    # no validation split the run evaluates nothing: a backbone for a second stage)
    eval_test: bool = True
    # on a GPU, check the loss for NaN every N steps (every step on the CPU)
    log_every_steps: int = 50
    # a progress bar at a terminal
    progress: bool = True
    # where each epoch's numbers go besides metrics.jsonl: tensorboard (RUN_DIR/tb) |
    # wandb (Weights & Biases, pip install allnc[wandb]) | none
    logger: str = "tensorboard"
    # the W&B project of train.logger=wandb
    wandb_project: str = "allnc"
    # W&B mode: auto (online with WANDB_API_KEY or `wandb login` and a reachable server,
    # else offline; $WANDB_MODE wins) | online | offline
    wandb_mode: str = "auto"


@dataclass
class NCConfig:
    # compute neural-collapse metrics every N epochs during training (0 = off)
    every: int = 0
    # at most this many training samples for tracking (0 = all)
    max_samples: int = 0
    # batch size of the NC feature passes
    batch_size: int = 512


# A results-table cell: <config>__if<imbalance factor>__e<epochs>[__val<per class>]__seed<seed>
_CELL_RE = re.compile(r"^(?P<config>[A-Za-z0-9_.-]+?)__if(?P<imb>[0-9.]+)__e(?P<epochs>[0-9]+)"
                      r"(?:__val(?P<val>[0-9]+))?__seed(?P<seed>[0-9]+)(?:__posthoc_(?P<posthoc>[a-z_]+))?$")


def cell_name(config: str, imbalance_factor: float, epochs: int, seed: int, val_per_class: int = 0,
              posthoc: Optional[str] = None) -> str:
    """The name of a results-table cell; ``load_config`` resolves it back to its config.
    ``posthoc``: the cell of a post-hoc correction (``allnc posthoc``) of that run."""
    val = f"__val{int(val_per_class)}" if val_per_class else ""
    tail = f"__posthoc_{posthoc}" if posthoc else ""
    return f"{config}__if{float(imbalance_factor):g}__e{int(epochs)}{val}__seed{int(seed)}{tail}"


#: the corrections a post-hoc cell may name (``allnc posthoc --method``; the engine's registry
#: holds them, a test keeps the two equal)
POSTHOC_METHODS = ("tau_norm", "logit_adjust", "inference_mix")


def cell_posthoc(name: str) -> Optional[str]:
    """The post-hoc correction a cell name asks for (``..._seed0__posthoc_tau_norm`` ->
    ``tau_norm``), None for a trained run's own cell."""
    m = _CELL_RE.match(name)
    return m.group("posthoc") if m else None


def parse_cell_name(name: str) -> tuple[str, list[str]]:
    """(config, overrides) of a cell name such as ``cifar10_lt_allnc__if100__e200__seed0`` (a
    post-hoc cell resolves to the config of the run it corrects)."""
    m = _CELL_RE.match(name)
    if m is None:
        raise ConfigError(f"'{name}' is not a results cell name "
                          "(<config>__if<IF>__e<epochs>[__val<N>]__seed<S>[__posthoc_<method>])")
    if m.group("posthoc") and m.group("posthoc") not in POSTHOC_METHODS:
        raise ConfigError(f"cell name '{name}': '{m.group('posthoc')}' is not a post-hoc correction "
                          f"(one of: {', '.join(POSTHOC_METHODS)})")
    o = [f"data.imbalance_factor={m.group('imb')}", f"train.epochs={m.group('epochs')}"]
    if m.group("val"):
        o.append(f"data.val_per_class={m.group('val')}")
    return m.group("config"), o + [f"seed={m.group('seed')}"]


def load_config(name_or_path: Optional[str] = None, overrides: Optional[list[str]] = None,
                plugins: Sequence[str] = ()) -> DictConfig:
    """Default tree <- YAML chain (base first) <- command-line overrides; then validated.
    A results cell name (``cifar10_lt_allnc__if100__e200__seed0``) resolves to its config
    with the cell's overrides before ``overrides``. ``plugins`` adds plugins to those the
    layers and overrides name (files relative to the current directory)."""
    cell_overrides: list[str] = []
    if name_or_path and _CELL_RE.match(name_or_path) and not Path(name_or_path).is_file():
        cell = name_or_path
        name_or_path, cell_overrides = parse_cell_name(name_or_path)
    layers = _file_layers(name_or_path) if name_or_path else []
    # the plugins first: what they register is part of the tree the layers are checked against
    gathered = _gather_plugins(layers, list(overrides or []))
    plugins = import_plugins(list(dict.fromkeys(gathered + [plugin_imports.resolve(n) for n in plugins])))
    cfg = default_config()
    if name_or_path:
        for where, data in layers:
            for k, v in flatten(data).items():
                if k != "plugins":  # gathered above
                    set_key(cfg, k, v, where)
        builtin = next((b for b in _builtin_bases(name_or_path)), None)
        cfg.config_name = name_or_path if name_or_path in set(compose.builtin_names()) else Path(name_or_path).stem
        # a file over a built-in config that names another method is that method, not the built-in's
        same = builtin and compose.method_of(builtin) == cfg.method.name
        cfg.display_name = compose.display_name(builtin) if same else cfg.method.name
    layered_method = cfg.method.name
    from_cell = set()
    for text in cell_overrides:
        k, v = override(cfg, text)
        set_key(cfg, k, v, f"the cell name '{cell}'")
        from_cell.add(k)
    for text in overrides or []:
        k, v = override(cfg, text)
        if k != "plugins":  # gathered above
            set_key(cfg, k, v, "the command line")
        from_cell.discard(k)
    if name_or_path and cfg.method.name != layered_method and cfg.method.name in METHODS.names():
        _method_override_error(name_or_path, builtin, layered_method, cfg.method.name)
    cfg.plugins = plugins  # resolved, and every layer's, not only the last one's
    try:
        validate(cfg)
    except ConfigError as e:
        named = sorted(k for k in from_cell if k in str(e))
        if named:  # a value the user wrote in the cell's name, not on the command line
            raise ConfigError(f"{e} ({named[0]} comes from the cell name '{cell}')") from None
        raise
    return cfg


def _method_override_error(name: str, builtin: Optional[str], old: str, new: str) -> None:
    """``method.name=X`` over a named config would keep the config's method settings, its
    dataset's settings for that method and its display name: refused, with the config to use."""
    what = f"the built-in config '{name}'" if name == builtin else f"the config '{name}'"
    fix = compose.configs_with_method(builtin, new) if builtin else []
    if name != builtin:  # a config file: its own settings stay with it
        hint = f"set method.name: {new} in the config file, with that method's settings" + (
            f", or rest the file on {fix[0]} (_base_: {fix[0]})" if fix else "")
    elif fix:
        hint = "use " + " or ".join(f"--config {c}" for c in fix[:3]) + " instead"
    else:
        hint = (f"no built-in config of {compose.split_name(builtin)[0]} uses method '{new}': write a config file "
                f"with method.name: {new} and that method's settings")
    raise ConfigError(f"method.name={new} on the command line changes the method of {what} ({old}), whose settings, "
                      f"dataset settings and table name belong to {old}; {hint}")


def is_device_name(name: Any) -> bool:
    """A ``device`` value this package runs on: auto, cpu, cuda or cuda:N."""
    return str(name) in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", str(name)) is not None


def override(cfg: DictConfig, text: str) -> tuple[str, Any]:
    """``key=value`` for ``cfg``: the value read as YAML, except that a text key (a path, a
    name) takes the text as written: data.root=true, =0x10 or =#c name folders, not a bool, a
    number or a comment. ``null`` or ``~`` still clears an optional text key."""
    k, v = parse_override(text)
    if isinstance(v, str):
        return k, v
    parent, _, leaf = k.rpartition(".")
    try:
        node = (OmegaConf.select(cfg, parent) if parent else cfg)._get_node(leaf)
        text_key = node is not None and node._metadata.ref_type is str
    except Exception:  # noqa: BLE001 - an unknown key: set_key says so
        return k, v
    raw = text.split("=", 1)[1].strip()
    if not text_key or (v is None and raw in ("null", "~")):
        return k, v
    return k, raw


#: the values a numeric key may take, as an interval ("[" / "]" include the end, "(" / ")"
#: exclude it, inf: no bound); validate() refuses anything outside with one line naming the range
BOUNDS: dict[str, str] = {
    "seed": "[0, 2147483647]",
    "data.lt_seed": "[0, 4294967295]",
    "data.imbalance_factor": "[1, inf)",
    "data.val_per_class": "[0, inf)",
    "data.small_size": "[1, 4096]",
    "train.epochs": "[1, inf)",
    "train.batch_size": "[1, inf)",
    "train.lr": "(0, inf)",
    "train.ckpt_every": "[1, inf)",
    "train.eval_every": "[1, inf)",
    "data.cutout": "[0, inf)",
    "data.randaug_n": "[0, inf)",
    "data.randaug_m": "[0, 10]",
    "data.randaug_mstd": "[0, inf)",
    "data.image_size": "[1, inf)",
    "data.num_workers": "[0, inf)",
    "model.width": "[1, inf)",
    "train.momentum": "[0, 1)",
    "train.weight_decay": "[0, inf)",
    "train.warmup_epochs": "[0, inf)",
    "train.lr_decay": "(0, inf)",
    "train.mixup": "[0, inf)",
    "train.log_every_steps": "[1, inf)",
    "nc.every": "[0, inf)",
    "nc.max_samples": "[0, inf)",
    "nc.batch_size": "[1, inf)",
    "method.bcl.tau": "(0, inf)",
    "method.bcl.lambda_ce": "[0, inf)",
    "method.bcl.lambda_scl": "[0, inf)",
    "method.bcl.proj_dim": "[1, inf)",
    "method.bcl.proj_hidden": "[0, inf)",
    "method.bcl.la_tau": "[0, inf)",
    "method.bcl.scale": "(0, inf)",
    "method.focal.gamma": "[0, inf)",
    "method.gbbn.gamma": "(0, inf)",
    "method.gbbn.step_at": "[0, 1]",
    "method.gbbn.mix_scale": "(0, inf)",
    "method.hycon.weight": "[0, inf)",
    "method.hycon.tau": "(0, inf)",
    "method.la.tau": "[0, inf)",
    "method.ldam.max_margin": "[0, inf)",
    "method.ldam.scale": "(0, inf)",
    "method.ldam.drw_beta": "[0, 1)",
    "method.ldam.drw_start": "[0, 1]",
    "method.memory.momentum": "[0, 1)",
    "method.mislas.smooth_head": "[0, 1]",
    "method.mislas.smooth_tail": "[0, 1]",
    "method.mislas.lr_factor": "(0, inf)",
    "method.maxnorm.thresh": "[0, 1]",
    "method.maxnorm.cb_beta": "[0, 1)",
    "method.glmc.resample_weighting": "[0, inf)",
    "method.glmc.label_weighting": "[0, inf)",
    "method.glmc.contrast_weight": "[0, inf)",
    "method.glmc.mix_alpha": "(0, inf)",
    "method.glmc.gamma": "(0, inf)",
    "method.paco.alpha": "[0, inf)",
    "method.paco.beta": "(0, inf)",
    "method.paco.gamma": "[0, inf)",
    "method.paco.temperature": "(0, inf)",
    "method.paco.la_tau": "[0, inf)",
    "method.paco.queue_size": "[1, inf)",
    "method.paco.proj_dim": "[1, inf)",
    "method.paco.proj_hidden": "[0, inf)",
    "method.paco.momentum": "[0, 1]",
    "method.p2p.weight": "[0, inf)",
    "method.p2p.tau": "(0, inf)",
    "method.p2p.equinorm": "[0, inf)",
}


#: why a bound is what it is, where the range alone does not say
BOUND_NOTES: dict[str, str] = {
    "seed": "a torch seed",
    "data.lt_seed": "a NumPy seed",
    "data.imbalance_factor": "it is n_max/n_min, so use 1 for balanced data or a value such as 100",
    "data.val_per_class": "0 is no validation split",
    "data.small_size": "a size in pixels, or null to read the images at their own size",
}


def in_interval(v: float, interval: str) -> bool:
    """Whether ``v`` lies in ``interval``, written as in BOUNDS: "[0, 1)", "(0, inf)"."""
    lo, hi = (float(x) for x in interval[1:-1].split(","))
    return (v >= lo if interval[0] == "[" else v > lo) and (v <= hi if interval[-1] == "]" else v < hi)


def _check_bounds(cfg: DictConfig) -> None:
    for key, interval in BOUNDS.items():
        v = OmegaConf.select(cfg, key)
        if v is not None and not in_interval(float(v), interval):
            note = f" ({BOUND_NOTES[key]})" if key in BOUND_NOTES else ""
            raise ConfigError(f"{key}={v} is outside {interval}{note}; give a value in that range")
    std = cfg.data.std
    if std is not None and any(float(x) <= 0 for x in std):
        raise ConfigError(f"data.std={list(std)} must be positive (it divides the pixel values); give positive values or null")


def _check_choices(node: DictConfig, cls: type, prefix: str) -> None:
    """Every field with declared choices (a ``choices`` ClassVar: tuples, or callables that
    read a registry) holds one of them; recurse into nested config dataclasses."""
    choices = getattr(cls, "choices", {}) or {}
    for f in fields(cls):
        v = node[f.name]
        sub = f.default_factory if f.default_factory is not DC_MISSING else None
        if isinstance(sub, type) and is_dataclass(sub):
            _check_choices(v, sub, f"{prefix}{f.name}.")
            continue
        if f.name in choices:
            allowed = choices[f.name]() if callable(choices[f.name]) else choices[f.name]
            if v not in allowed:
                shown = ", ".join("null" if a is None else str(a) for a in allowed)
                raise ConfigError(f"{prefix}{f.name}={v!r} is not one of: {shown}")


def validate(cfg: DictConfig) -> None:
    _check_choices(cfg, config_class(), "")
    for k, v in flatten(to_dict(cfg)).items():  # before the ranges: nan lies in none of them
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{k}={v} is not a finite number; give a finite value")
    _check_bounds(cfg)
    if cfg.data.small_size is not None and cfg.data.name not in ("imagefolder", "listfile"):
        raise ConfigError(f"data.small_size resizes image folders and list files, not data.name={cfg.data.name}; "
                          "remove it or use data.name=imagefolder")
    if cfg.data.val_list and cfg.data.name != "listfile":
        raise ConfigError(f"data.val_list is the validation list of a list-file source, not of data.name={cfg.data.name}; "
                          "remove it and give data.val_per_class=N to draw a validation split")
    if cfg.data.val_list and cfg.data.val_per_class:
        raise ConfigError("data.val_list and data.val_per_class both give a validation split; keep one of them")
    if cfg.method.gbbn.inference_mix == "val" and not has_validation(cfg) and cfg.method.name == "gbbn":
        raise ConfigError(f"method.gbbn.inference_mix=val picks the mix on a validation split; give {validation_key(cfg)}")
    if not is_device_name(cfg.device):
        raise ConfigError(f"device={cfg.device!r} is not auto, cpu, cuda or cuda:N")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def from_dict(d: dict) -> DictConfig:
    """Rebuild a config saved in a run directory (validated against the current tree, with
    the run's plugins imported first)."""
    import_plugins(plugin_list(d.get("plugins"), "the saved run config"))
    cfg = default_config()
    for k, v in flatten(d).items():
        set_key(cfg, k, v, "the saved run config")
    validate(cfg)
    return cfg


def key_docs() -> list[tuple[str, Any, str]]:
    """(dotted key, default, meaning) of every key of the tree, meanings read from the comments
    above each field in the dataclasses' source (the one place they are written)."""
    import inspect

    out: list[tuple[str, Any, str]] = []
    top = {"seed": "the run's seed (data order, augmentation, initialisation)",
           "device": "auto | cpu | cuda | cuda:N",
           "init_from": "cRT: the run directory whose checkpoint initialises the model",
           "name": "a free-form label written into metrics.json",
           "config_name": "the config the run was made from (set by load_config)",
           "display_name": "the method as tables show it: AllNC, BBN, GBBN only, ... (set by load_config)",
           "plugins": "your own modules (module names or .py files), imported before the tree is built: "
                      "they register methods, backbones, classifiers, data sources (docs/architecture.md)"}

    def comments(cls) -> dict[str, str]:
        try:
            src = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):
            return {}
        docs, pending = {}, []
        for line in src:
            t = line.strip()
            if t.startswith("#"):
                pending.append(t.lstrip("# ").strip())
            elif ":" in t and not t.startswith(("class ", "@", "choices")):
                docs[t.split(":")[0].strip()] = " ".join(pending)
                pending = []
            else:
                pending = []
        return docs

    def walk(cls, prefix: str, defaults: DictConfig) -> None:
        docs = comments(cls)
        for f in fields(cls):
            sub = f.default_factory if f.default_factory is not DC_MISSING else None
            if isinstance(sub, type) and is_dataclass(sub):
                walk(sub, f"{prefix}{f.name}.", defaults[f.name])
                continue
            meaning = docs.get(f.name) or top.get(f.name, "")
            choices = getattr(cls, "choices", {}).get(f.name)
            if choices is not None:
                allowed = choices() if callable(choices) else choices
                meaning = (meaning + "; " if meaning else "") + "one of: " + ", ".join(
                    "null" if a is None else str(a) for a in allowed)
            if f"{prefix}{f.name}" in BOUNDS:
                meaning = (meaning + "; " if meaning else "") + "in " + BOUNDS[f"{prefix}{f.name}"]
            out.append((f"{prefix}{f.name}", OmegaConf.to_container(defaults, resolve=True)[f.name]
                        if isinstance(defaults, DictConfig) else None, meaning))

    walk(config_class(), "", default_config())
    return out
