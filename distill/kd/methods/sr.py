"""Feature super-resolution distillation (papers/small-object-generative-discriminative.txt): ``--kd sr``.

On the student's two highest-resolution maps (``--sr-maps``, default 0 and 1) a light generator G turns the
student's map z_LR into G(z_LR), which must look like z_HR, the same image's map at twice the input
resolution (the frozen teacher's by default, ``--sr-source student`` for the student's own, no gradient).
A discriminator D with two heads judges real (z_HR) vs generated, and per location object / no object
(D_cls). The slides' objective::

    max_D min_G  1/m sum_i log D(z_HR_i) + alpha L_adv + beta L_cls + gamma L_reg + L_TV + L_MSE

Student steps minimise, over G, the adapters and the student (through z_LR), the terms logged as
``sr_adv`` (alpha L_adv), ``sr_cls`` (beta L_cls), ``sr_reg`` (gamma L_reg), ``sr_tv`` and ``sr_mse``, with D
frozen, all in one distillation optimizer state (the method's). D is trained in the schedule's
discriminator stages, as GAN-KD's are, on ``d_sr_adv`` (-[log D(z_HR) + log(1 - D(G(z_LR)))], the max over
D of the game's first two terms) and ``d_sr_cls`` (L_cls: D_cls must be right on both z_HR and G(z_LR),
as in SOD-MTGAN; maximising the slides' L_cls over D would train D_cls to be wrong).

Comparison space: with the teacher as source, G(z_LR) goes through the student's 1x1 adapter into the
teacher's channels and both sides are standardised with the teacher's frozen statistics, as every feature
term is; with the student as source both sides stay in the student's channels, standardised with the
statistics of the first batch of z_HR (frozen, saved with the method).

L_reg reads G(z_LR) (student channels) with the student's own regression head (its weights detached: only
G and the student's features learn from it) on the anchors of those maps matched to a small object
(box side sqrt(w h) < ``--sr-small`` px), against the multibox targets. Students whose detection head is
two-step (RefineDet: the ODM regresses refined anchors of the ARM) get no L_reg (logged 0).

``--sr-region small`` compares G(z_LR) with z_HR in L_MSE and L_TV only on the cells inside small ground-truth
boxes (side below ``--sr-small``): the slides sum over the whole map (the default, 'all'); SOD-MTGAN and
Perceptual GAN, which the slides build on, super-resolve small objects' regions only, and on shapes-small the
whole-map reading cost large objects most (seed 0: APl -20 points), so the regional reading is the option.

L_MSE and L_TV carry the slides' weight 1 relative to each other, and together are scaled once, at the first
student step, to ``--sr-init-ratio`` (0.25) x that step's detection loss; the factor is then frozen and saved
(``sr_feature_scale``), as L_REC's is. ``--sr-mse-weight`` / ``--sr-tv-weight`` multiply after that factor, which is
always computed from the unit-weight sum: a weight of 0 removes its term, as the slides' ablation does, without
handing the other term its share (calibrated on the weighted sum, "without L_MSE" would be "L_TV at ~8x": on
shapes-small seed 0 that cost 8.4 mAP and 5.4 APs against the baseline). Why: the slides compare features of one network at two resolutions, of one scale; here z_HR is
the teacher's map standardised with the teacher's statistics and G(z_LR) the student's through an adapter, so
at the start L_MSE measured ~150 and L_TV ~21 against a detection loss of ~25 (ssdlite_mobilenetv2 from the
ImageNet backbone, the demo teacher, shapes-small at 256 px), and unscaled they would drown the detection
loss. ``--sr-init-ratio 0`` keeps the slides' unit weights as they are. The raw values are logged
(``sr_mse_raw``, ``sr_tv_raw``).

Where G lives. By default G is the method's (training-only; the exported student is the student alone). With
``--sr-keep-g`` G is the student's own (model kwarg ``sr_generator``, distill/models/sr_generator.py): the
student's heads read G(z_LR) in training and at inference, the student's ``forward_features`` returns the post-G
maps, so G(z_LR) is read off those maps and the method owns no generator; G's parameters are the student's and
step with every student optimizer (detection, each method's distillation state, post-learning), each once.
z_HR with ``--sr-source student`` is then the student's map BEFORE G (``base_features``) at 2x: the target of
G is what the network sees of a larger image, not G's own output on it, which would move with G and admit the
degenerate G that maps both resolutions to the same features.

What the SR terms train (``--sr-grad``). The slides minimise their objective over theta_G only: G learns from
the SR terms, the detector from the detection loss. With a training-only G that reading leaves the exported
student untouched, so the default (``student``) lets the terms reach the student's backbone through z_LR: a
distillation signal, our reading for a teacher-student setting. ``--sr-grad g`` (with ``--sr-keep-g``) is the
slides' reading: G runs a second time on its detached input for the SR terms (G is ~9 % of the student's
MACs), so the backbone, which the coarser maps of large objects also read, learns from the detection loss alone.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .. import sr_modules as S
from ..features import FeatureStandardizer
from ..losses import box_masks
from .base import DiscriminatorStep, KDMethod, StudentStep, calibrated_scale, set_requires_grad

SOURCES = ("teacher", "student")
TARGETS = ("teacher", "gt")
REGIONS = ("all", "small")
GRADS = ("student", "g")


class _Context:
    """What the method reads from its session (plain references, not sub-modules)."""

    def __init__(self, session, frozen_bn):
        self.session, self.frozen_bn = session, frozen_bn
        self.reg_head: nn.Module | None = None


class SuperResolutionKD(KDMethod):
    name = "sr"
    uses_features = True
    has_discriminator = True

    def __init__(self, student_channels: list[int], teacher_channels: list[int], *, maps: list[int],
                 source: str = "teacher", target: str = "teacher", alpha: float = 1e-3, beta: float = 1.0,
                 gamma: float = 1.0, width: int = 32, blocks: int = 2, small: float = 32.0,
                 mse_weight: float = 1.0, tv_weight: float = 1.0, keep_g: bool = False, init_ratio: float = 0.25,
                 region: str = "all", grad: str = "student"):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"--sr-source must be one of {', '.join(SOURCES)}, got {source!r}")
        if target not in TARGETS:
            raise ValueError(f"--sr-target must be one of {', '.join(TARGETS)}, got {target!r}")
        if region not in REGIONS:
            raise ValueError(f"--sr-region must be one of {', '.join(REGIONS)}, got {region!r}")
        if grad not in GRADS or (grad == "g" and not keep_g):
            raise ValueError(f"--sr-grad must be one of {', '.join(GRADS)} ('g' with --sr-keep-g), got {grad!r}")
        self.region, self.grad = region, grad
        self._g_inputs: dict[int, torch.Tensor] = {}     # --sr-grad g: the kept G's last inputs (pre-G maps)
        self.maps, self.source, self.target = list(maps), source, target
        self.alpha, self.beta, self.gamma, self.small = float(alpha), float(beta), float(gamma), float(small)
        self.mse_weight, self.tv_weight, self.keep_g = float(mse_weight), float(tv_weight), bool(keep_g)
        self.init_ratio = float(init_ratio)
        self.feature_scale: float | None = None      # L_MSE + L_TV calibration (see student_terms), frozen once set
        # kept G: the student's own (attach checks it has one); else the method's, training-only
        self.generators = None if self.keep_g else nn.ModuleList(
            S.SRGenerator(student_channels[k], width, blocks) for k in self.maps)
        space = teacher_channels if source == "teacher" else student_channels
        self.disc = S.SRDiscriminator([space[k] for k in self.maps], width)
        self.own_std = FeatureStandardizer([student_channels[k] for k in self.maps]) if source == "student" else None
        self._ctx: _Context | None = None
        self._cost = ""

    # ------------------------------------------------------------------------------------------- wiring
    def attach(self, session, frozen_bn) -> None:
        self._ctx = _Context(session, frozen_bn)
        self._check_student_generator(session.student)
        model = session.teacher if self.source == "teacher" else session.student
        self.hr = S.HighResolution(model, self.maps, 2.0, None if self.source == "teacher" else frozen_bn)
        self.teacher_apl = S.anchors_per_location(session.teacher)
        self.student_apl = S.anchors_per_location(session.student)
        st = session.student
        self._ctx.reg_head = getattr(st, "loc_head", None)     # SSD's; RefineDet's packed heads have none
        self._cost = self._measure_cost(session.cfg.data.img_size)
        if self.grad == "g":
            for k, g in zip(self.maps, self.generator_modules()):
                g.register_forward_pre_hook(self._keep_input(k))

    def _keep_input(self, k: int):
        """Forward pre-hook on the kept G of map ``k``: remember its input (z_LR before G) for --sr-grad g."""
        def hook(_module, args):
            self._g_inputs[k] = args[0]
        return hook

    def _check_student_generator(self, student: nn.Module) -> None:
        """ValueError when the student's kept generator (model kwarg sr_generator) does not match --sr-keep-g."""
        kept = list(getattr(student, "sr_maps", []) or [])
        if self.keep_g and kept != sorted(self.maps):
            raise ValueError(f"--sr-keep-g: the student keeps a generator on maps {kept or 'none'}, --sr-maps "
                             f"{self.maps}: build the student with the model kwarg sr_generator that --sr-keep-g sets")
        if not self.keep_g and kept:
            raise ValueError(f"--kd ...+sr: the student already keeps a generator on maps {kept} (model kwarg "
                             "sr_generator): add --sr-keep-g so the method trains that one")

    def generator_modules(self) -> list[nn.Module]:
        """G per SR map: the student's kept generators (--sr-keep-g) or the method's own."""
        if self.keep_g:
            return [self._ctx.session.student.sr_generator[str(k)] for k in self.maps]
        return list(self.generators)

    def _measure_cost(self, img_size) -> str:
        st = self._ctx.session.student
        p = next(st.parameters())
        sizes = st.feature_sizes(img_size)
        z = [torch.zeros(1, st.feature_channels[k], *sizes[k], device=p.device) for k in self.maps]
        gens = nn.ModuleList(self.generator_modules())
        g_params, g_macs = S.conv_cost(gens, z, lambda zs: [g(x) for g, x in zip(gens, zs)])
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        was = st.training
        st.eval()
        try:
            s_params, s_macs = S.conv_cost(st, [torch.zeros(1, 3, h, w, device=p.device)], lambda x: st(x[0]))
        finally:
            st.train(was)
        share = f"{100 * g_macs / max(s_macs, 1):.0f} % of the student's {s_macs / 1e6:.1f} M"
        if self.keep_g:     # the student's measures include G
            s_params = sum(q.numel() for q in st.parameters())
            return (f"sr: G {g_params / 1e6:.3f} M params ({100 * g_params / max(s_params, 1):.0f} % of the "
                    f"student's {s_params / 1e6:.3f} M with G), {g_macs / 1e6:.1f} M MACs per image ({share} with "
                    "G); kept in the exported student")
        return (f"sr: G {g_params / 1e6:.3f} M params, {g_macs / 1e6:.1f} M MACs per image ({share}; training "
                "only, not in the exported student)")

    def describe(self) -> str:
        return self._cost

    def student_side_parameters(self) -> list[nn.Parameter]:
        """The method's own G (a kept G is the student's: its optimizers step it already)."""
        return [] if self.generators is None else list(self.generators.parameters())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.disc.parameters())

    # ------------------------------------------------------------------------------------------- spaces
    def _space(self, j: int, x: torch.Tensor, adapt: bool) -> torch.Tensor:
        """Map ``self.maps[j]`` into the comparison space (see the module docstring)."""
        k, ses = self.maps[j], self._ctx.session
        if self.source == "student":
            return self._standardize(self.own_std, j, x)
        if adapt and ses.adapters is not None:
            x = ses.adapters.maps[k](x)
        if ses.standardizer is not None and ses.kd.standardize:
            x = self._standardize(ses.standardizer, k, x)
        return x

    @staticmethod
    def _standardize(std: FeatureStandardizer, k: int, x: torch.Tensor) -> torch.Tensor:
        m, s = getattr(std, f"mean_{k}"), getattr(std, f"std_{k}")
        return (x - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)

    def high_res(self, images: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """z_HR in the comparison space, no gradient: float32 [B, C_k, H_k, W_k] per SR map."""
        hr = self.hr(images, [sizes[k] for k in self.maps])
        with torch.no_grad():
            if self.own_std is not None and not self.own_std.is_fitted:
                self.own_std.fit([hr])
            return [self._space(j, x, adapt=False) for j, x in enumerate(hr)]

    def _p_star(self, images, targets, sizes, teacher_logits) -> list[torch.Tensor]:
        """p* [B, H_k, W_k] per SR map: the teacher's object probability at the location, or 1 inside a
        ground-truth box (``--sr-target gt``)."""
        if self.target == "gt" and targets is not None:
            return [m.squeeze(1) for m in box_masks(targets, [sizes[k] for k in self.maps], images.device)]
        return S.object_probability(teacher_logits(), sizes, self.teacher_apl, self.maps)

    def _teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        ses = self._ctx.session
        conf = ses.teacher_outputs(images)[1]
        return ses.teacher.box_coder.class_logits(conf)

    # ------------------------------------------------------------------------------------------- terms
    def student_terms(self, step: StudentStep):
        sizes = [tuple(f.shape[-2:]) for f in step.feats]
        hr = self.high_res(step.images, sizes)
        gen = self._generated(step.feats, g_only=self.grad == "g")
        gen_c = [self._space(j, x, adapt=True) for j, x in enumerate(gen)]
        p_star = self._p_star(step.images, step.targets, sizes, lambda: step.teacher_logits)
        set_requires_grad(self.disc, False)
        try:
            fake = [self.disc(x, j) for j, x in enumerate(gen_c)]
            with torch.no_grad():
                real = [self.disc(x, j) for j, x in enumerate(hr)]
        finally:
            set_requires_grad(self.disc, True)
        masks = self._region_masks(step, sizes)
        tv = sum(S.sr_tv(x, m) for x, m in zip(gen_c, masks))
        mse = sum(S.sr_mse(h, x, m) for h, x, m in zip(hr, gen_c, masks))
        raw = float(tv.detach() + mse.detach())     # the slides' unit-weight sum: see the module docstring
        if self.feature_scale is None and raw > 0:   # --sr-region small: calibrated on the first batch with a small box
            self.feature_scale = calibrated_scale(step, raw, self.init_ratio) if self.init_ratio > 0 else 1.0
        scale = 1.0 if self.feature_scale is None else self.feature_scale
        terms = {"sr_adv": self.alpha * sum(S.sr_adv(f[0]) for f in fake),
                 "sr_cls": self.beta * sum(S.sr_cls(f[1], r[1], p) for f, r, p in zip(fake, real, p_star)),
                 "sr_reg": self.gamma * self._reg(gen, step, sizes),
                 "sr_tv": scale * self.tv_weight * tv, "sr_mse": scale * self.mse_weight * mse}
        info = {"sr_d_gen": sum(torch.sigmoid(f[0]).mean().item() for f in fake) / len(fake),
                "sr_d_real": sum(torch.sigmoid(r[0]).mean().item() for r in real) / len(real),
                "sr_mse_raw": float(mse.detach()), "sr_tv_raw": float(tv.detach())}
        return terms, info

    def _region_masks(self, step: StudentStep, sizes) -> list[torch.Tensor | None]:
        """Per SR map: None (``--sr-region all``) or the small boxes' cells [B, 1, H, W] (``small``)."""
        if self.region == "all":
            return [None] * len(self.maps)
        return S.small_box_masks(step.targets, [sizes[k] for k in self.maps], tuple(step.images.shape[-2:]),
                                 self.small, step.images.device)

    def extra_state(self) -> dict:
        return {"sr_feature_scale": self.feature_scale}

    def load_extra_state(self, state: dict) -> None:
        self.feature_scale = state.get("sr_feature_scale")

    def _generated(self, feats: list[torch.Tensor], g_only: bool = False) -> list[torch.Tensor]:
        """G(z_LR) per SR map from the student's six maps (``forward_features``): a kept G has already run
        (the maps are post-G), the method's own runs here. ``g_only`` (--sr-grad g): G runs again on its
        detached input, so the terms built on it train G and not the backbone under it."""
        if g_only:
            z = [self._g_inputs[k].detach() for k in self.maps]
            return [g(x) for g, x in zip(self.generator_modules(), z)]
        if self.keep_g:
            return [feats[k] for k in self.maps]
        return [g(feats[k]) for g, k in zip(self.generators, self.maps)]

    def _reg(self, gen: list[torch.Tensor], step: StudentStep, sizes) -> torch.Tensor:
        """L_reg on the anchors of the SR maps matched to a small object (0 for two-step heads)."""
        if self._ctx.reg_head is None:
            return gen[0].sum() * 0.0
        ses, at = self._ctx.session, step.anchor_targets
        slices = S.map_slices(sizes, self.student_apl)
        t_sr, t_star, masks = [], [], []
        for j, k in enumerate(self.maps):
            layer = self._ctx.reg_head.layers[k]
            frozen = {n: p.detach() for n, p in layer.named_parameters()}
            y = functional_call(layer, {**frozen, **dict(layer.named_buffers())}, (gen[j],))   # [B, A*4, H, W]
            b, _, h, w = y.shape
            t_sr.append(y.view(b, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
            sl = slices[k]
            boxes = ses.student.box_coder.decode(at.loc[:, sl], ses.anchors[sl])       # the matched ground truths
            side = S.box_side(boxes, tuple(step.images.shape[-2:]))
            t_star.append(at.loc[:, sl])
            masks.append((at.labels[:, sl] > 0) & (side < self.small))
        return S.sr_reg(torch.cat(t_sr, 1), torch.cat(t_star, 1), torch.cat(masks, 1))

    def discriminator_terms(self, step: DiscriminatorStep):
        ses, images = self._ctx.session, step.images
        with torch.no_grad(), self._ctx.frozen_bn(ses.student):
            feats = ses.student.forward_features(images)[2]
        sizes = [tuple(f.shape[-2:]) for f in feats]
        hr = self.high_res(images, sizes)
        with torch.no_grad():
            gen_c = [self._space(j, x, adapt=True) for j, x in enumerate(self._generated(feats))]
        p_star = self._p_star(images, getattr(step, "targets", None), sizes, lambda: self._teacher_logits(images))
        real = [self.disc(x, j) for j, x in enumerate(hr)]
        fake = [self.disc(x, j) for j, x in enumerate(gen_c)]
        d_adv = sum(S.sr_d_adv(r[0], f[0]) for r, f in zip(real, fake))
        d_cls = sum(S.sr_cls(f[1], r[1], p) for f, r, p in zip(fake, real, p_star))
        with torch.no_grad():
            info = {"sr_d_acc_real": sum((r[0] > 0).float().mean().item() for r in real) / len(real),
                    "sr_d_acc_gen": sum((f[0] < 0).float().mean().item() for f in fake) / len(fake)}
        return {"d_sr_adv": d_adv, "d_sr_cls": d_cls}, info
