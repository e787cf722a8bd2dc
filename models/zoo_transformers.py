"""Transformers for exercising the pruner (plain torch, small, randomly initialised; the
registry and the exporter are models/zoo_extra.py's ``EXTRA`` and ``export``).

- ``vit``: ViT with HF-style attention (separate q/k/v Linear, view to heads,
  Q.K^T, Softmax, .V, back to tokens, output projection), GELU MLP, pre-LayerNorm;
  ``fused=True``: timm-style fused qkv Linear, reshape [B, T, 3, h, hd], permute, unbind.
- ``torchvision_vit``: torchvision's VisionTransformer topology and names (conv_proj,
  class_token concatenated on the token axis, pos_embedding, encoder blocks with ln_1,
  ``nn.MultiheadAttention(batch_first=True)``, ln_2, mlp; the head reads the class token).
- ``swin``: torchvision's SwinTransformer topology on a channels-last (B, H, W, C) map (pad,
  roll, window partition, packed qkv per window, relative position bias, patch merging by
  strided slices and Concat, head after permuting back and average pooling).
- ``maxvit``: torchvision's MaxVit topology on NCHW maps (stem, per stage one layer of MBConv
  with squeeze-excitation, block attention and grid attention: window partition of the map,
  swap of the window and grid axes, pre-LN relative-position attention written with einsum,
  pre-LN MLP; classifier pooling, LayerNorm, Linear, Tanh, Linear).
"""
import math

import torch
from torch import nn

__all__ = ["vit", "torchvision_vit", "swin", "maxvit"]


# -- ViT ---------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention as HF transformers writes it (separate q, k, v)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).permute(0, 2, 1, 3)   # [B, h, T, hd]

    def forward(self, x):
        q, k, v = self.split_heads(self.query(x)), self.split_heads(self.key(x)), self.split_heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / self.head_dim ** 0.5
        ctx = torch.matmul(scores.softmax(dim=-1), v)                         # [B, h, T, hd]
        b, _, t, _ = ctx.shape
        ctx = ctx.permute(0, 2, 1, 3).contiguous().view(b, t, self.heads * self.head_dim)
        return self.proj(ctx)


class FusedAttention(Attention):
    """timm style: one qkv Linear, reshape [B, T, 3, h, hd], permute, unbind."""

    def __init__(self, dim, heads):
        super().__init__(dim, heads)
        del self.query, self.key, self.value
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
        ctx = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(ctx)


class TransformerBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4, fused=False):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = (FusedAttention if fused else Attention)(dim, heads)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Patch embedding (strided conv), learned position embedding, pre-LN blocks, final
    LayerNorm, mean over tokens, linear head."""

    def __init__(self, num_classes=10, image=16, patch=4, dim=32, depth=2, heads=4, fused=False,
                 flatten=False):
        super().__init__()
        self.flatten = flatten   # timm's x.flatten(2); the default reshapes with traced sizes
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(0.1 * torch.randn(1, (image // patch) ** 2, dim))
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, fused=fused) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed(x)
        if self.flatten:
            x = x.flatten(2)
        else:
            b, c, h, w = x.shape
            x = x.reshape(b, c, h * w)
        x = x.transpose(1, 2) + self.pos                                   # [B, T, D]
        x = self.norm(self.blocks(x))
        return self.head(x.mean(1))


def vit(num_classes=10, fused=False, flatten=False):
    return ViT(num_classes, fused=fused, flatten=flatten).eval()


# -- torchvision's VisionTransformer, small ------------------------------------------------------
class TorchvisionMLP(nn.Sequential):
    """torchvision's MLPBlock: Linear -> GELU -> Dropout -> Linear -> Dropout."""

    def __init__(self, dim, hidden):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0))


class TorchvisionEncoderBlock(nn.Module):
    """torchvision's EncoderBlock: pre-LN, nn.MultiheadAttention(batch_first=True), pre-LN MLP."""

    def __init__(self, heads, dim, hidden):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = TorchvisionMLP(dim, hidden)

    def forward(self, inputs):
        x = self.ln_1(inputs)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + inputs
        return x + self.mlp(self.ln_2(x))


class TorchvisionViT(nn.Module):
    """torchvision.models.VisionTransformer's forward: conv_proj, reshape (n, dim, h*w),
    permute to tokens, class token concatenated in front, pos_embedding added, encoder
    blocks, final LayerNorm, head on the class token (x[:, 0])."""

    def __init__(self, num_classes=10, image=32, patch=8, dim=48, depth=2, heads=4, mlp_dim=192):
        super().__init__()
        self.patch, self.dim = patch, dim
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.class_token = nn.Parameter(0.1 * torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(0.02 * torch.randn(1, (image // patch) ** 2 + 1, dim))
        self.layers = nn.Sequential(*[TorchvisionEncoderBlock(heads, dim, mlp_dim) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        n, _, h, w = x.shape
        x = self.conv_proj(x).reshape(n, self.dim, (h // self.patch) * (w // self.patch)).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1) + self.pos_embedding
        x = self.ln(self.layers(x))
        return self.head(x[:, 0])


def torchvision_vit(num_classes=10):
    return TorchvisionViT(num_classes).eval()


# -- torchvision's SwinTransformer, small --------------------------------------------------------
def shifted_window_attention(x, attn, window, shift):
    """torchvision's shifted_window_attention written out on a channels-last (B, H, W, C) map:
    pad to whole windows, roll by -shift, partition into (B*nW, w*w, C) windows, packed qkv to
    (B*nW, N, 3, heads, hd), scores plus the relative position bias, merge the windows back,
    roll by +shift, crop. (torchvision also masks the scores across the rolled border; the
    mask is a constant added to the scores and changes no coupling, so it is left out.)"""
    b, h, w, c = x.shape
    heads = attn.heads
    pad_r, pad_b = (window - w % window) % window, (window - h % window) % window
    x = torch.nn.functional.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, ph, pw, _ = x.shape
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    windows = (ph // window) * (pw // window)
    x = x.view(b, ph // window, window, pw // window, window, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b * windows, window * window, c)
    qkv = attn.qkv(x).reshape(x.size(0), x.size(1), 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (c // heads) ** -0.5
    scores = (q.matmul(k.transpose(-2, -1)) + attn.relative_position_bias).softmax(dim=-1)
    x = scores.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), c)
    x = attn.proj(x)
    x = x.view(b, ph // window, pw // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, ph, pw, c)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


class ShiftedWindowAttention(nn.Module):
    """torchvision's ShiftedWindowAttention parameters: packed qkv, proj, and the relative
    position bias (here stored already gathered, (1, heads, w*w, w*w))."""

    def __init__(self, dim, heads, window, shift):
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.relative_position_bias = nn.Parameter(0.02 * torch.randn(1, heads, window * window, window * window))

    def forward(self, x):
        return shifted_window_attention(x, self, self.window, self.shift)


class SwinBlock(nn.Module):
    """torchvision's SwinTransformerBlock: pre-LN window attention, pre-LN MLP (C -> 4C -> C)."""

    def __init__(self, dim, heads, window, shift):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention(dim, heads, window, shift)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """torchvision's PatchMerging: the four 2x2 neighbours concatenated on the channels (4C),
    LayerNorm, Linear(4C, 2C) without bias."""

    def __init__(self, dim):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        x0, x1 = x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :]
        x2, x3 = x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]
        return self.reduction(self.norm(torch.cat([x0, x1, x2, x3], -1)))


class Swin(nn.Module):
    """torchvision.models.SwinTransformer's forward, two stages: Conv2d patch embedding,
    permute to channels-last, LayerNorm; blocks with window attention (every second one
    shifted by half a window); patch merging; final LayerNorm, permute back, average pool,
    flatten, Linear head."""

    def __init__(self, num_classes=10, patch=4, dim=32, heads=(2, 4), window=4):
        super().__init__()
        self.embed, self.embed_norm = nn.Conv2d(3, dim, patch, patch), nn.LayerNorm(dim)
        self.stage1 = nn.Sequential(SwinBlock(dim, heads[0], window, 0), SwinBlock(dim, heads[0], window, window // 2))
        self.merge = PatchMerging(dim)
        self.stage2 = nn.Sequential(SwinBlock(2 * dim, heads[1], window, 0),
                                    SwinBlock(2 * dim, heads[1], window, window // 2))
        self.norm, self.head = nn.LayerNorm(2 * dim), nn.Linear(2 * dim, num_classes)

    def forward(self, x):
        x = self.embed_norm(self.embed(x).permute(0, 2, 3, 1))
        x = self.norm(self.stage2(self.merge(self.stage1(x)))).permute(0, 3, 1, 2)
        return self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def swin(num_classes=10):
    return Swin(num_classes).eval()


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
