"""Segmentation networks, built by name from a registry (timm style: a variant is a set of kwargs).

Every model is a `SegNet`: `backbone` (the encoder; the training engine gives it the base learning
rate and everything else 10x) returns a list of feature maps, shallow to deep; `head` turns them
into logits at reduced resolution; `forward` upsamples to the input size and returns
`{"out": logits}`, plus `{"aux": ...}` when built with `aux=True`.

    deeplabv3plus  DeepLabV3+  Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution"
    deeplabv3      DeepLabV3   Chen et al. 2017, "Rethinking Atrous Convolution"
    fcn            FCN         Long et al. 2015 (the two-conv head of mmseg/torchvision)
    pspnet         PSPNet      Zhao et al. 2017, "Pyramid Scene Parsing Network"
    unet           U-Net       Ronneberger et al. 2015
    lite           MobileNetV2-style encoder (Sandler et al. 2018) + LR-ASPP-style decoder
                   (Howard et al. 2019, MobileNetV3): the CPU proxy network

The ResNet models use torchvision's ResNets; `pretrained_backbone` is None or "none" (random
weights), "imagenet" (torchvision's IMAGENET1K_V1 weights through its weights API, from the torch
hub cache, downloaded there on first use) or the path of a local torchvision state_dict.
Example: `build_segnet("deeplabv3plus", 21, backbone="resnet101", pretrained_backbone="imagenet")`.
"""

import inspect
import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from data.torchvision_compat import torchvision
from surrogates.checks import unknown_name

_segnet_entrypoints: dict[str, Callable[..., nn.Module]] = {}  # model name -> builder function


def register_segnet(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a builder `fn(num_classes, **kwargs) -> nn.Module` under fn.__name__."""
    if fn.__name__ in _segnet_entrypoints:
        raise ValueError(f"a segnet is already registered under the name '{fn.__name__}'")
    _segnet_entrypoints[fn.__name__] = fn
    return fn


def list_segnets() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_segnet_entrypoints)


def build_segnet(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered segmentation network.

    Args:
        name: a name from `list_segnets()`.
        num_classes: number of output channels (logits).
        **kwargs: the model's options (see each builder's docstring); None values are dropped so
            the model's defaults win, which lets configs leave a key unset.

    Returns:
        An nn.Module whose forward maps (N, 3, H, W) to {"out": (N, num_classes, H, W)} and, when
        built with aux=True, "aux" of the same shape.

    Example: `build_segnet("unet", 7, base_width=8, depth=3)`.
    """
    if name not in _segnet_entrypoints:
        raise unknown_name("segnet", name, list_segnets())
    builder = _segnet_entrypoints[name]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    valid = [p for p in inspect.signature(builder).parameters if p != "num_classes"]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"segnet '{name}' has no option(s) {unknown}; valid: {', '.join(valid)}")
    return builder(num_classes, **kwargs)


# ------------------------------------------------------------------------------------------------
# The model: backbone -> head -> upsample


class SegNet(nn.Module):
    """backbone (list of features, shallow to deep) -> head (logits at reduced size) -> upsampling.

    aux_head, when given, classifies features[aux_from] (the deep-supervision loss of PSPNet).
    """

    def __init__(
        self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None = None, aux_from=-2
    ):
        super().__init__()
        self.backbone, self.head, self.aux_head, self.aux_from = backbone, head, aux_head, aux_from

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        result = {"out": upsample_logits(self.head(features), size)}  # (N, C, H, W)
        if self.aux_head is not None:
            result["aux"] = upsample_logits(self.aux_head(features[self.aux_from]), size)
        return result


class Classifier(nn.Conv2d):
    """The 1x1 classifier that makes the logits, computed in float32 even inside a bf16
    autocast region: the loss then sees float32 logits, as in the reference (which trained in
    float32), not bf16-rounded ones. The rest of the network keeps bf16's speed."""

    def __init__(self, c_in: int, num_classes: int):
        super().__init__(c_in, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def upsample_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """The logits upsampled to the input size in float32 (see Classifier)."""
    with torch.autocast(logits.device.type, enabled=False):
        return upsample(logits.float(), size)


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def conv_bn_relu(c_in: int, c_out: int, kernel=3, stride=1, dilation=1, groups=1) -> nn.Module:
    padding = dilation * (kernel - 1) // 2  # "same" size at stride 1
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def fcn_aux_head(c_in: int, channels: int, num_classes: int) -> nn.Module:
    """3x3 conv -> BN -> ReLU -> dropout 0.1 -> 1x1 classifier: mmseg's auxiliary FCNHead."""
    return nn.Sequential(
        conv_bn_relu(c_in, channels), nn.Dropout2d(0.1), Classifier(channels, num_classes)
    )


# ------------------------------------------------------------------------------------------------
# ResNet backbones (torchvision), dilated to output stride 8 or 16 (DeepLabV3 Sec. 3.1)

_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without avgpool/fc; forward returns [layer1, layer2, layer3, layer4].

    The attribute names are torchvision's, so its state_dicts load as they are (minus fc.*).
    """

    def __init__(self, resnet: nn.Module):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(resnet, name))
        self.channels = [c * resnet.layer1[0].expansion for c in (64, 128, 256, 512)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # stride 4
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [c1, c2, c3, self.layer4(c3)]


def resnet_backbone(
    name: str, output_stride: int, pretrained_backbone: str | None = None
) -> ResNetBackbone:
    if name not in _RESNETS:
        raise unknown_name("backbone", name, _RESNETS)
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    dilate = [False, output_stride == 8, True]  # layer2, layer3, layer4: stride -> dilation
    if name in ("resnet18", "resnet34"):  # BasicBlock: torchvision refuses dilation
        resnet = getattr(torchvision.models, name)(weights=None)
        _dilate_basic_blocks(resnet, dilate)
    else:
        resnet = getattr(torchvision.models, name)(
            weights=None, replace_stride_with_dilation=dilate
        )
    backbone = ResNetBackbone(resnet)
    if pretrained_backbone == IMAGENET:
        load_backbone_weights(backbone, imagenet_weights_file(name))
    elif pretrained_backbone not in (None, "none"):
        load_backbone_weights(backbone, pretrained_backbone)
    return backbone


IMAGENET = "imagenet"  # pretrained_backbone: torchvision's ImageNet weights


def imagenet_weights_file(name: str) -> Path:
    """The torch hub cache file of torchvision's IMAGENET1K_V1 weights for ResNet `name`,
    downloaded on first use (as segmentation codebases fetch their backbones). Offline and not
    cached: a one-line ValueError naming the file to put there."""
    url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # a network that swallows packets fails, instead of hanging
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except OSError as error:  # URLError, timeouts, refused connections
        raise ValueError(
            f"ImageNet weights for {name} are not at {path} and could not be downloaded "
            f"({error}); put {url} there, or set pretrained_backbone=PATH (a local file) or "
            "pretrained_backbone=none (random weights)"
        ) from None
    finally:
        socket.setdefaulttimeout(timeout)
    return path


def _dilate_basic_blocks(resnet: nn.Module, dilate: list[bool]) -> None:
    """What `replace_stride_with_dilation` does for Bottleneck, done by hand for BasicBlock.

    In a dilated layer the strided conv keeps stride 1 and the previous dilation; every later 3x3
    conv gets the new dilation, so each sees the same input pixels as in the strided network
    (the "atrous algorithm", DeepLabV3 Sec. 3.1). Weights are unchanged: state_dicts still load.
    """
    dilation = 1
    for layer, flag in zip([resnet.layer2, resnet.layer3, resnet.layer4], dilate, strict=True):
        if not flag:
            continue
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(layer):
            for conv in (block.conv1, block.conv2):
                d = previous if (i == 0 and conv is block.conv1) else dilation
                conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> None:
    """Load a local torchvision ResNet state_dict; fc.* is ignored, any other mismatch raises."""
    if not os.path.isfile(path):
        raise ValueError(f"pretrained_backbone file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"pretrained_backbone {path} holds a {type(state).__name__}, not a dict")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(
            f"pretrained_backbone {path} does not fit the backbone: "
            f"missing keys {missing[:8]}, unexpected keys {unexpected[:8]}"
        )
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        raise ValueError(f"pretrained_backbone {path} has wrong shapes for {wrong[:8]}")
    backbone.load_state_dict(state)


# ------------------------------------------------------------------------------------------------
# Heads on ResNet features


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3 Sec. 3.3): a 1x1 conv, three 3x3 atrous convs and
    image pooling (global context, since large rates on small maps mostly see padding), concatenated
    and projected by a 1x1 conv."""

    def __init__(self, c_in: int, channels: int, rates: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(c_in, channels, kernel=1)]
            + [conv_bn_relu(c_in, channels, dilation=r) for r in rates]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(c_in, channels, 1))
        self.project = conv_bn_relu(channels * (len(rates) + 2), channels, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])  # (N, C, 1, 1) -> (N, C, h, w)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    return (6, 12, 18) if output_stride == 16 else (12, 24, 36)  # doubled at OS 8 (Sec. 3.3)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module (Sec. 3.2): average-pool to bins x bins, 1x1 conv to
    c_in / len(bins) channels, upsample, concatenate with the input -> (N, 2 * c_in, h, w)."""

    def __init__(self, c_in: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_bn_relu(c_in, c_in // len(bins), 1))
            for b in bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] + [upsample(s(x), x.shape[-2:]) for s in self.stages], dim=1)


class LastStageHead(nn.Module):
    """context module on the deepest features -> dropout 0.1 -> 1x1 classifier (FCN, PSP, V3)."""

    def __init__(self, context: nn.Module, channels: int, num_classes: int):
        super().__init__()
        self.context, self.dropout = context, nn.Dropout2d(0.1)
        self.classifier = Classifier(channels, num_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.context(features[-1])))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the deepest features, upsampled to the stride-4 low-level features (reduced to few
    channels so they do not outweigh the encoder's, DeepLabV3+ Sec. 3.1), concatenated, two 3x3
    convs, classifier."""

    def __init__(self, channels: list[int], aspp_channels, low_level_channels, num_classes, rates):
        super().__init__()
        self.aspp = ASPP(channels[-1], aspp_channels, rates)
        self.reduce = conv_bn_relu(channels[0], low_level_channels, kernel=1)
        self.fuse = nn.Sequential(
            conv_bn_relu(aspp_channels + low_level_channels, aspp_channels),
            conv_bn_relu(aspp_channels, aspp_channels),
        )
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = Classifier(aspp_channels, num_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = self.reduce(features[0])  # (N, 48, H/4, W/4)
        x = upsample(self.aspp(features[-1]), low.shape[-2:])
        return self.classifier(self.dropout(self.fuse(torch.cat([x, low], dim=1))))


def resnet_segnet(backbone: ResNetBackbone, head, aux, aux_channels, num_classes) -> SegNet:
    """The ResNet models' aux head is mmseg's FCNHead on layer3."""
    aux_head = fcn_aux_head(backbone.channels[2], aux_channels, num_classes) if aux else None
    return SegNet(backbone, head, aux_head, aux_from=2)


# ------------------------------------------------------------------------------------------------
# U-Net and the lite proxy network: encoders as a list of stages


class Stages(nn.ModuleList):
    """An encoder as a list of stages; forward returns every stage's output, shallow to deep."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self:
            x = stage(x)
            features.append(x)
        return features


def double_conv(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(conv_bn_relu(c_in, c_out), conv_bn_relu(c_out, c_out))


class UNetDecoder(nn.Module):
    """Upsample, concatenate the skip, double conv, once per level (U-Net Sec. 2). Bilinear
    upsampling to the skip's own size, not a transposed conv, so odd sizes need no cropping."""

    def __init__(self, widths: list[int], num_classes: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            double_conv(widths[i + 1] + widths[i], widths[i])
            for i in reversed(range(len(widths) - 1))
        )
        self.classifier = Classifier(widths[0], num_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1]), strict=True):
            x = block(torch.cat([upsample(x, skip.shape[-2:]), skip], dim=1))
        return self.classifier(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block (Sec. 3.3): 1x1 expand -> 3x3 depthwise -> linear 1x1 projection, with a
    residual when the shape is kept."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int, dilation: int = 1):
        super().__init__()
        hidden = c_in * expand
        layers = [conv_bn_relu(c_in, hidden, kernel=1)] if expand != 1 else []
        layers += [
            conv_bn_relu(hidden, hidden, stride=stride, dilation=dilation, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),  # linear bottleneck: no ReLU (Sec. 3.2)
            nn.BatchNorm2d(c_out),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


# MobileNetV2 Table 2 rows (expand t, channels / 16, blocks n, stride s) up to the 64-channel row,
# with 2 instead of 4 blocks there: ~150k parameters at width 16.
_LITE_STAGES = [(1, 1, 1, 1), (6, 1.5, 2, 2), (6, 2, 3, 2), (6, 4, 2, 2)]


def lite_encoder(width: int, output_stride: int) -> Stages:
    """Stride-2 stem + the stages above, at strides 2, 4, 8, 16; at output stride 8 the last stage
    keeps stride 1 and dilates instead. ReLU where the paper has ReLU6 (which is there for
    low-precision inference), so that every model shares conv_bn_relu."""
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    stem = conv_bn_relu(3, width, stride=2)
    stages, c_in = [], width
    for i, (expand, multiple, blocks, stride) in enumerate(_LITE_STAGES):
        c_out = round(width * multiple)
        dilation = 2 if output_stride == 8 and i == len(_LITE_STAGES) - 1 else 1
        first = InvertedResidual(c_in, c_out, 1 if dilation > 1 else stride, expand)
        rest = [InvertedResidual(c_out, c_out, 1, expand, dilation) for _ in range(blocks - 1)]
        stages.append(nn.Sequential(*([stem] if i == 0 else []), first, *rest))
        c_in = c_out
    encoder = Stages(stages)
    encoder.channels = [round(width * multiple) for _, multiple, _, _ in _LITE_STAGES]
    return encoder


class LiteHead(nn.Module):
    """LR-ASPP-style context (MobileNetV3's decoder: a 1x1 conv gated by a sigmoid of globally
    pooled features, no BN on the pooled map), upsampled to the stride-2 skip, concatenated, one
    3x3 conv, classifier. The stride-2 skip is what keeps 1-2 px structures on small images."""

    def __init__(self, c_skip: int, c_deep: int, channels: int, num_classes: int):
        super().__init__()
        self.context = conv_bn_relu(c_deep, channels, kernel=1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_deep, channels, 1))
        self.fuse = conv_bn_relu(channels + c_skip, channels)
        self.classifier = Classifier(channels, num_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        skip, deep = features[0], features[-1]
        x = self.context(deep) * torch.sigmoid(self.gate(deep))
        x = torch.cat([upsample(x, skip.shape[-2:]), skip], dim=1)
        return self.classifier(self.fuse(x))


# ------------------------------------------------------------------------------------------------
# Registered models: a few lines of options each


@register_segnet
def deeplabv3plus(
    num_classes: int,
    backbone="resnet50",
    output_stride=16,
    aspp_channels=256,
    low_level_channels=48,
    aux=False,
    aux_channels=256,
    pretrained_backbone=None,
) -> SegNet:
    """DeepLabV3+: ResNet (`backbone` resnet18/34/50/101, `output_stride` 8|16, optional local
    `pretrained_backbone` .pth) + ASPP (`aspp_channels`) + decoder with layer1 features reduced to
    `low_level_channels`; `aux` adds an FCN head with `aux_channels` on layer3."""
    encoder = resnet_backbone(backbone, output_stride, pretrained_backbone)
    head = DeepLabV3PlusHead(
        encoder.channels, aspp_channels, low_level_channels, num_classes, aspp_rates(output_stride)
    )
    return resnet_segnet(encoder, head, aux, aux_channels, num_classes)


@register_segnet
def deeplabv3(
    num_classes: int,
    backbone="resnet50",
    output_stride=16,
    aspp_channels=256,
    aux=False,
    aux_channels=256,
    pretrained_backbone=None,
) -> SegNet:
    """DeepLabV3: ResNet (`backbone`, `output_stride`, `pretrained_backbone` as deeplabv3plus) +
    ASPP with `aspp_channels` on layer4, no decoder; `aux` as deeplabv3plus."""
    encoder = resnet_backbone(backbone, output_stride, pretrained_backbone)
    aspp = ASPP(encoder.channels[-1], aspp_channels, aspp_rates(output_stride))
    head = LastStageHead(aspp, aspp_channels, num_classes)
    return resnet_segnet(encoder, head, aux, aux_channels, num_classes)


@register_segnet
def fcn(
    num_classes: int,
    backbone="resnet50",
    output_stride=16,
    head_channels=512,
    aux=False,
    aux_channels=256,
    pretrained_backbone=None,
) -> SegNet:
    """FCN: ResNet (`backbone`, `output_stride`, `pretrained_backbone` as deeplabv3plus) + two 3x3
    convs with `head_channels` on layer4; `aux` as deeplabv3plus."""
    encoder = resnet_backbone(backbone, output_stride, pretrained_backbone)
    convs = nn.Sequential(
        conv_bn_relu(encoder.channels[-1], head_channels),
        conv_bn_relu(head_channels, head_channels),
    )
    head = LastStageHead(convs, head_channels, num_classes)
    return resnet_segnet(encoder, head, aux, aux_channels, num_classes)


@register_segnet
def pspnet(
    num_classes: int,
    backbone="resnet50",
    output_stride=16,
    head_channels=512,
    bins=(1, 2, 3, 6),
    aux=False,
    aux_channels=256,
    pretrained_backbone=None,
) -> SegNet:
    """PSPNet: ResNet (`backbone`, `output_stride`, `pretrained_backbone` as deeplabv3plus) +
    pyramid pooling over `bins` + a 3x3 conv with `head_channels`; `aux` as deeplabv3plus."""
    encoder = resnet_backbone(backbone, output_stride, pretrained_backbone)
    c = encoder.channels[-1]
    context = nn.Sequential(PyramidPooling(c, tuple(bins)), conv_bn_relu(2 * c, head_channels))
    head = LastStageHead(context, head_channels, num_classes)
    return resnet_segnet(encoder, head, aux, aux_channels, num_classes)


@register_segnet
def unet(num_classes: int, base_width=32, depth=4, aux=False) -> SegNet:
    """U-Net: `depth` max-pool steps, widths base_width * 2**level, BN+ReLU double convs; `aux`
    adds a 1x1 classifier on the bottleneck."""
    widths = [base_width * 2**level for level in range(depth + 1)]
    # ceil_mode: odd sizes round up, so any input of at least 1 pixel survives every pooling step
    downs = [
        nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), double_conv(c_in, c_out))
        for c_in, c_out in zip(widths, widths[1:], strict=False)
    ]
    encoder = Stages([double_conv(3, widths[0]), *downs])
    aux_head = Classifier(widths[-1], num_classes) if aux else None
    return SegNet(encoder, UNetDecoder(widths, num_classes), aux_head, aux_from=-1)


@register_segnet
def lite(num_classes: int, width=16, output_stride=8, decoder_channels=None, aux=False) -> SegNet:
    """The CPU proxy network: MobileNetV2-style encoder with `width` base channels and
    `output_stride` 8|16 (8: small proxy images leave little at 16), LR-ASPP-style decoder
    (`decoder_channels`, default 2 * width) with a stride-2 skip; `aux` adds a 1x1 classifier on
    the stride-8 stage."""
    encoder = lite_encoder(width, output_stride)
    channels = encoder.channels  # strides 2, 4, 8, output_stride
    head = LiteHead(channels[0], channels[-1], decoder_channels or 2 * width, num_classes)
    aux_head = Classifier(channels[2], num_classes) if aux else None
    return SegNet(encoder, head, aux_head, aux_from=2)
