"""Writes the built-in experiment configs (src/allnc/configs/*.yaml). Run after changing a
recipe here; the YAML files are what the package reads."""
from pathlib import Path
out = Path(__file__).resolve().parent.parent / "src" / "allnc" / "configs"; out.mkdir(exist_ok=True)
for f in out.glob("*.yaml"): f.unlink()
def w(name, text): (out / f"{name}.yaml").write_text(text.lstrip())

w("fmnist_lt", """
# Fashion-MNIST-LT (exponential profile, n_max 6000), the small ResNet for 28x28 grey images,
# a short CPU schedule. Data: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)
# or data.download=true.
data:
  name: fmnist
  imbalance_factor: 100
  augment: standard
model:
  name: resnet_small
  width: 16
train:
  epochs: 12
  batch_size: 128
  lr: 0.1
  warmup_epochs: 1
  schedule: step
  milestones: [9, 11]
  lr_decay: 0.1
  weight_decay: 5.0e-4
  eval_every: 4
  ckpt_every: 4
""")
w("cifar10_lt", """
# CIFAR-10-LT, the standard protocol of LDAM-DRW/BBN: ResNet-32, 200 epochs, batch 128,
# SGD lr 0.1 with 5 warm-up epochs, x0.01 at epoch 160 and x0.0001 at 180, wd 2e-4,
# random crop (pad 4) and flip. data.root: torchvision's cifar-10-batches-py or a
# train/<class>, test/<class> image folder.
data:
  name: cifar10
  imbalance_factor: 100
  augment: standard
model:
  name: resnet32
train:
  epochs: 200
  batch_size: 128
  lr: 0.1
  warmup_epochs: 5
  schedule: step
  milestones: [160, 180]
  lr_decay: 0.01
  weight_decay: 2.0e-4
""")
w("cifar100_lt", """
# CIFAR-100-LT, the standard protocol (see cifar10_lt).
_base_: cifar10_lt
data:
  name: cifar100
""")
LARGE = """
# {title}: "relative/path label" list files under data.root, ResNet-50, {epochs} epochs,
# cosine lr {lr} for batch {bs}, wd {wd}. The list is already long-tailed (no subsetting).
data:
  name: listfile
  train_list: {train}
  test_list: {test}
  imbalance_factor: 1
  augment: standard
  image_size: 224
  num_workers: 8
model:
  name: resnet50
train:
  epochs: {epochs}
  batch_size: {bs}
  lr: {lr}
  warmup_epochs: 5
  schedule: cosine
  weight_decay: {wd}
  eval_every: 10
  ckpt_every: 1
"""
w("imagenet_lt", LARGE.format(title="ImageNet-LT", train="ImageNet_LT_train.txt", test="ImageNet_LT_test.txt",
                               epochs=90, lr=0.1, bs=256, wd="5.0e-4"))
w("inat2018", LARGE.format(title="iNaturalist 2018", train="iNaturalist18_train.txt", test="iNaturalist18_val.txt",
                            epochs=90, lr=0.1, bs=256, wd="1.0e-4"))
w("places_lt", LARGE.format(title="Places-LT", train="Places_LT_train.txt", test="Places_LT_test.txt",
                             epochs=30, lr=0.01, bs=256, wd="5.0e-4"))

METHODS = {
 "ce": ("cross-entropy", "method:\n  name: ce\n"),
 "la": ("logit-adjusted cross-entropy (Menon et al. 2021), tau 1", "method:\n  name: la\n  la:\n    tau: 1.0\n"),
 "bsce": ("balanced softmax cross-entropy (Ren et al. 2020)", "method:\n  name: bsce\n"),
 "ldam_drw": ("LDAM with deferred re-weighting (Cao et al. 2019): max margin 0.5, s 30, DRW at the first lr decay",
              "method:\n  name: ldam_drw\n  ldam:\n    max_margin: 0.5\n    scale: 30.0\n    drw_start: null\n    drw_beta: 0.9999\n"),
 "etf_dr": ("fixed simplex-ETF classifier + dot-regression loss (Yang et al. 2022), with the mixup (alpha 1) of the authors' CIFAR configs",
            "model:\n  bias: false\nmethod:\n  name: etf\n  etf:\n    loss: dr\n    normalize_features: true\ntrain:\n  mixup: 1.0\n"),
 "etf_ce": ("fixed simplex-ETF classifier + cross-entropy",
            "model:\n  bias: false\nmethod:\n  name: etf\n  etf:\n    loss: ce\n    normalize_features: false\n"),
 "bcl": ("balanced contrastive learning (Zhu et al. 2022): LA-CE on a cosine classifier (scale 30) + balanced SupCon with prototypes; SimAugment on the two contrastive views, data.augment on the CE view",
         "method:\n  name: bcl\n  bcl:\n    tau: 0.1\n    lambda_ce: 2.0\n    lambda_scl: 0.6\n    classifier: normed\n    scale: 30.0\n    view_augment: sim\n"),
 "bbn": ("BBN (Zhou et al. 2020) as a GBBN configuration: cross-entropy only, reversed sampler, gamma 2, the released code's factor 2 on the mixed features; the dataset's lr schedule (BBN's own: *_bbn_protocol)",
         "method:\n  name: gbbn\n  gbbn:\n    sampler: reversed\n    schedule: parabolic\n    gamma: 2.0\n    branch: last_block\n    cls_loss: ce\n    mix_scale: 2.0\n  hycon:\n    enabled: false\n  p2p:\n    enabled: false\n"),
 "allnc": ("AllNC: GBBN + HyCon (lambda_H) + P2P (lambda_P); see docs/method.md",
           "method:\n  name: gbbn\n  gbbn:\n    sampler: reversed\n    schedule: parabolic\n    gamma: 2.0\n    branch: last_block\n    cls_loss: ce\n  hycon:\n    enabled: true\n    weight: 1.0\n    tau: 0.1\n  p2p:\n    enabled: true\n    weight: 1.0\n    tau: 0.1\n    form: contrast\n  memory:\n    momentum: 0.9\n"),
}
ABL = {
 "ce_hycon": ("ablation: cross-entropy + HyCon on one branch", "ce", "method:\n  hycon:\n    enabled: true\n"),
 "ce_p2p": ("ablation: cross-entropy + P2P on one branch", "ce", "method:\n  p2p:\n    enabled: true\n"),
 "gbbn_only": ("ablation: AllNC's GBBN without HyCon and P2P", "allnc", "method:\n  hycon:\n    enabled: false\n  p2p:\n    enabled: false\n"),
 "allnc_no_hycon": ("ablation: AllNC without HyCon", "allnc", "method:\n  hycon:\n    enabled: false\n"),
 "allnc_no_p2p": ("ablation: AllNC without P2P", "allnc", "method:\n  p2p:\n    enabled: false\n"),
}
CRT = ("classifier re-training (Kang et al. 2020) on a frozen backbone: allnc train --config {ds}_crt init_from=RUN_DIR",
       "method:\n  name: crt\n  crt:\n    sampler: balanced\n    reset_classifier: true\ntrain:\n  epochs: {ep}\n  lr: {lr}\n  warmup_epochs: 0\n  schedule: cosine\n")
for ds in ["fmnist_lt", "cifar10_lt", "cifar100_lt", "imagenet_lt", "inat2018", "places_lt"]:
    for m, (desc, body) in METHODS.items():
        if ds == "cifar100_lt" and m.startswith("etf"):
            # a simplex ETF of K classes needs d >= K-1 dimensions; ResNet-32 has 64
            body = body.replace("model:\n", "model:\n  width: 32  # 128-d features: a 100-class ETF needs d >= 99\n")
        w(f"{ds}_{m}", f"# {ds}: {desc}.\n_base_: {ds}\n{body}")
    for m, (desc, base, body) in ABL.items():
        w(f"{ds}_{m}", f"# {ds}: {desc}.\n_base_: {ds}_{base}\n{body}")
    if ds in ("fmnist_lt", "cifar10_lt", "cifar100_lt"):
        # BBN's released CIFAR schedule: decays x0.01 at epochs 120 and 160 of 200 (at the same
        # fractions, 7 and 10 of 12, for the short Fashion-MNIST schedule)
        ms = "[7, 10]" if ds == "fmnist_lt" else "[120, 160]"
        w(f"{ds}_bbn_protocol", f"# {ds}: BBN with its own released learning-rate schedule (milestones {ms}, x0.01 each).\n"
          f"_base_: {ds}_bbn\ntrain:\n  milestones: {ms}\n  lr_decay: 0.01\n")
    small = ds in ("fmnist_lt", "cifar10_lt", "cifar100_lt")
    w(f"{ds}_crt", f"# {ds}: {CRT[0].format(ds=ds)}.\n_base_: {ds}\n" + CRT[1].format(ep=4 if ds == "fmnist_lt" else 10, lr=0.1 if small else 0.2))
    if ds.startswith("cifar"):
        for m in list(METHODS) + list(ABL):
            w(f"{ds}_{m}_strong", f"# {ds}: {m} with strong augmentation (AutoAugment CIFAR policy + Cutout 16 px).\n_base_: {ds}_{m}\ndata:\n  augment: strong\n  cutout: 16\n")
print(len(list(out.glob('*.yaml'))))
