"""A hybrid CNN-transformer for exercising the pruner (plain torch, small, randomly
initialised; registered in models/zoo_extra.py's ``EXTRA``).

- ``maxvit``: torchvision's MaxVit topology on NCHW maps (stem, per stage one layer of MBConv
  with squeeze-excitation, block attention and grid attention: window partition of the map,
  swap of the window and grid axes, pre-LN relative-position attention written with einsum,
  pre-LN MLP; classifier pooling, LayerNorm, Linear, Tanh, Linear).
"""
import math

import torch
from torch import nn

__all__ = ["maxvit"]


# -- torchvision's MaxVit, small -----------------------------------------------------------------
class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation with MaxVit's SiLU: pool, 1x1 conv, SiLU, 1x1 conv,
    sigmoid, scale the input."""

    def __init__(self, channels, squeeze):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.SiLU(), nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        scale = self.fc2(self.act(self.fc1(torch.nn.functional.adaptive_avg_pool2d(x, 1))))
        return x * scale.sigmoid()


def conv_bn_gelu(cin, cout, stride=1, groups=1, k=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout, eps=1e-3), nn.GELU())


class MBConv(nn.Module):
    """torchvision's MBConv: projection shortcut (AvgPool + 1x1 conv when strided or widened);
    pre-norm BN, 1x1 expand (BN, GELU), 3x3 depthwise (BN, GELU), squeeze-excitation, 1x1
    project; residual sum."""

    def __init__(self, cin, cout, stride, expansion=4, squeeze_ratio=0.25):
        super().__init__()
        mid, squeeze = cout * expansion, int(cout * squeeze_ratio)
        proj = [nn.Conv2d(cin, cout, 1)] if stride != 1 or cin != cout else []
        if stride == 2:
            proj = [nn.AvgPool2d(3, stride, 1)] + proj
        self.proj = nn.Sequential(*proj)
        self.layers = nn.Sequential(nn.BatchNorm2d(cin, eps=1e-3), conv_bn_gelu(cin, mid),
                                    conv_bn_gelu(mid, mid, stride, groups=mid, k=3),
                                    SqueezeExcitation(mid, squeeze), nn.Conv2d(mid, cout, 1))

    def forward(self, x):
        return self.proj(x) + self.layers(x)


def relative_position_index(size):
    """torchvision's _get_relative_position_index for a size x size window."""
    coords = torch.stack(torch.meshgrid([torch.arange(size), torch.arange(size)], indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    relative[:, :, 0] += size - 1
    relative[:, :, 1] += size - 1
    relative[:, :, 0] *= 2 * size - 1
    return relative.sum(-1)


class RelativePositionalMultiHeadAttention(nn.Module):
    """torchvision's: to_qkv Linear chunked in three on the features, heads split by reshape,
    einsum scores plus the relative position bias gathered from its table, einsum with v,
    heads merged, merge Linear."""

    def __init__(self, dim, head_dim, seq_len):
        super().__init__()
        self.heads, self.head_dim, self.seq_len = dim // head_dim, head_dim, seq_len
        size = int(math.sqrt(seq_len))
        self.to_qkv, self.merge = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.scale = dim ** -0.5
        self.relative_position_bias_table = nn.Parameter(0.02 * torch.randn((2 * size - 1) ** 2, self.heads))
        self.register_buffer("relative_position_index", relative_position_index(size))

    def forward(self, x):
        b, g, p, d = x.shape
        q, k, v = torch.chunk(self.to_qkv(x), 3, dim=-1)
        q, k, v = (t.reshape(b, g, p, self.heads, self.head_dim).permute(0, 1, 3, 2, 4) for t in (q, k, v))
        k = k * self.scale
        scores = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(self.seq_len, self.seq_len, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        scores = torch.nn.functional.softmax(scores + bias, dim=-1)
        out = torch.einsum("B G H I J, B G H J D -> B G H I D", scores, v)
        return self.merge(out.permute(0, 1, 3, 2, 4).reshape(b, g, p, d))


def window_partition(x, p):
    """torchvision's WindowPartition: (B, C, H, W) -> (B, H/p * W/p, p*p, C)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p, c)


def window_departition(x, p, hp, wp):
    """torchvision's WindowDepartition: (B, hp*wp, p*p, C) -> (B, C, hp*p, wp*p)."""
    b, _, _, c = x.shape
    x = x.reshape(b, hp, wp, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, hp * p, wp * p)


class PartitionAttention(nn.Module):
    """torchvision's PartitionAttentionLayer: block ("window": p x p blocks) or grid ("grid":
    a p x p grid of strided positions, the window and grid axes swapped) attention with pre-LN,
    then a pre-LN MLP, both residual on the partitioned tokens."""

    def __init__(self, dim, head_dim, partition, kind, grid, mlp_ratio=4):
        super().__init__()
        partitions = grid // partition
        self.p = partition if kind == "window" else partitions
        self.swap, self.grid = kind == "grid", grid
        self.attn = nn.Sequential(nn.LayerNorm(dim), RelativePositionalMultiHeadAttention(dim, head_dim, partition ** 2))
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        gh = gw = self.grid // self.p
        x = window_partition(x, self.p)
        if self.swap:
            x = torch.swapaxes(x, -2, -3)
        x = x + self.attn(x)
        x = x + self.mlp(x)
        if self.swap:
            x = torch.swapaxes(x, -2, -3)
        return window_departition(x, self.p, gh, gw)


class MaxVitLayer(nn.Sequential):
    def __init__(self, cin, cout, stride, head_dim, partition, grid):
        super().__init__(MBConv(cin, cout, stride), PartitionAttention(cout, head_dim, partition, "window", grid),
                         PartitionAttention(cout, head_dim, partition, "grid", grid))


class MaxVit(nn.Module):
    """torchvision.models.MaxVit's forward: stem (3x3 stride-2 conv, BN, GELU; 3x3 conv), one
    layer per stage (the first MBConv strided), classifier (average pool, flatten, LayerNorm,
    Linear, Tanh, Linear without bias)."""

    def __init__(self, num_classes=10, image=32, stem=16, widths=(32, 64), head_dim=16, partition=4):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_gelu(3, stem, 2, k=3), nn.Conv2d(stem, stem, 3, 1, 1))
        grid, cin, stages = image // 2, stem, []
        for cout in widths:
            grid //= 2
            stages.append(MaxVitLayer(cin, cout, 2, head_dim, min(partition, grid), grid))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(cin), nn.Linear(cin, cin),
                                        nn.Tanh(), nn.Linear(cin, num_classes, bias=False))

    def forward(self, x):
        return self.classifier(self.stages(self.stem(x)))


def maxvit(num_classes=10):
    return MaxVit(num_classes).eval()
