import pytest
import torch

from distill.kd.discriminators import ConvSpec, PatchDiscriminator, build_discriminators, layer_specs, output_side
from distill.models import create_model

# GAN-KD paper, Tables 2-3: input side of every layer of DNet1..DNet6 at 300 px.
TABLE_SIDES = {19: [19, 19, 10, 5, 3], 10: [10, 10, 5, 3], 5: [5, 5, 3], 3: [3, 3, 3], 2: [2, 2, 2], 1: [1, 1, 1]}
PAPER_CHANNELS = [512, 1024, 512, 256, 256, 256]


def sides(size):
    out, side = [], size
    for spec in layer_specs(size):
        out.append(side)
        side = spec.out_side(side)
    return out, side


@pytest.mark.parametrize("size", sorted(TABLE_SIDES))
def test_layer_lists_reproduce_tables_2_and_3(size):
    seen, final = sides(size)
    assert seen == TABLE_SIDES[size]
    assert final == 1
    assert layer_specs(size)[-1].final and not any(s.final for s in layer_specs(size)[:-1])


def test_table_details():
    assert layer_specs(19) == [ConvSpec(3, 1, 1), ConvSpec(3, 2, 1), ConvSpec(3, 2, 1), ConvSpec(3, 1, 0), ConvSpec(3, 1, 0, True)]
    assert layer_specs(2) == [ConvSpec(2, 2, 1), ConvSpec(2, 2, 1), ConvSpec(2, 1, 0, True)]
    assert layer_specs(1) == [ConvSpec(1, 1, 0), ConvSpec(1, 1, 0), ConvSpec(1, 1, 0, True)]
    # other sizes: stride 2 until <= 5, valid 3x3 down to 2-3, final conv over the rest
    assert [sides(s)[0] for s in (8, 4)] == [[8, 8, 4, 2], [4, 4, 2]]
    assert all(output_side(s) == 1 for s in range(1, 40))


def test_discriminator_outputs_at_300px_paper_widths():
    # the paper's widths, capped only to keep the test light; the spatial recipe is the table's
    ds = build_discriminators(PAPER_CHANNELS, [19, 10, 5, 3, 2, 1], max_width=16)
    for d, c, s in zip(ds, PAPER_CHANNELS, [19, 10, 5, 3, 2, 1]):
        y = d(torch.randn(2, c, s, s))
        assert y.shape == (2, 1, 1, 1)
    full = PatchDiscriminator(256, 3)                      # DNet4 at full width: 256 -> 256 -> 1
    convs = [m for m in full.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.bias is not None) for c in convs] == [(256, 256, True), (256, 256, True), (256, 1, False)]
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in PatchDiscriminator(8, 1).modules())


@pytest.mark.parametrize("img_size,expected", [(300, [19, 10, 5, 3, 2, 1]), (64, [4, 2, 1, 1, 1, 1])])
def test_discriminators_on_real_teacher_maps(img_size, expected):
    teacher = create_model("ssd_darknet53", 3, width_mult=0.125, min_ratio=0.1, max_ratio=0.9).eval()
    with torch.no_grad():
        feats = teacher.forward_features(torch.zeros(2, 3, img_size, img_size))[2]
    assert [f.shape[-1] for f in feats] == expected
    ds = build_discriminators(teacher.feature_channels, expected)
    for d, f in zip(ds, feats):
        assert d(f).shape == (2, 1, 1, 1)


def test_conditional_discriminator_sees_the_image():
    """Eq. (2)'s D(x, y): the input image, pooled to the map size, is concatenated to the map."""
    torch.manual_seed(0)
    discs = build_discriminators([16, 8], [8, 1], cond_channels=3)
    images = torch.randn(2, 3, 64, 64)
    maps = [torch.randn(2, 16, 8, 8), torch.randn(2, 8, 1, 1)]
    outs = [d(m, images) for d, m in zip(discs, maps)]
    assert [tuple(o.shape) for o in outs] == [(2, 1, 1, 1), (2, 1, 1, 1)]
    assert discs[0].net[0].in_channels == 16 + 3
    # the same map with another image gets another score: the image is an input
    assert not torch.allclose(discs[0](maps[0], images), discs[0](maps[0], images.flip(-1)))
    with pytest.raises(ValueError, match="conditional"):
        discs[0](maps[0])
    assert build_discriminators([16], [8])[0](maps[0]).shape == (2, 1, 1, 1)     # Tables 2-3: unconditional
