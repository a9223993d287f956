"""Swin-T (Liu et al. 2021), torchvision's layout: 4x4 patch embedding, four stages of blocks that
attend within 7x7 windows, every second block on windows shifted by half a window (``torch.roll``
plus an attention mask), a learned relative position bias looked up by a constant index, patch
merging between stages, LayerNorm, GELU MLPs and stochastic depth."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from xaisdk.bench.zoo.blocks import MLP, Permute, StochasticDepth


def relative_position_index(window: int) -> torch.Tensor:
    """(window^2 * window^2,) index into a ((2 window - 1)^2, heads) table: the offset of token j
    from token i, both inside one window, flattened.

    >>> relative_position_index(2).view(4, 4).tolist()[0]
    [4, 3, 1, 0]
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).flatten()


def shift_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(windows, window^2, window^2) additive mask, -100 between tokens that the cyclic shift brought
    together from different regions of the image, 0 elsewhere."""
    region = torch.zeros(height, width)
    cuts = ((0, -window), (-window, -shift), (-shift, None))
    for i, (h0, h1) in enumerate(cuts):
        for j, (w0, w1) in enumerate(cuts):
            region[h0:h1, w0:w1] = 3 * i + j
    region = region.view(height // window, window, width // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)
    diff = region.unsqueeze(1) - region.unsqueeze(2)
    return torch.where(diff != 0, -100.0, 0.0)


class ShiftedWindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, shift: int, heads: int) -> None:
        super().__init__()
        self.window, self.shift, self.heads = window, shift, heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        win = self.window
        pad_r, pad_b = (win - w % win) % win, (win - h % win) % win
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        shift = self.shift if win < ph and win < pw else 0  # one window covers the map: nothing to shift
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = (ph // win) * (pw // win)
        x = x.view(b, ph // win, win, pw // win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b * windows, win * win, c)
        qkv = self.qkv(x).reshape(x.shape[0], x.shape[1], 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (c // self.heads) ** -0.5, qkv[1], qkv[2]
        bias = self.relative_position_bias_table[self.relative_position_index].view(win * win, win * win, -1)
        attn = q @ k.transpose(-2, -1) + bias.permute(2, 0, 1).unsqueeze(0)
        if shift:
            mask = shift_mask(ph, pw, win, shift).to(attn)
            attn = attn.view(b, windows, self.heads, win * win, win * win) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, win * win, win * win)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], c)
        x = self.proj(x)
        x = x.view(b, ph // win, pw // win, win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return x[:, :h, :w, :].contiguous()


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, drop: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention(dim, window, shift, heads)
        self.stochastic_depth = StochasticDepth(drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        return x + self.stochastic_depth(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """(N, H, W, C) -> (N, H/2, W/2, 2C): each 2x2 neighbourhood concatenated, normalised, projected."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-3:-1]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)
        return self.reduction(self.norm(x))


class SwinTransformer(nn.Module):
    """Swin with ``depths`` blocks per stage, ``heads`` per stage, ``embed`` channels in stage 1.

    >>> net = SwinTransformer(embed=12, depths=(2, 2), heads=(1, 2), window=2, num_classes=4).eval()
    >>> net(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 4])
    """

    def __init__(self, patch: int = 4, embed: int = 96, depths: tuple[int, ...] = (2, 2, 6, 2),
                 heads: tuple[int, ...] = (3, 6, 12, 24), window: int = 7, stochastic_depth: float = 0.2,
                 num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, embed, patch, patch), Permute((0, 2, 3, 1)), nn.LayerNorm(embed))]
        total, index, dim = sum(depths), 0, embed
        for stage, (depth, stage_heads) in enumerate(zip(depths, heads)):
            blocks = []
            for i in range(depth):
                blocks.append(SwinBlock(dim, stage_heads, window, 0 if i % 2 == 0 else window // 2,
                                        stochastic_depth * index / (total - 1)))
                index += 1
            layers.append(nn.Sequential(*blocks))
            if stage + 1 < len(depths):
                layers.append(PatchMerging(dim))
                dim *= 2
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)
        self.permute = Permute((0, 3, 1, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.permute(self.norm(self.features(x)))
        return self.head(self.flatten(self.avgpool(x)))


def swin_t(*, num_classes: int = 1000, width: float = 1.0, image_size: int = 224) -> SwinTransformer:
    """Swin-T: embed 96 (heads of ``32 * width`` channels), depths 2-2-6-2, heads 3-6-12-24; the window
    is ``image_size / 32`` (7 at 224 px) so that the last stage is one window, as at full size.

    >>> sum(p.numel() for p in swin_t().parameters())
    28288354
    """
    return SwinTransformer(embed=3 * max(1, round(32 * width)), window=max(1, image_size // 32), num_classes=num_classes)
