"""A MobileNetV2-style network for 1x16x16 digits, the depthwise counterpart of
``small_resnet``.

    python -m models.default_model --model mobilenet   # train + export this model only
    python -m models.default_model --all               # both digits models (see there)

Inverted residuals as in MobileNetV2 (``zoo.inverted_residual``): 1x1 expansion
(factor t) -> BN -> ReLU6 -> depthwise 3x3 -> BN -> ReLU6 -> 1x1 linear
bottleneck -> BN (no activation), with a residual Add whenever the block keeps
stride 1 and its width.  At 16x16 the stem keeps full resolution; two stride-2
stages bring it to 4x4.

    stage   t   out  repeats  stride  resolution  residual Adds
    stem    -    16     1        1      16x16
    b1      1    16     1        1      16x16       1  (depthwise only, t=1)
    b2      6    24     2        2       8x8        1
    b3      6    32     2        2       4x4        1
    b4      6    48     2        1       4x4        1
    last    -   128  1x1 conv + BN + ReLU6
    head    GlobalAveragePool -> Flatten -> Gemm(10)

So the graph has four coupled residual streams (16, 24, 32 and 48 channels)
and seven depthwise convolutions whose channels are tied to their expansion
convs.  About 2.7 M MACs and 97 k trainable parameters at 1x1x16x16 (small_resnet:
3.1 M MACs, 78 k).
"""

from collections import OrderedDict

from torch import nn

from .zoo import classifier, conv_bn, inverted_residual, network

__all__ = ["digits_mobilenet", "CONFIG", "main"]

# (expansion t, out channels, repeats, first stride)
CONFIG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 48, 2, 1)]


def digits_mobilenet(num_classes=10, in_channels=1, stem=16, last=128, config=CONFIG):
    """MobileNetV2-style model for 1x16x16 (or 1x32x32) grayscale digits."""
    parts = OrderedDict(stem=conv_bn(in_channels, stem, 3, 1, act=nn.ReLU6))
    cin = stem
    for i, (t, cout, n, s) in enumerate(config):
        blocks = []
        for j in range(n):
            blocks.append(inverted_residual(cin, cout, 3, s if j == 0 else 1, cin * t, nn.ReLU6))
            cin = cout
        parts[f"b{i + 1}"] = nn.Sequential(*blocks)
    parts["last"] = conv_bn(cin, last, 1, act=nn.ReLU6)
    parts["head"] = classifier(last, num_classes)
    return network(**parts)

