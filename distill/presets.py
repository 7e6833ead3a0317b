"""Named training recipes. A preset is a plain dict of config overrides; YAML and the command line win.

* ``smoke``  -- seconds: tiny images and data, used by the tests.
* ``quick``  -- the CPU default on the embedded dataset: minutes on 2 cores. 256 px input (the embedded
               images are 160-256 px: at 128 px half the objects have no anchor at IoU >= 0.5 and nothing
               is learned in minutes), AdamW (far fewer iterations than SGD from a cold start), and
               "light" augmentation (photometric + flip): SSD's zoom-out / IoU-crop recipe learns ~5x
               slower in the first few hundred iterations (measured: mAP 4.5 vs 19 after 200 iterations).
* ``ablate`` -- one run of ``python -m distill.ablate``: ~2 min on 2 cores, 256 px, 750 images x 2 epochs.
* ``voc``    -- SSD's Pascal VOC recipe (Liu et al. 2016): 300 px, batch 32, lr 1e-3, ~120k iterations
               on VOC07+12 (240 epochs of 517 iterations), lr / 10 at 2/3 and 5/6 of training.
* ``coco``   -- SSD's COCO recipe: 300 px, batch 32, lr 1e-3, ~400k iterations on train2017
               (110 epochs of ~3.7k iterations), lr / 10 at epochs 76 and 97.
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    "smoke": dict(data="shapes", shapes_train=16, shapes_val=8, img_size=64, epochs=1, batch_size=8, lr=0.01,
                  warmup_epochs=0.0, workers=0, eval_every=1, model_kwargs={"min_ratio": 0.1, "max_ratio": 0.9},
                  gan_d_pretrain_iters=1, gan_d_finetune_iters=1, gan_student_max_epochs=1, gan_post_epochs=0,
                  gan_post_step=1, ab_iters=1, disc_max_width=32),
    "quick": dict(data="shapes", img_size=256, epochs=3, batch_size=16, optimizer="adamw", lr=2e-3,
                  weight_decay=0.01, augment="light", warmup_epochs=0.3, schedule="cosine", workers=0,
                  eval_every=1, eval_images=300,
                  model_kwargs={"min_ratio": 0.1, "max_ratio": 0.9},
                  # GAN-KD's schedule (sec. 5) with the paper's 75 D pre-learning and 75 D fine-tuning iterations,
                  # scaled to minutes in two places only: 2 adversarial + 1 post-learning epoch (paper: 180 + 80),
                  # and a student round capped at one epoch when the threshold is not reached, so D is fine-tuned
                  # once between the two adversarial epochs. Discriminator widths are capped at 128 (Tables 2-3:
                  # the map widths, up to 1280 for this teacher): at full width a D step takes 4x longer on a CPU
                  # (measured 6.5 vs 1.5 s per iteration, batch 16, one thread).
                  gan_d_pretrain_iters=75, gan_d_finetune_iters=75, gan_student_max_epochs=1, gan_student_max_iters=0,
                  gan_post_epochs=1, ab_iters=20, disc_max_width=128,
                  # Each optimizer's gradient clipped at norm 10 (the paper clips nothing): Adam's second moment
                  # (beta2 0.999) remembers the first gradients -- norm ~130 from the fresh heads -- for the whole
                  # of a 186-iteration run and shrinks every later step several times; clipped, the step stays at
                  # the learning rate. Measured, baseline at seed 0: 8.82 mAP unclipped (betas 0.9 / 0.999; 6.03 after
                  # two epochs), 27.28 clipped (betas 0.5 / 0.999; 17.56 after two). Over 180 epochs it changes nothing.
                  kd_clip_grad=10.0),
    # The distillation ablation on 2 CPU cores: 21 runs (7 methods x 3 seeds) of ~2 min. Same input and
    # anchors as the quick preset, so the demo teacher serves as is (256 px: maps 16/8/4/2/1/1). 750 images
    # x 2 epochs, the 4-stage schedule scaled to 46 iterations per epoch: D pre-learning (5 it.), student
    # epoch, D fine-tuning (5 it.), student epoch; no SGD post-learning (it only polishes long runs).
    # distill.ablate adds the ImageNet MobileNetV2 backbone when it is installed (as the paper's students).
    # (docs/ablation.md 3.2 was measured when D iterations still used up the epoch's batches.)
    "ablate": dict(data="shapes", shapes_train=750, shapes_val=300, img_size=256, augment="light", epochs=2,
                   batch_size=16, workers=0, eval_every=2, eval_images=None,
                   model_kwargs={"min_ratio": 0.1, "max_ratio": 0.9},
                   gan_d_pretrain_iters=5, gan_d_finetune_iters=5, gan_student_max_epochs=1, gan_post_epochs=0,
                   gan_post_step=1, ab_iters=10, disc_max_width=128),
    "voc": dict(img_size=300, epochs=240, batch_size=32, lr=1e-3, weight_decay=5e-4, schedule="multistep",
                milestones=[160, 200], warmup_epochs=1.0, workers=8, eval_every=10),
    "coco": dict(img_size=300, epochs=110, batch_size=32, lr=1e-3, weight_decay=5e-4, schedule="multistep",
                 milestones=[76, 97], warmup_epochs=1.0, workers=8, eval_every=5),
}

# Per-model defaults (flag names), applied under the preset, YAML and command line: a model's paper values where
# they differ from the product's. RefineDet (sec. 4 "Inference"): top 400 detections per image into per-class
# NMS at 0.45, 200 kept.
MODEL_DEFAULTS: dict[str, dict] = {
    name: dict(pre_nms_top_k=400, iou_threshold=0.45, max_detections=200)
    for name in ("refinedet_vgg16", "refinedet_mobilenetv2")
}
