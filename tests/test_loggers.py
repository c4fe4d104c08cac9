"""train.logger: the TensorBoard default, W&B offline runs read back from their files, the
one-line error without wandb, and the choices of the config key."""
from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest

from allnc.config import load_config
from allnc.engine import loggers
from allnc.engine.trainer import Trainer
from allnc.errors import ConfigError

FAST = ["device=cpu", "train.progress=false", "model.width=8", "train.batch_size=32", "train.warmup_epochs=0",
        "train.schedule=constant", "train.lr=0.05", "data.num_workers=0", "train.eval_every=1"]


def tiny_cfg(root, *extra):
    return load_config("fmnist_lt_ce", [f"data.root={root}", "data.imbalance_factor=10", *FAST, *extra])


def read_wandb_records(path: Path) -> list:
    """The records of a .wandb transaction log: a 7-byte header (":W&B", magic, version), then
    LevelDB-log blocks of 32 KiB, each record with a 7-byte header (crc32, length, type:
    1 full, 2 first, 3 middle, 4 last) and a protobuf ``Record`` as payload."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, parts = 7, 32768, [], []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        parts.append(payload)
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            out.append(rec)
            parts = []
    return out


def _items(items) -> dict:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def test_logger_is_a_checked_choice(tiny_learnable_fmnist):
    assert tiny_cfg(tiny_learnable_fmnist).train.logger == "tensorboard"
    with pytest.raises(ConfigError, match="train.logger='mlflow' is not one of: tensorboard, wandb, none"):
        tiny_cfg(tiny_learnable_fmnist, "train.logger=mlflow")
    with pytest.raises(ConfigError, match="train.wandb_mode"):
        tiny_cfg(tiny_learnable_fmnist, "train.wandb_mode=sometimes")


def test_wandb_missing_is_one_line_config_error(tiny_learnable_fmnist, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # find_spec sees no wandb
    with pytest.raises(ConfigError, match=r"pip install allnc\[wandb\]") as e:
        Trainer(tiny_cfg(tiny_learnable_fmnist, "train.epochs=1", "train.logger=wandb"), tmp_path / "run")
    assert "\n" not in str(e.value)
    Trainer(tiny_cfg(tiny_learnable_fmnist, "train.epochs=1"), tmp_path / "run").release()  # the lock was given back


def test_none_logger_writes_no_tensorboard(tiny_learnable_fmnist, tmp_path):
    Trainer(tiny_cfg(tiny_learnable_fmnist, "train.epochs=1", "train.logger=none"), tmp_path / "run").fit()
    assert not (tmp_path / "run" / "tb").exists() and (tmp_path / "run" / "metrics.json").is_file()


def test_tensorboard_default_holds_each_epoch(tiny_learnable_fmnist, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    Trainer(tiny_cfg(tiny_learnable_fmnist, "train.epochs=2"), out).fit()
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    for tag, key in (("loss", "loss"), ("test_top1", "test_top1"), ("test_groups/medium", None)):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2]
        want = [r[key] if key else r["test_groups"]["medium"] for r in epochs]
        assert [e.value for e in events] == pytest.approx(want, rel=1e-6)  # float32 in the event file
    assert not (out / loggers.WANDB_ID).exists()


def test_tensorboard_scalars_are_the_epoch_numbers():
    rec = {"epoch": 2, "loss": 1.5, "lr": 0.1, "test_top1": 40.0, "test_groups": {"many": 50.0, "few": None}}
    assert loggers.scalars(rec) == {"loss": 1.5, "lr": 0.1, "test_top1": 40.0, "test_groups/many": 50.0}


def test_wandb_mode_auto(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert loggers.wandb_mode("auto") == "offline" and loggers.wandb_mode("online") == "online"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.netrc login either
    monkeypatch.setattr(loggers, "_online_reachable", lambda timeout=2.0: True)
    assert loggers.wandb_mode("auto") == "offline"  # no credentials
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert loggers.wandb_mode("auto") == "online"
    monkeypatch.setattr(loggers, "_online_reachable", lambda timeout=2.0: False)
    assert loggers.wandb_mode("auto") == "offline"  # no network


def test_wandb_offline_run_holds_each_epoch_and_the_final_metrics(tiny_learnable_fmnist, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing is ever reached
    out = tmp_path / "run"
    m = Trainer(tiny_cfg(tiny_learnable_fmnist, "train.epochs=2", "train.logger=wandb", "nc.every=2",
                         "nc.max_samples=100"), out).fit()
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 2 and not (out / "tb").exists()

    run_id = (out / loggers.WANDB_ID).read_text().strip()
    files = list((tmp_path / "wb" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    deadline = time.monotonic() + 60  # wandb's service may still be writing the file when finish() returns
    while True:
        records = read_wandb_records(files[0])
        kinds = [r.WhichOneof("record_type") for r in records]
        if ("exit" in kinds and kinds.count("history") >= 2) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    summary: dict = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_items(r.summary.update))
    config: dict = {}  # the run's first record, then any config updates
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind in ("run", "config"):
            config.update(_items(r.run.config.update if kind == "run" else r.config.update))

    assert [h["epoch"] for h in history] == [1, 2]
    for h, rec in zip(history, epochs):
        assert h["loss"] == rec["loss"] and h["test_top1"] == rec["test_top1"] and h["lr"] == rec["lr"]
        assert h["test_groups/medium"] == rec["test_groups"]["medium"] and "test_groups/many" not in h  # None: left out
    assert history[1]["nc/" + next(iter(epochs[1]["nc"]))] == next(iter(epochs[1]["nc"].values()))
    assert summary["top1"] == m["top1"] == json.loads((out / "metrics.json").read_text())["top1"]
    assert summary["groups/medium"] == m["groups"]["medium"] and summary["epoch"] == 2
    assert any(k.startswith("nc/") for k in summary)  # the final NC figures
    assert config["train"]["logger"] == "wandb" and config["model"]["width"] == 8  # the resolved config
