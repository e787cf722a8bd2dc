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

The MaxViT-style hybrid is in models/zoo_hybrids.py.
"""

import torch
from torch import nn

__all__ = ["vit", "torchvision_vit", "swin"]


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
