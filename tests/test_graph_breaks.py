"""A method's compiled training step is one graph: nothing in it leaves torch.compile's trace.

Under torch 2.14 OmegaConf's attribute access did, in every method (a config read inside
``training_loss``): each read split the step's graph, AllNC's seven times, and on a GPU each
piece is a CUDA graph of its own with Python between them (torch 2.11 traced it whole). Methods now keep their config as plain Python
(``allnc.methods.base.plain_config``). The one break left on purpose is mixup's random draw
(``mixup_draw``, kept out of the graph for torch 2.11's inductor)."""
import pytest
import torch

from allnc.config import load_config
from allnc.engine.trainer import Trainer
from allnc.methods.base import StepState, plain_config

METHODS = ["ce", "la", "bsce", "focal", "ldam_drw", "ce_rs", "ce_mixup", "ce_hycon", "ce_p2p", "etf_ce", "etf_dr",
           "bbn", "gbbn_only", "allnc", "allnc_no_hycon", "allnc_no_p2p", "bcl", "glmc", "paco",
           "allnc:method.hycon.centre_gradient=batch"]  # a method's name, then its overrides


@pytest.mark.parametrize("method", METHODS)
def test_the_compiled_training_step_is_one_graph(method, tiny_learnable_fmnist, tmp_path):
    method, *extra = method.split(":")
    cfg = load_config(f"fmnist_lt_{method}", [f"data.root={tiny_learnable_fmnist}", "device=cpu", "train.progress=false",
                                              "model.width=4", "train.batch_size=16", "data.num_workers=0",
                                              "data.imbalance_factor=10", "train.epochs=2", *extra])
    t = Trainer(cfg, tmp_path / "r")
    batches = next(iter(t._first_batches(0)()))
    t.method.on_epoch_start(0, 2)
    t.method.train()
    ex = torch._dynamo.explain(t.stepper.step_module)(batches, StepState(0, 2, 0, t.steps))
    want = 1 if float(cfg.train.mixup) > 0 else 0  # mixup's draw, outside the graph on purpose
    assert ex.graph_break_count == want, [str(b.reason).splitlines()[0] for b in ex.break_reasons]


def test_plain_config_keeps_every_value():
    from allnc.config import to_dict

    cfg = load_config("cifar10_lt_allnc", [])
    p = plain_config(cfg)
    assert p.method.hycon.weight == cfg.method.hycon.weight and p.train.milestones == (160, 180)
    assert p.method.gbbn.inference_mix == "auto" and p.data.val_per_class == cfg.data.val_per_class

    def back(v):
        if hasattr(v, "__dict__"):
            return {k: back(x) for k, x in vars(v).items()}
        return [back(x) for x in v] if isinstance(v, tuple) else v

    assert back(p) == to_dict(cfg)
