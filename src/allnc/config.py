"""The one default config tree, YAML experiment files and ``key=value`` overrides.

An experiment YAML overrides part of the default tree and may name a parent with
``_base_: other_config`` (a built-in name or a path relative to the file). Unknown keys are
errors that name the key and suggest the closest known one.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import ConfigError


# ----------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    # fmnist | cifar10 | cifar100 | imagefolder | listfile
    name: str = "fmnist"
    # where the data lives; null = the dataset's default place (see docs/data.md)
    root: Optional[str] = None
    # download with torchvision when nothing is found at root (needs internet)
    download: bool = False
    # imbalance factor n_max / n_min; 1 = keep the balanced training set
    imbalance_factor: float = 100.0
    # exp | step
    imbalance_type: str = "exp"
    # seed of the long-tail subset (the NumPy stream of reference.md)
    lt_seed: int = 0
    # balanced validation split: this many images per class from the training images the long
    # tail leaves out (0 = none); choices are made on it, never on the test set
    val_per_class: int = 0
    # listfile sources: "relative/path label" files, relative to root
    train_list: Optional[str] = None
    test_list: Optional[str] = None
    # standard | strong | none  (strong = AutoAugment CIFAR policy + Cutout)
    augment: str = "standard"
    cutout: int = 16
    # training image size for large-image datasets (random resized crop); small data keeps its size
    image_size: int = 224
    # per-channel normalization; null = dataset default
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    # auto | fast | conventional: fast = device-resident tensors + batched augmentation
    pipeline: str = "auto"
    num_workers: int = 2
    # decoded small image folders are cached as .npz here (null = no cache)
    cache_dir: Optional[str] = None


# ---------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    # resnet32 | resnet_small | resnet50 | resnext50
    name: str = "resnet32"
    # base width of the CIFAR/small ResNets (16 = the standard ResNet-32)
    width: int = 16
    # linear | normed (cosine, LDAM) | etf (fixed simplex ETF buffer)
    classifier: str = "linear"
    bias: bool = True
    # seed of a fixed ETF classifier
    etf_seed: int = 0
    # torchvision weights are never downloaded; a local state_dict path may be given
    pretrained: Optional[str] = None


# --------------------------------------------------------------------------- method
@dataclass
class LAConfig:
    tau: float = 1.0


@dataclass
class LDAMConfig:
    max_margin: float = 0.5
    scale: float = 30.0
    # deferred re-weighting starts at this fraction of the epochs; null = at the first
    # learning-rate decay (LDAM-DRW's recipe: epoch 160 of 200)
    drw_start: Optional[float] = None
    drw_beta: float = 0.9999


@dataclass
class ETFConfig:
    # dr (dot regression, Yang et al. 2022) | ce
    loss: str = "dr"
    # normalize features before the fixed ETF classifier (as the paper)
    normalize_features: bool = True
    # batch norm on the features before the ETF (as the authors' code): post-ReLU features are
    # non-negative and cannot reach ETF directions with negative entries without it
    feature_bn: bool = True


@dataclass
class BCLConfig:
    tau: float = 0.1
    lambda_ce: float = 2.0
    lambda_scl: float = 0.6
    proj_dim: int = 128
    # hidden width of the projection heads; 0 = the feature width (as the released code)
    proj_hidden: int = 0
    la_tau: float = 1.0
    # normed: the released code's cosine classifier with its scale built in; linear: a plain one
    classifier: str = "normed"
    scale: float = 30.0
    # preset of the two contrastive views: sim (SimAugment, as the released code) | standard | strong | none
    view_augment: str = "sim"
    # preset of view 0 (the cross-entropy view); null = data.augment (the released code uses
    # its strong augmentation there: the *_bcl_strong configs)
    ce_augment: Optional[str] = None


@dataclass
class HyConConfig:
    enabled: bool = False
    weight: float = 1.0
    tau: float = 0.1
    sample_pairs: bool = True
    class_average: bool = True
    # contrast directions about the class-balanced global mean of the memory (the centred
    # geometry of P2P and the NC metrics) instead of about the origin
    centre: bool = False
    # GBBN: anchors from the conventional branch only, or also from the re-balancing branch
    # (its features against its own class means, weighted 1 - alpha: tail classes anchored)
    anchors: str = "conventional"


@dataclass
class P2PConfig:
    enabled: bool = False
    weight: float = 1.0
    tau: float = 0.1
    # contrast | regression
    form: str = "contrast"
    # weight of an equinorm term (squared coefficient of variation of the classifier-row and
    # centred-mean norms); 0 = off: the cosines alone leave the norms free
    equinorm: float = 0.0


@dataclass
class MemoryConfig:
    momentum: float = 0.9


@dataclass
class GBBNConfig:
    # re-balancing sampler of branch r: reversed | balanced | sqrt
    sampler: str = "reversed"
    # parabolic | linear | cosine | step
    schedule: str = "parabolic"
    gamma: float = 2.0
    # epoch fraction where the step schedule switches from branch c to branch r
    step_at: float = 0.8
    # last_block | last_stage: what the two branches own (the rest is the shared trunk)
    branch: str = "last_block"
    # share the branch weights too (a single-branch GBBN)
    share_branch: bool = False
    # run the trunk once on both batches (BN sees their union) instead of once per batch (BBN)
    joint_trunk: bool = False
    # ce | la | bsce: the classification loss on the mixed logits
    cls_loss: str = "ce"
    # the mixed feature is mix_scale * [alpha h_c ; (1 - alpha) h_r], in training and at
    # inference; BBN's released code uses 2 (then the bias weighs half as much against W h)
    mix_scale: float = 1.0
    # inference mix [a h_c ; (1 - a) h_r]: half (a = 0.5, BBN), final (a = the adaptor's last
    # alpha: progressive decoupling ends with the re-balancing branch in charge), val (a chosen
    # after training on the validation split, data.val_per_class)
    inference_mix: str = "half"


@dataclass
class CRTConfig:
    # the finished run whose backbone is frozen
    sampler: str = "balanced"
    reset_classifier: bool = True


@dataclass
class MethodConfig:
    # ce | la | bsce | ldam_drw | etf | bcl | gbbn | crt  (bbn and allnc are gbbn configs)
    name: str = "ce"
    # sampler of the main loader: instance | balanced | sqrt | reversed
    sampler: str = "instance"
    la: LAConfig = field(default_factory=LAConfig)
    ldam: LDAMConfig = field(default_factory=LDAMConfig)
    etf: ETFConfig = field(default_factory=ETFConfig)
    bcl: BCLConfig = field(default_factory=BCLConfig)
    hycon: HyConConfig = field(default_factory=HyConConfig)
    p2p: P2PConfig = field(default_factory=P2PConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    gbbn: GBBNConfig = field(default_factory=GBBNConfig)
    crt: CRTConfig = field(default_factory=CRTConfig)


# ---------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 2e-4
    warmup_epochs: int = 5
    # step | cosine | constant
    schedule: str = "step"
    milestones: list[int] = field(default_factory=lambda: [160, 180])
    lr_decay: float = 0.01
    # mixup alpha; 0 = off
    mixup: float = 0.0
    drop_last: bool = True
    # auto (bf16 on GPU, off on CPU) | bf16 | off
    amp: str = "auto"
    # auto (on GPU) | on | off
    channels_last: str = "auto"
    # off | on | auto: torch.compile of the training step (auto: on with the fast path on GPU)
    compile: str = "auto"
    # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs
    compile_mode: str = "default"
    # torch.compile backend: inductor (generated kernels) | aot_eager (capture only, for checks)
    compile_backend: str = "inductor"
    sync_bn: bool = False
    ckpt_every: int = 10
    # evaluate on the test set every N epochs (the last epoch always)
    eval_every: int = 10
    # false: never read the test set (model selection on data.val_per_class's split only)
    eval_test: bool = True
    log_every_steps: int = 50
    progress: bool = True


@dataclass
class NCConfig:
    # compute neural-collapse metrics every N epochs during training (0 = off)
    every: int = 0
    # at most this many training samples for tracking (0 = all)
    max_samples: int = 0
    batch_size: int = 512


@dataclass
class Config:
    seed: int = 0
    # auto | cpu | cuda | cuda:N
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    nc: NCConfig = field(default_factory=NCConfig)
    # cRT: the run directory whose checkpoint initialises the model
    init_from: Optional[str] = None
    # free-form label written into metrics.json
    name: str = ""


# ------------------------------------------------------------------------ machinery
class _YAMLLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so `on`, `off`, `yes`, `no` stay strings
    (train.compile=on, train.amp=off)."""


_YAMLLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _yaml(text: str):
    return yaml.load(text, Loader=_YAMLLoader)


def default_config() -> DictConfig:
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    return cfg


def builtin_names() -> list[str]:
    d = resources.files("allnc") / "configs"
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml"))


def read_yaml_mapping(path: Path, what: str = "config file", expected: str = "keys") -> dict:
    """A YAML file that must hold a mapping; one-line errors name the file (and line)."""
    try:
        data = _yaml(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"{what} {path} is not valid YAML{at}: fix its syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of {expected}, not {type(data).__name__}")
    return data


def _builtin_path(name: str) -> Optional[Path]:
    p = resources.files("allnc") / "configs" / f"{name}.yaml"
    return Path(str(p)) if p.is_file() else None


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            out.append(full)
            out.extend(_all_keys(node[k], full + "."))
    return out


def _unknown_key_error(key: str, where: str) -> ConfigError:
    keys = _all_keys(default_config())
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "; `allnc config --show` lists every key"
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a.b.c': value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        full = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, full + "."))
        else:
            out[full] = v
    return out


def _resolve_file(name_or_path: str, relative_to: Optional[Path] = None) -> Path:
    p = Path(name_or_path)
    if relative_to is not None and not p.is_absolute():
        cand = relative_to / p
        if cand.is_file():
            return cand
        if not cand.suffix and cand.with_suffix(".yaml").is_file():
            return cand.with_suffix(".yaml")
    if p.is_file():
        return p
    b = _builtin_path(name_or_path)
    if b is not None:
        return b
    close = difflib.get_close_matches(name_or_path, builtin_names(), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "; `allnc config --list` lists the built-in configs"
    raise ConfigError(f"config '{name_or_path}' is neither a YAML file nor a built-in config{hint}")


def _load_chain(name_or_path: str, relative_to: Optional[Path] = None, depth: int = 0) -> list[tuple[Path, dict]]:
    if depth > 20:
        raise ConfigError(f"config '{name_or_path}': _base_ chain is deeper than 20 (a cycle?)")
    path = _resolve_file(name_or_path, relative_to)
    data = read_yaml_mapping(path, "config file", "keys")
    base = data.pop("_base_", None)
    chain: list[tuple[Path, dict]] = []
    if base is not None:
        bdir = path.parent
        chain = _load_chain(str(base), bdir, depth + 1)
    chain.append((path, data))
    return chain


def set_key(cfg: DictConfig, key: str, value: Any, where: str = "the command line") -> None:
    """Set one dotted key; unknown keys and bad values are one-line ConfigErrors."""
    try:
        OmegaConf.update(cfg, key, value, merge=True)
    except (ConfigKeyError, AttributeError, KeyError):
        raise _unknown_key_error(key, where) from None
    except ValidationError as e:
        raise ConfigError(f"bad value {value!r} for '{key}' in {where}: {e.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        if "Key" in msg and ("not in struct" in msg or "not found" in msg):
            raise _unknown_key_error(key, where) from None
        raise ConfigError(f"bad value {value!r} for '{key}' in {where}: {msg}") from None


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (for example train.epochs=5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key (write key=value)")
    try:
        value = _yaml(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


# A results-table cell: <config>__if<imbalance factor>__e<epochs>[__val<per class>]__seed<seed>
_CELL_RE = re.compile(r"^(?P<config>[A-Za-z0-9_.-]+?)__if(?P<imb>[0-9.]+)__e(?P<epochs>[0-9]+)"
                      r"(?:__val(?P<val>[0-9]+))?__seed(?P<seed>[0-9]+)$")


def cell_name(config: str, imbalance_factor: float, epochs: int, seed: int, val_per_class: int = 0) -> str:
    """The name of a results-table cell; ``load_config`` resolves it back to its config."""
    val = f"__val{int(val_per_class)}" if val_per_class else ""
    return f"{config}__if{float(imbalance_factor):g}__e{int(epochs)}{val}__seed{int(seed)}"


def parse_cell_name(name: str) -> tuple[str, list[str]]:
    """(config, overrides) of a cell name such as ``cifar10_lt_allnc__if100__e200__seed0``."""
    m = _CELL_RE.match(name)
    if m is None:
        raise ConfigError(f"'{name}' is not a results cell name (<config>__if<IF>__e<epochs>[__val<N>]__seed<S>)")
    o = [f"data.imbalance_factor={m.group('imb')}", f"train.epochs={m.group('epochs')}"]
    if m.group("val"):
        o.append(f"data.val_per_class={m.group('val')}")
    return m.group("config"), o + [f"seed={m.group('seed')}"]


def load_config(name_or_path: Optional[str] = None, overrides: Optional[list[str]] = None) -> DictConfig:
    """Default tree <- YAML chain (base first) <- command-line overrides; then validated.
    A results cell name (``cifar10_lt_allnc__if100__e200__seed0``) resolves to its config
    with the cell's overrides before ``overrides``."""
    cfg = default_config()
    if name_or_path and _CELL_RE.match(name_or_path) and not Path(name_or_path).is_file():
        name_or_path, cell_overrides = parse_cell_name(name_or_path)
        overrides = cell_overrides + list(overrides or [])
    if name_or_path:
        for path, data in _load_chain(name_or_path):
            for k, v in flatten(data).items():
                set_key(cfg, k, v, str(path))
    for text in overrides or []:
        k, v = parse_override(text)
        set_key(cfg, k, v, "the command line")
    validate(cfg)
    return cfg


_CHOICES = {
    "data.name": ("fmnist", "cifar10", "cifar100", "imagefolder", "listfile"),
    "data.imbalance_type": ("exp", "step"),
    "data.augment": ("standard", "strong", "none", "sim"),
    "method.bcl.view_augment": ("standard", "strong", "none", "sim"),
    "method.bcl.ce_augment": (None, "standard", "strong", "none", "sim"),
    "method.bcl.classifier": ("normed", "linear"),
    "data.pipeline": ("auto", "fast", "conventional"),
    "model.classifier": ("linear", "normed", "etf"),
    "method.sampler": ("instance", "balanced", "sqrt", "reversed"),
    "method.p2p.form": ("contrast", "regression"),
    "method.gbbn.sampler": ("instance", "balanced", "sqrt", "reversed"),
    "method.gbbn.schedule": ("parabolic", "linear", "cosine", "step"),
    "method.gbbn.branch": ("last_block", "last_stage"),
    "method.gbbn.cls_loss": ("ce", "la", "bsce"),
    "method.gbbn.inference_mix": ("half", "final", "val"),
    "method.hycon.anchors": ("conventional", "both"),
    "method.etf.loss": ("dr", "ce"),
    "train.schedule": ("step", "cosine", "constant"),
    "train.amp": ("auto", "bf16", "off"),
    "train.channels_last": ("auto", "on", "off"),
    "train.compile": ("auto", "on", "off"),
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "train.compile_backend": ("inductor", "aot_eager", "eager"),
}


def validate(cfg: DictConfig) -> None:
    for key, choices in _CHOICES.items():
        v = OmegaConf.select(cfg, key)
        if v not in choices:
            raise ConfigError(f"{key}={v!r} is not one of: {', '.join(choices)}")
    if cfg.data.imbalance_factor < 1:
        raise ConfigError(
            f"data.imbalance_factor={cfg.data.imbalance_factor} is below 1; it is n_max/n_min, "
            "so use 1 for balanced data or a value such as 100"
        )
    for key in ("train.epochs", "train.batch_size"):
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1")
    if cfg.train.lr <= 0:
        raise ConfigError("train.lr must be positive")
    if cfg.data.val_per_class < 0:
        raise ConfigError("data.val_per_class must be 0 (no validation split) or a positive number of images per class")
    if cfg.method.gbbn.inference_mix == "val" and not cfg.data.val_per_class and cfg.method.name == "gbbn":
        raise ConfigError("method.gbbn.inference_mix=val picks the mix on a validation split; give data.val_per_class=N")
    if not cfg.train.eval_test and not cfg.data.val_per_class:
        raise ConfigError("train.eval_test=false leaves nothing to evaluate; give data.val_per_class=N for a validation split")
    if cfg.train.ckpt_every < 1 or cfg.train.eval_every < 1:
        raise ConfigError("train.ckpt_every and train.eval_every must be at least 1")
    if not (cfg.device in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:")):
        raise ConfigError(f"device={cfg.device!r} is not auto, cpu, cuda or cuda:N")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def from_dict(d: dict) -> DictConfig:
    """Rebuild a config saved in a run directory (validated against the current tree)."""
    cfg = default_config()
    for k, v in flatten(d).items():
        set_key(cfg, k, v, "the saved run config")
    validate(cfg)
    return cfg
