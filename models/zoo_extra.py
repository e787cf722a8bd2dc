"""More architectures for exercising the pruner: channel shuffle, channels-last MLPs,
encoder-decoders, detection necks and attention.

Plain torch, randomly initialised, small (tests export and prune them in well under a
second each). Every factory returns an eval-mode module; ``EXTRA`` maps a name to
(factory, input shape). ``export(module, shape, dynamo=False)`` exports with named
outputs ("out0", "out1", ...), BatchNormalization kept, and checks the export against
torch.

- ``shufflenet_v2``: ShuffleNetV2 units (torchvision topology): chunk/Split into two
  halves, branch, Concat, channel shuffle as Reshape [N,g,C/g,H,W] -> Transpose -> Reshape.
- ``convnext``: ConvNeXt blocks (depthwise 7x7, permute to NHWC, LayerNorm, Linear 4x,
  GELU, Linear, layer scale, permute back, residual); LayerNorm2d stem/downsampling.
- ``unet``: two-level U-Net, MaxPool down, ConvTranspose and nearest Resize up, Concat
  skips, two graph outputs (segmentation map, auxiliary bottleneck head).
- ``yolo_neck``: YOLOv8-style backbone (C2f with Split), SPPF, PAN neck with Resize and
  Concat, three detection heads feeding three graph outputs.
- ``vit``, ``vit_fused_qkv``, ``torchvision_vit``, ``swin``: transformers (models/zoo_transformers.py);
  ``maxvit``: a hybrid (models/zoo_hybrids.py).
"""

import io
import warnings

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from .zoo_hybrids import maxvit
from .zoo_transformers import swin, torchvision_vit, vit

__all__ = ["EXTRA", "build_extra", "export", "shufflenet_v2", "convnext", "unet", "yolo_neck",
           "vit", "torchvision_vit", "swin", "maxvit", "channel_shuffle"]


def conv_bn(cin, cout, k=1, stride=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# -- ShuffleNetV2 ---------------------------------------------------------------------------
def channel_shuffle(x, groups: int):
    """torchvision's channel shuffle: view [N, g, C/g, H, W], swap, view back."""
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit. stride 1: split the input in halves, the first passes through,
    the second goes through the branch. stride 2: both halves are branches of the input."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None),
                                         conv_bn(cin, half, 1))
        else:
            assert cin == cout
            self.branch1 = nn.Identity()
        bin_ = cin if stride > 1 else half
        self.branch2 = nn.Sequential(conv_bn(bin_, half, 1),
                                     conv_bn(half, half, 3, stride, groups=half, act=None),
                                     conv_bn(half, half, 1))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


def shufflenet_v2(num_classes=10, widths=(24, 48, 96, 128), repeats=(3, 2)):
    stem = nn.Sequential(conv_bn(3, widths[0], 3, 2), nn.MaxPool2d(3, 2, 1))
    stages, cin = [], widths[0]
    for cout, n in zip(widths[1:-1], repeats):
        stages.append(ShuffleUnit(cin, cout, 2))
        stages += [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
        cin = cout
    return nn.Sequential(stem, *stages, conv_bn(cin, widths[-1], 1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(widths[-1], num_classes)).eval()


# -- ConvNeXt --------------------------------------------------------------------------------
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (timm): permute, layer_norm, permute."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim, expansion=4, layer_scale=0.5):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, expansion * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(expansion * dim, dim)
        # random (not 1e-6 as at init) so that the branch matters in the tests
        self.gamma = nn.Parameter(layer_scale * (0.5 + torch.rand(dim)))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)              # NHWC
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = (self.gamma * y).permute(0, 3, 1, 2)             # NCHW
        return x + y


class ConvNeXt(nn.Module):
    def __init__(self, num_classes=10, dims=(16, 32), depths=(2, 1)):
        super().__init__()
        layers = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i > 0:
                layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        x = self.features(x).mean([-2, -1])
        return self.head(self.norm(x))


def convnext(num_classes=10, dims=(16, 32), depths=(2, 1)):
    return ConvNeXt(num_classes, dims, depths).eval()


# -- U-Net -----------------------------------------------------------------------------------
def double_conv(cin, cout):
    return nn.Sequential(conv_bn(cin, cout, 3), conv_bn(cout, cout, 3))


class UNet(nn.Module):
    """enc1 -> pool -> enc2 -> pool -> bottleneck; up by ConvTranspose (level 2) and by
    nearest Resize + 1x1 conv (level 1); Concat skips; outputs: segmentation, aux head."""

    def __init__(self, cin=3, classes=2, width=8):
        super().__init__()
        w = width
        self.enc1, self.enc2, self.mid = double_conv(cin, w), double_conv(w, 2 * w), double_conv(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2)
        self.dec2 = double_conv(4 * w, 2 * w)
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv_bn(2 * w, w, 1))
        self.dec1 = double_conv(2 * w, w)
        self.seg = nn.Conv2d(w, classes, 1)
        self.aux = nn.Conv2d(4 * w, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.seg(d1), self.aux(m)


def unet(classes=2, width=8):
    return UNet(3, classes, width).eval()


# -- YOLO-style backbone and neck ------------------------------------------------------------
def cbs(cin, cout, k=1, stride=1):
    """Conv-BN-SiLU (SiLU exports as Sigmoid * x)."""
    return conv_bn(cin, cout, k, stride, act=nn.SiLU)


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1, self.cv2, self.add = cbs(c, c, 3), cbs(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8 C2f: 1x1 conv, Split in two, n bottlenecks on the last piece, Concat all, 1x1."""

    def __init__(self, cin, cout, n=1, shortcut=True):
        super().__init__()
        self.c = cout // 2
        self.cv1 = cbs(cin, 2 * self.c)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))
        self.cv2 = cbs((2 + n) * self.c, cout)

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin, cout, k=5):
        super().__init__()
        self.cv1, self.cv2 = cbs(cin, cin // 2), cbs(cin // 2 * 4, cout)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1))


class YoloNeck(nn.Module):
    def __init__(self, outputs=8, w=8):
        super().__init__()
        self.stem = nn.Sequential(cbs(3, w, 3, 2), cbs(w, 2 * w, 3, 2), C2f(2 * w, 2 * w))
        self.p4 = nn.Sequential(cbs(2 * w, 4 * w, 3, 2), C2f(4 * w, 4 * w))
        self.p5 = nn.Sequential(cbs(4 * w, 8 * w, 3, 2), C2f(8 * w, 8 * w), SPPF(8 * w, 8 * w))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td4 = C2f(12 * w, 4 * w, shortcut=False)
        self.td3 = C2f(6 * w, 2 * w, shortcut=False)
        self.down3 = cbs(2 * w, 2 * w, 3, 2)
        self.bu4 = C2f(6 * w, 4 * w, shortcut=False)
        self.down4 = cbs(4 * w, 4 * w, 3, 2)
        self.bu5 = C2f(12 * w, 8 * w, shortcut=False)
        self.heads = nn.ModuleList(nn.Sequential(cbs(c, 2 * w, 3), nn.Conv2d(2 * w, outputs, 1))
                                   for c in (2 * w, 4 * w, 8 * w))

    def forward(self, x):
        p3 = self.stem(x)
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        t4 = self.td4(torch.cat([self.up(p5), p4], 1))
        n3 = self.td3(torch.cat([self.up(t4), p3], 1))
        n4 = self.bu4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bu5(torch.cat([self.down4(n4), p5], 1))
        return tuple(h(f) for h, f in zip(self.heads, (n3, n4, n5)))


def yolo_neck(outputs=8, width=8):
    return YoloNeck(outputs, width).eval()


# -- registry and export ----------------------------------------------------------------------
EXTRA = {
    "shufflenet_v2": (shufflenet_v2, (1, 3, 32, 32)),
    "convnext": (convnext, (1, 3, 32, 32)),
    "unet": (unet, (1, 3, 32, 32)),
    "yolo_neck": (yolo_neck, (1, 3, 64, 64)),
    "vit": (vit, (1, 3, 16, 16)),
    "vit_fused_qkv": (lambda: vit(fused=True), (1, 3, 16, 16)),
    "vit_flatten": (lambda: vit(flatten=True), (1, 3, 16, 16)),
    "torchvision_vit": (torchvision_vit, (1, 3, 32, 32)),
    "swin": (swin, (1, 3, 40, 40)),
    "maxvit": (maxvit, (1, 3, 32, 32)),
}


@torch.no_grad()
def _randomize(module, seed):
    """Non-trivial BatchNorm statistics and affine parameters (a fresh BN is an identity)."""
    g = torch.Generator().manual_seed(seed + 1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.2 * (torch.rand(c, generator=g) - 0.5))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.copy_(torch.rand(c, generator=g) - 0.5)
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(0.2 * (torch.rand(m.bias.shape, generator=g) - 0.5))
    return module


def build_extra(name, seed=0):
    """Seeded module and its input shape."""
    factory, shape = EXTRA[name]
    torch.manual_seed(seed)
    return _randomize(factory(), seed).eval(), shape


def export(module, input_shape, dynamo=False, opset=None, check=True, seed=0, optimize=True,
           dynamic_batch=False):
    """Export to ONNX with input "input" and outputs "out0", "out1", ...; static shapes, or
    with `dynamic_batch` a symbolic batch ("batch", what deployment exports use: the graph
    then reads the batch at run time).
    Legacy exporter (dynamo=False): TrainingMode.PRESERVE keeps BatchNormalization as its own
    node (the exporter only fuses Conv+BN in EVAL mode); constant folding on, so the shape
    arithmetic of static views becomes constants (what `torch.onnx.export` users get).
    Dynamo exporter: `optimize` as given (its optimiser fuses BatchNormalization into the
    convs; optimize=False keeps BatchNormalization, with Shape/Expand/CastLike clutter).
    Checks onnxruntime against torch when `check` (with `dynamic_batch`, at batch 3 too)."""
    module.eval()
    if dynamo and dynamic_batch:   # torch.export specialises an example batch of 1 to a constant
        input_shape = (max(2, input_shape[0]), *input_shape[1:])
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = module(x)
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    names = [f"out{i}" for i in range(len(want))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dynamic = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamic_batch else {}
            program = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset or 18,
                                        input_names=["input"], output_names=names, verbose=False,
                                        optimize=optimize, **dynamic)
            proto = program.model_proto
        else:
            buf = io.BytesIO()
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset or 17,
                              input_names=["input"], output_names=names,
                              training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
                              dynamic_axes={t: {0: "batch"} for t in ["input"] + names} if dynamic_batch else None)
            proto = onnx.load_from_string(buf.getvalue())
    if check:
        _check_against_torch(proto, x, want)
        if dynamic_batch:
            x3 = torch.randn(3, *input_shape[1:], generator=torch.Generator().manual_seed(seed + 1))
            with torch.no_grad():
                want3 = module(x3)
            _check_against_torch(proto, x3, list(want3) if isinstance(want3, (tuple, list)) else [want3])
    return proto


def _check_against_torch(proto, x, want):
    import onnxruntime as ort
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    for g, w in zip(got, want):
        err = float(np.abs(g - w.numpy()).max() / max(1.0, float(w.abs().max())))
        if not err <= 1e-4:
            raise AssertionError(f"onnxruntime differs from torch at batch {len(x)}: {err:.3g}")
