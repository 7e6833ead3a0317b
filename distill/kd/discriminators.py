"""PatchGAN discriminators of the GAN-KD paper (Tables 2-3), one per SSD feature map.

Blocks are conv -> InstanceNorm -> LeakyReLU(0.2); the last conv has one output channel and no bias.
Every discriminator emits LOGITS: the sigmoid of eq. (2) is folded into ``BCEWithLogits``
(numerically safer, same value). Table 3 draws the sigmoid explicitly only for DNet6.

Two readings of the paper, both built here (``output=``):

* ``"patch"`` (default) -- the paper's TEXT (sec. 5, "Discriminator Networks"): DNet1-DNet5 "are based on
  patch GAN ideology ... the output of the discriminator is a semantic map for the two classes 'real' and
  'fake' ... output sizes: 3x3 for DNet1-DNet4 and 2x2 for DNet5". Every hidden layer is the table's; the
  final 1-channel conv keeps the side it is given (3x3 with padding 1 when the side is >= 3, 1x1
  otherwise), so at 300 px the outputs are 3/3/3/3/2/1 patches and each patch judges a receptive field,
  not the whole map.
* ``"table"`` -- Tables 2-3 read literally, their "Size" rows as INPUT sides: the final conv covers the
  whole remaining map (k = side, no padding) and every discriminator emits one logit per image (1x1).

We default to the text: it states the design intent twice ("patch GAN ideology", explicit output
sizes), while the tables only list layers whose last kernel happens to equal the remaining side; a
1x1 output would make "patch GAN" meaningless. ``--gan-disc-output table`` keeps the literal reading.

The tables are written for the six map sizes of a 300 px input, 19/10/5/3/2/1 (channels
512/1024/512/256/256/256 = the DarkNet-53 teacher). :func:`layer_specs` maps a map SIZE to the
table's layer list; channel widths come from the teacher's feature maps (optionally capped):

==========  =================================================================================
size        hidden layers (k, stride, pad) -> side; final conv ("table" / "patch" output side)   table
==========  =================================================================================
19          3/1/1 ->19, 3/2/1 ->10, 3/2/1 ->5, 3/1/0 ->3; final 3/1/0 ->1 | 3/1/1 ->3        DNet1
10          3/1/1 ->10, 3/2/1 ->5, 3/1/0 ->3; final ->1 | ->3                                 DNet2
5           3/1/1 ->5, 3/1/0 ->3; final ->1 | ->3                                             DNet3
3           3/1/1 ->3, 3/1/1 ->3; final ->1 | ->3                                             DNet4
2           2/2/1 ->2, 2/2/1 ->2; final 2/1/0 ->1 | 1/1/0 ->2                                 DNet5
1           1/1/0 (no norm), 1/1/0 (no norm); final 1/1/0 ->1 (+ sigmoid in the table)      DNet6
other >= 4  3/1/1, then 3/2/1 while side > 5, then 3/1/0 while side >= 4, final as above
==========  =================================================================================

The generic rule reproduces the table exactly for 19, 10 and 5 ("stride-2 until <= 5, then
valid 3x3 down to 3, then a final conv"); 3, 2 and 1 are taken from the table verbatim because the
rule would drop their extra blocks. So the patch outputs are:

* 300 px (19/10/5/3/2/1): 3, 3, 3, 3, 2, 1 -- the sizes the paper's text gives;
* 256 px, the quick and ablate presets (16/8/4/2/1/1): 2, 2, 2, 2, 1, 1 (16 -> 8 -> 4 -> 2 by the rule);
* 64 px smoke (4/2/1/1/1/1): 2, 2, 1, 1, 1, 1.

Instance norm is skipped on 1x1 maps (it would zero them: a 1x1 instance has no variance), which
is what Table 3 does for DNet6. Maps that are not square use their smaller side.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ConvSpec:
    k: int
    s: int
    p: int
    final: bool = False   # the 1-channel output conv (bias=False, no norm / activation)

    def out_side(self, side: int) -> int:
        return (side + 2 * self.p - self.k) // self.s + 1


OUTPUTS = ("patch", "table")


def layer_specs(size: int, output: str = "table") -> list[ConvSpec]:
    """The Table 2-3 layer list for a feature map of side ``size`` (see the module docstring); ``output``
    picks the final conv: "table" (one logit, the literal tables) or "patch" (the text's patch map)."""
    if size < 1:
        raise ValueError(f"feature map side must be >= 1, got {size}")
    if output not in OUTPUTS:
        raise ValueError(f"discriminator output must be one of {OUTPUTS}, got {output!r}")
    specs = _table_specs(size)
    if output == "patch":
        side = size
        for spec in specs[:-1]:
            side = spec.out_side(side)
        specs[-1] = ConvSpec(3, 1, 1, final=True) if side >= 3 else ConvSpec(1, 1, 0, final=True)
    return specs


def _table_specs(size: int) -> list[ConvSpec]:
    if size == 1:                                             # DNet6
        return [ConvSpec(1, 1, 0), ConvSpec(1, 1, 0), ConvSpec(1, 1, 0, final=True)]
    if size == 2:                                             # DNet5
        return [ConvSpec(2, 2, 1), ConvSpec(2, 2, 1), ConvSpec(2, 1, 0, final=True)]
    if size == 3:                                             # DNet4
        return [ConvSpec(3, 1, 1), ConvSpec(3, 1, 1), ConvSpec(3, 1, 0, final=True)]
    specs, side = [ConvSpec(3, 1, 1)], size                   # DNet1-3 and the generic rule
    while side > 5:
        specs.append(ConvSpec(3, 2, 1))
        side = specs[-1].out_side(side)
    while side >= 4:
        specs.append(ConvSpec(3, 1, 0))
        side = specs[-1].out_side(side)
    specs.append(ConvSpec(side, 1, 0, final=True))
    return specs


def output_side(size: int, output: str = "table") -> int:
    side = size
    for spec in layer_specs(size, output):
        side = spec.out_side(side)
    return side


class PatchDiscriminator(nn.Module):
    """x float32 [B, C, S, S] (teacher-space feature map) -> logits [B, 1, s, s] (s: :func:`output_side`).

    Args:
        channels: input channels (the teacher's map width).
        size: map side; picks the layer list via :func:`layer_specs`.
        width: hidden width (Tables 2-3: = channels).
        cond_channels: channels of a conditioning input concatenated to the map (0: none, as drawn in
            Tables 2-3). Eq. (2) writes the conditional form D(x, y) / D(x, G(x)): with ``cond_channels=3``
            the network also sees the input image x, average-pooled to the map's size.
        output: "table" (one logit, the literal tables) or "patch" (the text's patch map).
    """

    def __init__(self, channels: int, size: int, width: int | None = None, negative_slope: float = 0.2,
                 cond_channels: int = 0, output: str = "table"):
        super().__init__()
        width = width or channels
        layers: list[nn.Module] = []
        cin, side = channels + cond_channels, size
        for spec in layer_specs(size, output):
            if spec.final:
                layers.append(nn.Conv2d(cin, 1, spec.k, spec.s, spec.p, bias=False))
            else:
                layers.append(nn.Conv2d(cin, width, spec.k, spec.s, spec.p, bias=True))
                side = spec.out_side(side)
                if side > 1:
                    layers.append(nn.InstanceNorm2d(width, affine=True))
                layers.append(nn.LeakyReLU(negative_slope, inplace=True))
                cin = width
        self.net = nn.Sequential(*layers)
        self.channels, self.size, self.width, self.cond_channels, self.output = channels, size, width, cond_channels, output

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_channels:
            if cond is None or cond.shape[1] != self.cond_channels:
                raise ValueError(f"this discriminator is conditional: it needs a [B, {self.cond_channels}, H, W] input")
            x = torch.cat([x, F.adaptive_avg_pool2d(cond.to(x.dtype), x.shape[-2:])], 1)
        return self.net(x)


def build_discriminators(channels: list[int], sizes: list[int], max_width: int | None = None,
                         cond_channels: int = 0, output: str = "table") -> nn.ModuleList:
    """One :class:`PatchDiscriminator` per feature map (GAN-KD paper, sec. 4 and Tables 2-3). Hidden widths
    are the map widths (the tables: 512 -> 512, 1024 -> 1024, ...) unless ``max_width`` caps them."""
    if len(channels) != len(sizes):
        raise ValueError(f"{len(channels)} channel counts for {len(sizes)} map sizes")
    return nn.ModuleList(PatchDiscriminator(c, s, min(c, max_width) if max_width else c, cond_channels=cond_channels,
                                            output=output)
                         for c, s in zip(channels, sizes))
