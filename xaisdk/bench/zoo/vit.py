"""ViT-B/16 (Dosovitskiy et al. 2021), torchvision's layout: a strided-conv patch embedding, a class
token, a learned position embedding, pre-norm encoder blocks with ``nn.MultiheadAttention`` and a
GELU MLP, LayerNorm eps 1e-6, and a linear head on the class token."""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn

from xaisdk.bench.zoo.blocks import MLP

NORM = partial(nn.LayerNorm, eps=1e-6)


class EncoderBlock(nn.Module):
    def __init__(self, heads: int, hidden: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = NORM(hidden)
        self.self_attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = NORM(hidden)
        self.mlp = MLP(hidden, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, seq_length: int, layers: int, heads: int, hidden: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(heads, hidden, mlp_dim, dropout)) for i in range(layers)))
        self.ln = NORM(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """A ViT over ``image_size`` images cut into ``patch_size`` patches.

    >>> net = VisionTransformer(32, 16, layers=2, heads=2, hidden=16, mlp_dim=32, num_classes=4).eval()
    >>> net(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 4])
    """

    def __init__(self, image_size: int = 224, patch_size: int = 16, layers: int = 12, heads: int = 12, hidden: int = 768,
                 mlp_dim: int = 3072, num_classes: int = 1000) -> None:
        super().__init__()
        self.image_size, self.patch_size, self.hidden = image_size, patch_size, hidden
        self.conv_proj = nn.Conv2d(3, hidden, patch_size, patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.encoder = Encoder((image_size // patch_size) ** 2 + 1, layers, heads, hidden, mlp_dim)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden, num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = self.conv_proj(x)  # (n, hidden, h/p, w/p)
        x = x.reshape(n, self.hidden, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


def vit_b_16(*, num_classes: int = 1000, width: float = 1.0, image_size: int = 224) -> VisionTransformer:
    """ViT-B/16: 12 layers, 12 heads of ``64 * width`` channels, MLP 4x wide, 16-px patches.

    >>> sum(p.numel() for p in vit_b_16().parameters())
    86567656
    """
    hidden = 12 * max(1, round(64 * width))
    return VisionTransformer(image_size, 16, 12, 12, hidden, 4 * hidden, num_classes)
