"""An independent plain-PyTorch Swin Transformer classifier, the ground truth of the MIMIR Swin tests.

Written from the paper (Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows"):
patch embedding + norm; stages of blocks alternating regular and cyclically shifted window attention with a learned
relative-position bias; 2x2 patch merging between stages; final norm, mean pooling, linear head. Parameter and buffer
names are those of Microsoft's code, whose files the MIMIR checkpoints are, and so are its two conventions that the
weights depend on: the channel order of patch merging, and the window clamp (a stage whose grid is no larger than the
window uses one window of the grid's size, no shift, and a table sized for it). It imports nothing from transformers.
"""

from __future__ import annotations

import torch
from torch import nn


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """`[B, H, W, C]` -> `[B * (H / window) * (W / window), window * window, C]`, windows in row-major order."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // window, window, width // window, window, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, channels)


def window_merge(windows: torch.Tensor, window: int, batch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `window_partition`: `[B * num_windows, window * window, C]` -> `[B, H, W, C]`."""
    x = windows.reshape(batch, height // window, width // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height, width, -1)


def relative_position_index(window: int) -> torch.Tensor:
    """`[window^2, window^2]`: for tokens i, j of a window (row-major), the table row of the offset (dr, dc) of i
    from j, both offsets shifted into [0, 2 * window - 2] and read row-major in a (2 * window - 1)-wide grid."""
    rows = torch.arange(window).repeat_interleave(window)
    cols = torch.arange(window).repeat(window)
    d_row = rows[:, None] - rows[None, :] + window - 1
    d_col = cols[:, None] - cols[None, :] + window - 1
    return d_row * (2 * window - 1) + d_col


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """`[num_windows, window^2, window^2]` additive mask of shifted-window attention: 0 where two tokens of a window
    were on the same side of each wrap-around of the cyclic shift, -100 (Microsoft's value) where they were not."""
    wrapped_rows = torch.arange(height) >= height - shift  # rows that came from the top after rolling up by `shift`
    wrapped_cols = torch.arange(width) >= width - shift
    side = (wrapped_rows[:, None].long() * 2 + wrapped_cols[None, :].long()).float()
    side = window_partition(side[None, :, :, None], window).squeeze(-1)  # [num_windows, window^2]
    same = side[:, :, None] == side[:, None, :]
    return torch.where(same, torch.tensor(0.0), torch.tensor(-100.0))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a relative-position bias per head."""

    def __init__(self, dim: int, window: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        windows, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(windows, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        scores = (q * self.scale) @ k.transpose(-2, -1)  # [windows, heads, tokens, tokens]
        bias = self.relative_position_bias_table[self.relative_position_index]  # [tokens, tokens, heads]
        scores = scores + bias.permute(2, 0, 1)
        if mask is not None:  # the same mask for every image of the batch
            num_windows = mask.shape[0]
            scores = scores.reshape(-1, num_windows, self.num_heads, tokens, tokens) + mask[None, :, None]
            scores = scores.reshape(windows, self.num_heads, tokens, tokens)
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(windows, tokens, dim))


class SwinTransformerBlock(nn.Module):
    """`x + W-MSA(norm1(x))` (windows cyclically shifted by `shift` first when shift > 0), then `x + MLP(norm2(x))`."""

    def __init__(self, dim, resolution, num_heads, window, shift, mlp_ratio, qkv_bias, eps):
        super().__init__()
        if min(resolution) <= window:  # Microsoft's clamp, decided before anything is built
            window, shift = min(resolution), 0
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", shifted_window_mask(*resolution, window, shift) if shift else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.resolution
        batch, length, dim = x.shape
        y = self.norm1(x).reshape(batch, height, width, dim)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.window), self.attn_mask)
        y = window_merge(y, self.window, batch, height, width)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(batch, length, dim)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (4C channels), normalise, project to 2C."""

    def __init__(self, resolution, dim, eps):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.resolution
        batch, _, dim = x.shape
        x = x.reshape(batch, height // 2, 2, width // 2, 2, dim)
        # Channel blocks ordered by column offset, then row offset: (0,0), (1,0), (0,1), (1,1) as (row, col).
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(batch, -1, 4 * dim)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    def __init__(self, dim, resolution, depth, num_heads, window, mlp_ratio, qkv_bias, eps, downsample):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim, resolution, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, qkv_bias, eps
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(resolution, dim, eps) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, embed_dim, eps):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class ReferenceSwin(nn.Module):
    """Swin classifier with Microsoft's key names. `eps` is the epsilon of every LayerNorm; `num_classes=0` drops the
    head (an encoder, as in a GreenMIM file)."""

    def __init__(
        self,
        image_size=224,
        patch_size=4,
        in_chans=3,
        num_classes=1000,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        mlp_ratio=4.0,
        qkv_bias=True,
        eps=1e-6,
    ):
        super().__init__()
        grid = (image_size // patch_size, image_size // patch_size)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, eps)
        self.layers = nn.ModuleList(
            BasicLayer(
                embed_dim * 2**i,
                (grid[0] // 2**i, grid[1] // 2**i),
                depth,
                num_heads[i],
                window_size,
                mlp_ratio,
                qkv_bias,
                eps,
                downsample=i < len(depths) - 1,
            )
            for i, depth in enumerate(depths)
        )
        num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(num_features, eps=eps)
        self.head = nn.Linear(num_features, num_classes) if num_classes > 0 else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C, H, W]` -> `[B, num_features]`: the mean of the final-normed tokens."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
