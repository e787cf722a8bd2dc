"""Plain-torch reference CNNs for exercising the pruner.

Faithful to the published (torchvision-style) topologies, but built only from
standard nn layers, randomly initialised, and never downloaded.  Every factory
takes ``num_classes`` and returns a module in eval mode.  Inputs may be small
(32x32 or 64x64): the stems stay ImageNet-style so the graphs keep the original
op sequence, and global pooling makes the heads resolution-independent (except
VGG, whose flatten of CxHxW is the point, see ``vgg11_bn``).

Building blocks are shared on purpose: ``Residual`` carries every skip
connection (ResNet, ResNeXt, RegNet, MobileNet, EfficientNet), ``bottleneck``
serves ResNet-50/101/152, ResNeXt and RegNetY, and ``inverted_residual`` serves
MobileNetV2/V3 and EfficientNet.
"""

import math
from collections import OrderedDict
from functools import partial

import torch
from torch import nn

__all__ = [
    "small_resnet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext", "resnext50_32x4d", "resnext_small", "regnety_400mf", "vgg11_bn",
    "mobilenet_v2", "mobilenet_v3_small", "efficientnet", "densenet",
    "densenet121", "googlenet",
]


# --------------------------------------------------------------------------
# shared pieces


def conv_bn(cin, cout, k=1, stride=1, groups=1, act=nn.ReLU, eps=1e-5):
    """Conv (no bias: BN supplies it) + BatchNorm + optional activation."""
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=eps)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def make_divisible(v, divisor=8):
    """Channel rounding used by MobileNet/EfficientNet (never drops >10%)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class Residual(nn.Module):
    """act(body(x) + shortcut(x)); exports as a single Add (+ activation)."""

    def __init__(self, body, shortcut=None, act=None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class SqueezeExcite(nn.Module):
    """x * gate(conv(act(conv(avgpool(x))))): GlobalAveragePool, Conv, Mul."""

    def __init__(self, channels, squeeze, act=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


def classifier(cin, num_classes, dropout=0.0):
    """GlobalAveragePool -> Flatten -> (Dropout) -> Gemm."""
    layers = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(cin, num_classes))
    return nn.Sequential(*layers)


def projection(cin, cout, stride):
    """1x1 conv + BN shortcut when the residual changes shape, else identity."""
    if stride == 1 and cin == cout:
        return None
    return conv_bn(cin, cout, 1, stride, act=None)


def network(**parts):
    """Named nn.Sequential (readable ONNX node names) switched to eval mode."""
    return nn.Sequential(OrderedDict(parts)).eval()


# --------------------------------------------------------------------------
# ResNet family: ResNet, ResNeXt, RegNetY


def basic_block(cin, cout, stride):
    body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, act=None))
    return Residual(body, projection(cin, cout, stride), nn.ReLU)


def bottleneck(cin, cout, stride, mid, groups=1, se=0):
    """1x1 reduce -> 3x3 (grouped, strided: ResNet v1.5) -> [SE] -> 1x1 expand."""
    layers = [conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride, groups)]
    if se:
        layers.append(SqueezeExcite(mid, se))
    layers.append(conv_bn(mid, cout, 1, act=None))
    return Residual(nn.Sequential(*layers), projection(cin, cout, stride), nn.ReLU)


def stage(block, cin, cout, depth, stride):
    return nn.Sequential(*(block(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                           for i in range(depth)))


def _resnet(depths, num_classes, width=64, expansion=4, groups=1, width_per_group=64):
    """torchvision ResNet/ResNeXt: stage i has planes=width*2^i, out=planes*expansion."""
    stages, cin = OrderedDict(), width
    for i, depth in enumerate(depths):
        planes = width * 2 ** i
        if expansion == 1:
            block = basic_block
        else:
            mid = int(planes * width_per_group / 64) * groups
            block = partial(bottleneck, mid=mid, groups=groups)
        stages[f"layer{i + 1}"] = stage(block, cin, planes * expansion, depth, 1 if i == 0 else 2)
        cin = planes * expansion
    stem = nn.Sequential(conv_bn(3, width, 7, 2), nn.MaxPool2d(3, 2, 1))
    return network(stem=stem, **stages, head=classifier(cin, num_classes))


def resnet18(num_classes=10, width=64):
    return _resnet((2, 2, 2, 2), num_classes, width, expansion=1)


def resnet34(num_classes=10, width=64):
    return _resnet((3, 4, 6, 3), num_classes, width, expansion=1)


def resnet50(num_classes=10, width=64):
    return _resnet((3, 4, 6, 3), num_classes, width)


def resnet101(num_classes=10, width=64):
    return _resnet((3, 4, 23, 3), num_classes, width)


def resnet152(num_classes=10, width=64):
    return _resnet((3, 8, 36, 3), num_classes, width)


def resnext(depths=(3, 4, 6, 3), groups=32, width_per_group=4, num_classes=10, width=64):
    return _resnet(depths, num_classes, width, groups=groups, width_per_group=width_per_group)


def resnext50_32x4d(num_classes=10):
    return resnext((3, 4, 6, 3), 32, 4, num_classes)


def resnext_small(num_classes=10):
    """One block per stage, 8 groups of 4 channels in the first stage."""
    return resnext((1, 1, 1, 1), 8, 16, num_classes, width=16)


def small_resnet(num_classes=10, in_channels=1, width=16):
    """Tiny CIFAR-style ResNet for 1x16x16 / 1x32x32 grayscale digits."""
    stem = conv_bn(in_channels, width, 3)
    return network(
        stem=stem,
        layer1=basic_block(width, width, 1),
        layer2=basic_block(width, 2 * width, 2),
        layer3=basic_block(2 * width, 4 * width, 2),
        head=classifier(4 * width, num_classes),
    )


def regnety_400mf(num_classes=10):
    """RegNetY-400MF: grouped 3x3 (group width 8) + SE (1/4 of block input)."""
    depths, widths, group_width = (1, 3, 6, 6), (48, 104, 208, 440), 8
    stages, cin = OrderedDict(), 32
    for i, (depth, cout) in enumerate(zip(depths, widths)):
        blocks = []
        for j in range(depth):
            w_in = cin if j == 0 else cout
            blocks.append(bottleneck(w_in, cout, 2 if j == 0 else 1, mid=cout,
                                     groups=cout // group_width, se=round(0.25 * w_in)))
        stages[f"s{i + 1}"] = nn.Sequential(*blocks)
        cin = cout
    return network(stem=conv_bn(3, 32, 3, 2), **stages, head=classifier(cin, num_classes))


# --------------------------------------------------------------------------
# VGG


def vgg11_bn(num_classes=10, input_size=64, hidden=512, dropout=0.5):
    """VGG-11 with BN.  No adaptive pool: the head flattens CxHxW directly
    (512x2x2 at 64x64 input), so the Flatten->Gemm channel expansion is real.
    The hidden width is 512 instead of 4096 to keep the model small."""
    cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    layers, cin = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:  # torchvision's VGG convs keep their bias even before BN
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            cin = v
    spatial = input_size // 32
    head = nn.Sequential(
        nn.Flatten(),
        nn.Linear(cin * spatial * spatial, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
    return network(features=nn.Sequential(*layers), head=head)


# --------------------------------------------------------------------------
# Inverted residuals: MobileNetV2, MobileNetV3, EfficientNet


def inverted_residual(cin, cout, k, stride, expanded, act, se=0, se_act=nn.ReLU,
                      gate=nn.Sigmoid):
    """[1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear projection (no act)."""
    layers = []
    if expanded != cin:
        layers.append(conv_bn(cin, expanded, 1, act=act))
    layers.append(conv_bn(expanded, expanded, k, stride, groups=expanded, act=act))
    if se:
        layers.append(SqueezeExcite(expanded, se, se_act, gate))
    layers.append(conv_bn(expanded, cout, 1, act=None))
    body = nn.Sequential(*layers)
    return Residual(body) if stride == 1 and cin == cout else body


def mobilenet_v2(num_classes=10, width_mult=1.0):
    # (expansion t, out channels c, repeats n, first stride s)
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    cin = stem = make_divisible(32 * width_mult)
    blocks = []
    for t, c, n, s in cfg:
        cout = make_divisible(c * width_mult)
        for i in range(n):
            blocks.append(inverted_residual(cin, cout, 3, s if i == 0 else 1, cin * t, nn.ReLU6))
            cin = cout
    last = make_divisible(1280 * max(1.0, width_mult))
    return network(
        stem=conv_bn(3, stem, 3, 2, act=nn.ReLU6),
        blocks=nn.Sequential(*blocks),
        last=conv_bn(cin, last, 1, act=nn.ReLU6),
        head=classifier(last, num_classes, 0.2),
    )


def mobilenet_v3_small(num_classes=10, width_mult=1.0):
    RE, HS = nn.ReLU, nn.Hardswish
    # (kernel, expanded, out, SE, activation, stride)
    cfg = [(3, 16, 16, True, RE, 2), (3, 72, 24, False, RE, 2), (3, 88, 24, False, RE, 1),
           (5, 96, 40, True, HS, 2), (5, 240, 40, True, HS, 1), (5, 240, 40, True, HS, 1),
           (5, 120, 48, True, HS, 1), (5, 144, 48, True, HS, 1), (5, 288, 96, True, HS, 2),
           (5, 576, 96, True, HS, 1), (5, 576, 96, True, HS, 1)]
    scale = lambda c: make_divisible(c * width_mult)  # noqa: E731
    cin = scale(16)
    blocks = []
    for k, exp, out, se, act, s in cfg:
        exp, out = scale(exp), scale(out)
        blocks.append(inverted_residual(cin, out, k, s, exp, act,
                                        se=make_divisible(exp // 4) if se else 0,
                                        gate=nn.Hardsigmoid))
        cin = out
    last, hidden = 6 * cin, scale(1024)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, hidden), HS(),
                         nn.Dropout(0.2), nn.Linear(hidden, num_classes))
    return network(stem=conv_bn(3, scale(16), 3, 2, act=HS), blocks=nn.Sequential(*blocks),
                   last=conv_bn(cin, last, 1, act=HS), head=head)


# EfficientNet compound scaling: (width multiplier, depth multiplier, dropout)
_EFFICIENTNET = {0: (1.0, 1.0, 0.2), 1: (1.0, 1.1, 0.2), 2: (1.1, 1.2, 0.3),
                 3: (1.2, 1.4, 0.3), 4: (1.4, 1.8, 0.4)}


def efficientnet(b=0, num_classes=10):
    """EfficientNet-B{b} (b in 0..4), MBConv + SiLU + sigmoid SE, no drop-path."""
    width, depth, dropout = _EFFICIENTNET[b]
    # (expansion, kernel, stride, out channels, repeats) of B0
    cfg = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
           (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
    cin = stem = make_divisible(32 * width)
    blocks = []
    for t, k, s, c, n in cfg:
        cout = make_divisible(c * width)
        for i in range(math.ceil(n * depth)):
            # SE squeezes to a quarter of the block *input*, as in the paper
            blocks.append(inverted_residual(cin, cout, k, s if i == 0 else 1, cin * t, nn.SiLU,
                                            se=max(1, cin // 4), se_act=nn.SiLU))
            cin = cout
    last = 4 * cin
    return network(stem=conv_bn(3, stem, 3, 2, act=nn.SiLU), blocks=nn.Sequential(*blocks),
                   last=conv_bn(cin, last, 1, act=nn.SiLU),
                   head=classifier(last, num_classes, dropout))


# --------------------------------------------------------------------------
# DenseNet


class DenseBlock(nn.Module):
    """Each layer reads the Concat of all earlier features (as torchvision), so
    every feature map feeds several Concats."""

    def __init__(self, cin, depth, growth, bn_size=4):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(cin + i * growth), nn.ReLU(),
                          nn.Conv2d(cin + i * growth, bn_size * growth, 1, bias=False),
                          nn.BatchNorm2d(bn_size * growth), nn.ReLU(),
                          nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False))
            for i in range(depth))

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


def densenet(growth=12, blocks=(3, 3, 3), init=24, num_classes=10, bn_size=4):
    """Pre-activation DenseNet-BC (compression 0.5).  The small default has three
    blocks of three layers; ``densenet121`` is the ImageNet configuration."""
    parts = OrderedDict(stem=nn.Sequential(conv_bn(3, init, 7, 2), nn.MaxPool2d(3, 2, 1)))
    c = init
    for i, depth in enumerate(blocks):
        parts[f"block{i + 1}"] = DenseBlock(c, depth, growth, bn_size)
        c += depth * growth
        if i < len(blocks) - 1:
            parts[f"transition{i + 1}"] = nn.Sequential(
                nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False),
                nn.AvgPool2d(2, 2))
            c //= 2
    parts["norm"] = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
    parts["head"] = classifier(c, num_classes)
    return network(**parts)


def densenet121(num_classes=10):
    return densenet(32, (6, 12, 24, 16), 64, num_classes)


# --------------------------------------------------------------------------
# GoogLeNet


class Inception(nn.Module):
    """Four parallel branches joined by one Concat: 1x1 | 1x1-3x3 | 1x1-5x5 |
    maxpool-1x1.  (torchvision uses 3x3 in the third branch; the paper's 5x5 is
    kept here since no pretrained weights need to fit.)"""

    def __init__(self, cin, c1, c3r, c3, c5r, c5, pool):
        super().__init__()
        cb = partial(conv_bn, eps=1e-3)
        self.b1 = cb(cin, c1)
        self.b2 = nn.Sequential(cb(cin, c3r), cb(c3r, c3, 3))
        self.b3 = nn.Sequential(cb(cin, c5r), cb(c5r, c5, 5))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), cb(cin, pool))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


def googlenet(num_classes=10):
    """GoogLeNet (Inception v1) with BN, without the auxiliary heads."""
    cb = partial(conv_bn, eps=1e-3)
    pool = partial(nn.MaxPool2d, 3, 2, ceil_mode=True)
    return network(
        stem=nn.Sequential(cb(3, 64, 7, 2), pool(), cb(64, 64), cb(64, 192, 3), pool()),
        inception3a=Inception(192, 64, 96, 128, 16, 32, 32),
        inception3b=Inception(256, 128, 128, 192, 32, 96, 64),
        pool3=pool(),
        inception4a=Inception(480, 192, 96, 208, 16, 48, 64),
        inception4b=Inception(512, 160, 112, 224, 24, 64, 64),
        inception4c=Inception(512, 128, 128, 256, 24, 64, 64),
        inception4d=Inception(512, 112, 144, 288, 32, 64, 64),
        inception4e=Inception(528, 256, 160, 320, 32, 128, 128),
        pool4=nn.MaxPool2d(2, 2, ceil_mode=True),
        inception5a=Inception(832, 256, 160, 320, 32, 128, 128),
        inception5b=Inception(832, 384, 192, 384, 48, 128, 128),
        head=classifier(1024, num_classes, 0.2),
    )
