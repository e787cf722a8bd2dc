"""Two more architectures for the digits data (1x16x16), so that defaults are chosen on
more than the ResNet and the MobileNet:

  digits_vgg       plain VGG-style stack, no residuals: conv-BN-ReLU x 4 with two max-pools,
                   then Flatten of the 64x4x4 map -> Linear(128) -> ReLU -> Linear(10)
                   (the Flatten->Gemm channel expansion of a real VGG head)
  digits_densenet  pre-activation DenseNet-BC: a 3x3 stem, two dense blocks of three layers
                   (growth 12, bottleneck 4x) joined by a compressing transition; every
                   feature map feeds several Concats (``zoo.DenseBlock``)

    python -m models.default_model --model vgg       # train + export (seed 0)
    python -m models.digits_seeds --model vgg         # seed 1
"""
from collections import OrderedDict

from torch import nn

from .zoo import DenseBlock, classifier, conv_bn, network

__all__ = ["digits_vgg", "digits_densenet"]


def digits_vgg(num_classes=10, in_channels=1):
    layers, cin = [], in_channels
    for v in (16, 32, "M", 64, 64, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(conv_bn(cin, v, 3))
            cin = v
    head = nn.Sequential(nn.Flatten(), nn.Linear(cin * 4 * 4, 128), nn.ReLU(), nn.Linear(128, num_classes))
    return network(features=nn.Sequential(*layers), head=head)


def digits_densenet(num_classes=10, in_channels=1, growth=12, init=24):
    parts = OrderedDict(stem=conv_bn(in_channels, init, 3))
    c = init
    parts["block1"] = DenseBlock(c, 3, growth)
    c += 3 * growth
    parts["transition1"] = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False),
                                         nn.AvgPool2d(2, 2))
    c //= 2
    parts["block2"] = DenseBlock(c, 3, growth)
    c += 3 * growth
    parts["norm"] = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
    parts["head"] = classifier(c, num_classes)
    return network(**parts)
