"""segnets: every registered model (parametrized over the registry itself, so a new model is tested
automatically), output strides and the by-hand dilation, the registry's errors, pretrained
backbones."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import segnets.models as models
from data.torchvision_compat import torchvision
from segnets import build_segnet, list_segnets, register_segnet

NUM_CLASSES = 5

# Tiny settings per model: resnet18 and narrow heads, so the whole file runs in seconds.
TINY = {
    "deeplabv3plus": dict(
        backbone="resnet18", aspp_channels=16, low_level_channels=8, aux_channels=16
    ),
    "deeplabv3": dict(backbone="resnet18", aspp_channels=16, aux_channels=16),
    "fcn": dict(backbone="resnet18", head_channels=16, aux_channels=16),
    "pspnet": dict(backbone="resnet18", head_channels=16, aux_channels=16),
    "unet": dict(base_width=8, depth=3),
    "lite": dict(width=8),
}


def tiny(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_segnet(name, NUM_CLASSES, **{**TINY.get(name, {}), **kwargs})


def images(n=2, h=33, w=47) -> torch.Tensor:
    # 33 x 47: odd, and divisible by neither 8 nor 16
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(1))


def test_every_model_has_tiny_settings():
    assert sorted(TINY) == list_segnets(), "add tiny settings for a newly registered model"


# ------------------------------------------------------------------------------------------------
# Every registered model


@pytest.mark.parametrize("name", list_segnets())
@pytest.mark.parametrize("aux", [False, True])
def test_output_dict_at_input_resolution(name, aux):
    model = tiny(name, aux=aux).train()
    out = model(images())
    assert set(out) == ({"out", "aux"} if aux else {"out"})
    for logits in out.values():
        assert logits.shape == (2, NUM_CLASSES, 33, 47)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_segnets())
def test_backward_reaches_every_parameter(name):
    model = tiny(name, aux=True).train()
    out = model(images())
    target = torch.randint(0, NUM_CLASSES, (2, 33, 47), generator=torch.Generator().manual_seed(2))
    (F.cross_entropy(out["out"], target) + 0.4 * F.cross_entropy(out["aux"], target)).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"no gradient for {no_grad}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.head.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.aux_head.parameters())


@pytest.mark.parametrize("name", list_segnets())
def test_logits_are_float32_under_bf16_autocast(name):
    """The loss sees float32 logits when the rest of the net runs in bf16 (CUDA's amp; tested
    with CPU's bf16 autocast): the classifier and the final upsampling run outside autocast."""
    model = tiny(name, aux=True).eval()
    x = images()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        assert model.backbone(x)[-1].dtype == torch.bfloat16  # the rest is bf16
    for logits in out.values():
        assert logits.dtype == torch.float32
        assert (logits.bfloat16().float() != logits).any()  # not merely bf16 values widened
    with torch.no_grad():
        full = model(x)
    for key in out:  # bf16 features, float32 classifier: close to the all-float32 logits
        assert (out[key] - full[key]).abs().max() < 0.1 * full[key].abs().max()


@pytest.mark.parametrize("name", list_segnets())
def test_channels_last_matches_contiguous(name):
    model = tiny(name, aux=True).eval()
    x = images()
    with torch.no_grad():
        expected = model(x)
        model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list_segnets())
@pytest.mark.parametrize("size", [(33, 47), (9, 17)])
def test_eval_with_batch_one(name, size):
    model = tiny(name).eval()  # train-mode BN cannot normalise the 1x1 image-pooling maps of N=1
    with torch.no_grad():
        out = model(images(1, *size))
    assert out["out"].shape == (1, NUM_CLASSES, *size)


def test_backbone_holds_the_encoder_and_nothing_else():
    # the engine gives `backbone.*` the base learning rate and the rest 10x: heads must be outside
    model = tiny("deeplabv3plus", aux=True)
    names = [n for n, _ in model.named_parameters()]
    assert {n.split(".")[0] for n in names} == {"backbone", "head", "aux_head"}
    assert not any(n.startswith(("backbone.fc", "backbone.avgpool")) for n in names)


# ------------------------------------------------------------------------------------------------
# Output stride


def layer_shapes(model: nn.Module, layers: list[str], size=64) -> dict[str, tuple[int, int]]:
    shapes = {}
    for name in layers:
        module = model.get_submodule(name)
        module.register_forward_hook(lambda m, i, o, name=name: shapes.update({name: o.shape[-2:]}))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    return shapes


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_resnet_output_stride(backbone, output_stride):
    model = build_segnet(
        "deeplabv3", 3, backbone=backbone, output_stride=output_stride, aspp_channels=8
    )
    shapes = layer_shapes(model, ["backbone.layer3", "backbone.layer4"])
    assert shapes["backbone.layer4"] == (64 // output_stride,) * 2
    assert shapes["backbone.layer3"] == (64 // min(output_stride, 16),) * 2


@pytest.mark.parametrize("output_stride", [8, 16])
def test_lite_output_stride(output_stride):
    shapes = layer_shapes(tiny("lite", output_stride=output_stride), ["backbone.3"])
    assert shapes["backbone.3"] == (64 // output_stride,) * 2


@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_basic_blocks_are_the_atrous_algorithm(output_stride):
    """The by-hand dilation of resnet18 computes the strided network's features at every
    `stride / output_stride`-th position (DeepLabV3 Sec. 3.1), with the same weights."""
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(weights=None).eval()
    backbone = models.resnet_backbone("resnet18", output_stride).eval()
    backbone.load_state_dict({k: v for k, v in plain.state_dict().items() if k[:3] != "fc."})
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        dilated = backbone(x)
        y = plain.maxpool(plain.relu(plain.bn1(plain.conv1(x))))
        strided = []
        for layer in (plain.layer1, plain.layer2, plain.layer3, plain.layer4):
            strided.append(y := layer(y))
    for level, (d, s) in enumerate(zip(dilated, strided, strict=True)):
        step = d.shape[-1] // s.shape[-1]  # 1, 1, 1 or 2, 2 or 4
        assert step == max(1, 2 ** (level + 2) // output_stride)
        torch.testing.assert_close(d[..., ::step, ::step], s, atol=1e-5, rtol=1e-4)


def test_big_resnets_structure():
    r50 = build_segnet("deeplabv3plus", 21, aux=True)  # the default backbone
    assert r50.backbone.channels == [256, 512, 1024, 2048]
    assert len(r50.backbone.layer3) == 6
    with torch.no_grad():
        out = r50.eval()(torch.randn(1, 3, 32, 32))
    assert out["out"].shape == out["aux"].shape == (1, 21, 32, 32)
    r101 = build_segnet("pspnet", 21, backbone="resnet101", output_stride=8)
    assert len(r101.backbone.layer3) == 23
    assert r101.backbone.layer4[1].conv2.dilation == (4, 4)  # torchvision's dilation at OS 8


def test_unet_depth_and_lite_size():
    assert len(tiny("unet").backbone) == TINY["unet"]["depth"] + 1
    params = sum(p.numel() for p in build_segnet("lite", 21).parameters())
    assert 50_000 <= params <= 300_000


# ------------------------------------------------------------------------------------------------
# Registry


def test_list_is_sorted_and_complete():
    names = list_segnets()
    assert names == sorted(names)
    assert {"deeplabv3plus", "deeplabv3", "fcn", "pspnet", "unet", "lite"} <= set(names)


def test_unknown_name_lists_valid_names_and_suggests():
    with pytest.raises(ValueError, match="did you mean 'deeplabv3plus'") as error:
        build_segnet("deeplabv3pluss", 3)
    assert "unet" in str(error.value)


def test_unknown_option_and_bad_values_raise():
    with pytest.raises(ValueError, match="widht"):
        build_segnet("unet", 3, widht=8)
    with pytest.raises(ValueError, match="did you mean 'resnet18'"):
        build_segnet("fcn", 3, backbone="resnet19")
    with pytest.raises(ValueError, match="output_stride"):
        build_segnet("fcn", 3, backbone="resnet18", output_stride=32)


def test_none_options_fall_back_to_defaults():
    model = build_segnet("unet", 3, base_width=None, depth=None, aux=None)
    assert len(model.backbone) == 5 and model.aux_head is None


def test_register_new_model_and_refuse_duplicates(monkeypatch):
    monkeypatch.setattr(models, "_segnet_entrypoints", dict(models._segnet_entrypoints))

    @register_segnet
    def tiny_test_net(num_classes: int, width=4):
        backbone = models.Stages([models.conv_bn_relu(3, width)])
        return models.SegNet(backbone, models.UNetDecoder([width], num_classes))

    assert "tiny_test_net" in list_segnets()
    assert build_segnet("tiny_test_net", 2)(images())["out"].shape == (2, 2, 33, 47)
    with pytest.raises(ValueError, match="already registered"):
        register_segnet(tiny_test_net)

    def unet(num_classes: int):
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="'unet'"):
        register_segnet(unet)


# ------------------------------------------------------------------------------------------------
# Pretrained backbone (a local state_dict; nothing downloads)


@pytest.fixture
def resnet18_state(tmp_path):
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    return state, tmp_path


def test_imagenet_weights_come_from_the_torch_hub_cache(resnet18_state, monkeypatch):
    state, tmp_path = resnet18_state
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"  # torchvision's
    path.parent.mkdir(parents=True)
    torch.save(state, path)  # as if downloaded on an earlier run
    model = build_segnet("fcn", 3, backbone="resnet18", pretrained_backbone="imagenet")
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])


def test_imagenet_weights_offline_name_the_file_and_the_opt_out(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, progress=True):  # what a machine without internet answers
        raise OSError(f"<urlopen error [Errno -2] Name or service not known> ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ValueError) as error:
        build_segnet("fcn", 3, backbone="resnet50", pretrained_backbone="imagenet")
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "hub" / "checkpoints" / "resnet50-") in message
    assert (
        "download.pytorch.org/models/resnet50-" in message and "pretrained_backbone=none" in message
    )
    torch.manual_seed(0)
    scratch = build_segnet("fcn", 3, backbone="resnet18", pretrained_backbone="none")  # opt-out
    torch.manual_seed(0)
    assert torch.equal(
        scratch.backbone.conv1.weight,
        build_segnet("fcn", 3, backbone="resnet18").backbone.conv1.weight,
    )


def test_pretrained_backbone_loads(resnet18_state):
    state, tmp_path = resnet18_state
    torch.save(state, tmp_path / "r18.pth")
    kwargs = dict(backbone="resnet18", output_stride=8, aspp_channels=8)  # dilation keeps shapes
    model = build_segnet(
        "deeplabv3plus", 3, pretrained_backbone=str(tmp_path / "r18.pth"), **kwargs
    )
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("fc."))
    fresh = build_segnet("deeplabv3plus", 3, **kwargs)
    assert not torch.equal(fresh.backbone.conv1.weight, loaded["conv1.weight"])


def test_pretrained_backbone_rejects_missing_file(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(ValueError, match="nowhere.pth"):
        build_segnet("fcn", 3, backbone="resnet18", head_channels=8, pretrained_backbone=str(path))


def test_pretrained_backbone_rejects_wrong_keys_and_shapes(resnet18_state):
    state, tmp_path = resnet18_state
    renamed = dict(state)
    renamed["layer5.weight"] = renamed.pop("layer4.1.bn2.bias")
    torch.save(renamed, tmp_path / "keys.pth")
    with pytest.raises(ValueError, match=r"layer4\.1\.bn2\.bias.*layer5\.weight"):
        build_segnet("fcn", 3, backbone="resnet18", pretrained_backbone=str(tmp_path / "keys.pth"))
    torch.save({**state, "conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "shapes.pth")
    with pytest.raises(ValueError, match="conv1.weight"):
        build_segnet(
            "fcn", 3, backbone="resnet18", pretrained_backbone=str(tmp_path / "shapes.pth")
        )
    torch.save(state, tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"missing keys \['layer1\.2\."):  # resnet18 into resnet34
        build_segnet("fcn", 3, backbone="resnet34", pretrained_backbone=str(tmp_path / "r18.pth"))
