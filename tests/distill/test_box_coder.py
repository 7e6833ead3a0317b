import torch

from distill.models.box_coder import BoxCoder, cxcywh_to_xyxy, xyxy_to_cxcywh


def test_round_trip():
    torch.manual_seed(0)
    anchors = torch.rand(50, 4) * 0.5 + 0.1
    xy = torch.rand(50, 2) * 0.6
    gt = torch.cat([xy, xy + torch.rand(50, 2) * 0.3 + 0.02], 1)
    c = BoxCoder()
    torch.testing.assert_close(c.decode(c.encode(gt, anchors), anchors), gt, atol=1e-6, rtol=1e-5)


def test_known_values():
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    gt = torch.tensor([[0.42, 0.3, 0.62, 0.7]])    # cx .52, cy .5, w .2, h .4
    t = BoxCoder((0.1, 0.1, 0.2, 0.2)).encode(gt, anchors)
    torch.testing.assert_close(t, torch.tensor([[0.02 / (0.2 * 0.1), 0.0, 0.0, 0.0]]), atol=1e-5, rtol=0)


def test_format_conversions():
    b = torch.tensor([[0.1, 0.2, 0.5, 0.9]])
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(b)), b)
