"""A reference MAE / ViT in the layout of the authors' timm-based code, written for the converter tests.

Fused qkv attention, pre-norm `Block`s with a GELU MLP, fixed sin-cos position embeddings, per-sample argsort
masking, a light decoder, and the global-pool fine-tuning head. State-dict keys: `patch_embed.proj`, `cls_token`,
`pos_embed`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm` / `fc_norm`, `head`, `decoder_*`.
"""

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, mlp)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch, channels, dim):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def sincos(grid, dim):
    """MAE's 2-D sin-cos table with a zero CLS row (w-half first, as in MAE's code)."""

    def one_d(d, positions):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = positions.reshape(-1).double()[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    h, w = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )
    table = torch.cat([one_d(dim // 2, w), one_d(dim // 2, h)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()[None]


class ReferenceMAE(nn.Module):
    def __init__(
        self,
        image=16,
        patch=4,
        channels=3,
        dim=32,
        depth=2,
        heads=4,
        mlp=64,
        decoder_dim=16,
        decoder_depth=1,
        decoder_heads=2,
        decoder_mlp=32,
        mask_ratio=0.75,
    ):
        super().__init__()
        self.patch, self.mask_ratio, grid = patch, mask_ratio, image // patch
        self.patch_embed = PatchEmbed(patch, channels, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(sincos(grid, dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, decoder_dim) * 0.02)
        self.decoder_pos_embed = nn.Parameter(sincos(grid, decoder_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_dim, decoder_heads, decoder_mlp) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch * patch * channels)

    def patchify(self, images):
        n, c, h, w = images.shape
        p = self.patch
        x = images.reshape(n, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)

    def forward(self, images, noise):
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        n, length, d = x.shape
        keep = int(length * (1 - self.mask_ratio))
        shuffle = noise.argsort(dim=1)
        restore = shuffle.argsort(dim=1)
        x = x.gather(1, shuffle[:, :keep, None].expand(-1, -1, d))
        mask = torch.ones(n, length)
        mask[:, :keep] = 0
        mask = mask.gather(1, restore)
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_embed(self.norm(x))
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(n, length - keep, -1)], dim=1)
        tokens = tokens.gather(1, restore[:, :, None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        prediction = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        target = self.patchify(images)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        loss = (((prediction - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        return loss, prediction, mask


class ReferenceViT(nn.Module):
    """The fine-tuned classifier: all patches, global average pool of the patch tokens, fc_norm, head."""

    def __init__(self, image=16, patch=4, channels=3, dim=32, depth=2, heads=4, mlp=64, classes=4):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, channels, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(sincos(image // patch, dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp) for _ in range(depth)])
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, images):
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.fc_norm(x[:, 1:].mean(dim=1)))
