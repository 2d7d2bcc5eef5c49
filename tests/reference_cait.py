"""An independent CaiT in plain PyTorch, written from the paper (Touvron et al. 2021, "Going deeper with Image
Transformers") in timm's state-dict layout, for the converter tests. It imports nothing from mimir_hf.

Keys: `patch_embed.proj`, `pos_embed` (patches only), `cls_token`, `blocks.N.{norm1, attn.qkv, attn.proj_l,
attn.proj_w, attn.proj, norm2, mlp.fc1, mlp.fc2, gamma_1, gamma_2}`, `blocks_token_only.N.{norm1, attn.q, attn.k,
attn.v, attn.proj, norm2, mlp.fc1, mlp.fc2, gamma_1, gamma_2}`, `norm`, `head`.

`MaeCait` is the authors' CaiT masked autoencoder as `notes/reference_facts.md` section 4 describes it, written here
independently (per-sample index bookkeeping instead of gathers): the encoder above on the visible patches, then a
decoder of talking-heads LayerScale blocks that keeps the class token in front. Extra keys: `decoder_embed`,
`mask_token`, `decoder_pos_embed`, `decoder_blocks.N.*` (as `blocks.N.*`), `decoder_norm`, `decoder_pred`.
"""

import torch
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, patch, channels, dim):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)

    def forward(self, images):
        return self.proj(images).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class TalkingHeadAttn(nn.Module):
    """softmax over keys of (L-mixed logits), then W-mixed probabilities; head mixes as einsums over the head axis."""

    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj_l = nn.Linear(heads, heads)
        self.proj_w = nn.Linear(heads, heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(x).view(b, n, 3, h, d // h).unbind(2)  # each [b, n, h, e]
        logits = torch.einsum("bihe,bjhe->bhij", q, k) / (d // h) ** 0.5
        logits = torch.einsum("bhij,gh->bgij", logits, self.proj_l.weight) + self.proj_l.bias[:, None, None]
        probs = logits.softmax(dim=-1)
        probs = torch.einsum("bhij,gh->bgij", probs, self.proj_w.weight) + self.proj_w.bias[:, None, None]
        out = torch.einsum("bhij,bjhe->bihe", probs, v).reshape(b, n, d)
        return self.proj(out)


class ClassAttn(nn.Module):
    """The first token queries all tokens; returns only its update, [b, 1, d]."""

    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        q = self.q(x[:, 0]).view(b, h, d // h)
        k = self.k(x).view(b, n, h, d // h)
        v = self.v(x).view(b, n, h, d // h)
        probs = (torch.einsum("bhe,bjhe->bhj", q, k) / (d // h) ** 0.5).softmax(dim=-1)
        return self.proj(torch.einsum("bhj,bjhe->bhe", probs, v).reshape(b, 1, d))


class LayerScaleBlock(nn.Module):
    def __init__(self, dim, heads, mlp, qkv_bias, init_values):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TalkingHeadAttn(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp)
        self.gamma_1 = nn.Parameter(torch.full((dim,), init_values))
        self.gamma_2 = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x):
        x = x + self.gamma_1 * self.attn(self.norm1(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class LayerScaleBlockClassAttn(nn.Module):
    def __init__(self, dim, heads, mlp, qkv_bias, init_values):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ClassAttn(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp)
        self.gamma_1 = nn.Parameter(torch.full((dim,), init_values))
        self.gamma_2 = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, patches, cls):
        cls = cls + self.gamma_1 * self.attn(self.norm1(torch.cat([cls, patches], dim=1)))
        return cls + self.gamma_2 * self.mlp(self.norm2(cls))


class Cait(nn.Module):
    def __init__(
        self,
        img_size=32,
        patch_size=4,
        in_chans=3,
        num_classes=10,
        embed_dim=48,
        depth=2,
        num_heads=4,
        mlp_ratio=4,
        qkv_bias=True,
        init_values=1e-5,
        depth_token_only=2,
    ):
        super().__init__()
        num_patches = (img_size // patch_size) ** 2
        mlp = int(embed_dim * mlp_ratio)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.Sequential(
            *[LayerScaleBlock(embed_dim, num_heads, mlp, qkv_bias, init_values) for _ in range(depth)]
        )
        self.blocks_token_only = nn.ModuleList(
            [
                LayerScaleBlockClassAttn(embed_dim, num_heads, mlp, qkv_bias, init_values)
                for _ in range(depth_token_only)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward_features(self, images):
        x = self.blocks(self.patch_embed(images) + self.pos_embed)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        for block in self.blocks_token_only:
            cls = block(x, cls)
        return self.norm(torch.cat([cls, x], dim=1))[:, 0]

    def forward(self, images):
        return self.head(self.forward_features(images))


def visible_order(noise: torch.Tensor) -> list[torch.Tensor]:
    """Per sample, the patch indices sorted by their noise: the first `keep` are seen by the encoder (MAE's rule)."""
    return [torch.sort(row).indices for row in noise]


def scatter_back(visible: torch.Tensor, mask_token: torch.Tensor, orders: list[torch.Tensor]) -> torch.Tensor:
    """Decoder input in patch order: each sample's visible tokens at their patches, `mask_token` everywhere else."""
    batch, keep, dim = visible.shape
    length = orders[0].numel()
    out = mask_token.reshape(1, 1, dim).repeat(batch, length, 1)
    for b, order in enumerate(orders):
        out[b, order[:keep]] = visible[b]
    return out


def mask_of(orders: list[torch.Tensor], keep: int) -> torch.Tensor:
    """1 for a hidden patch, 0 for a visible one, in patch order."""
    mask = torch.ones(len(orders), orders[0].numel())
    for b, order in enumerate(orders):
        mask[b, order[:keep]] = 0.0
    return mask


def normalised_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Patches row-major, pixels (row, column, channel) within a patch, each patch standardised (unbiased variance)."""
    n, c, h, w = images.shape
    patches = []
    for i in range(h // patch):
        for j in range(w // patch):
            block = images[:, :, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch]
            patches.append(block.permute(0, 2, 3, 1).reshape(n, -1))
    target = torch.stack(patches, dim=1)
    return (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (((prediction - target) ** 2).mean(-1) * mask).sum() / mask.sum()


class MaeCait(Cait):
    """The CaiT masked autoencoder of MIMIR pre-training. `forward(images, noise)` returns (loss, prediction, mask,
    latent) with `latent` the encoder's [class token, visible patches] after `norm`."""

    def __init__(
        self,
        img_size=16,
        patch_size=4,
        in_chans=3,
        embed_dim=32,
        depth=2,
        num_heads=4,
        mlp_ratio=4,
        qkv_bias=True,
        init_values=1e-5,
        decoder_dim=16,
        decoder_depth=2,
        decoder_heads=4,
        mask_ratio=0.75,
    ):
        super().__init__(
            img_size, patch_size, in_chans, 1, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, init_values
        )
        del self.head
        num_patches = (img_size // patch_size) ** 2
        self.patch, self.keep = patch_size, int(num_patches * (1 - mask_ratio))
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches, decoder_dim), requires_grad=False)
        self.decoder_blocks = nn.Sequential(
            *[
                LayerScaleBlock(decoder_dim, decoder_heads, int(decoder_dim * mlp_ratio), qkv_bias, init_values)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size * patch_size * in_chans)

    def forward(self, images, noise):
        tokens = self.patch_embed(images) + self.pos_embed
        orders = visible_order(noise)
        x = self.blocks(torch.stack([tokens[b, order[: self.keep]] for b, order in enumerate(orders)]))
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        for block in self.blocks_token_only:
            cls = block(x, cls)
        latent = self.norm(torch.cat([cls, x], dim=1))
        y = self.decoder_embed(latent)
        patches = scatter_back(y[:, 1:], self.mask_token, orders) + self.decoder_pos_embed
        y = self.decoder_blocks(torch.cat([y[:, :1], patches], dim=1))
        prediction = self.decoder_pred(self.decoder_norm(y))[:, 1:]
        mask = mask_of(orders, self.keep)
        return masked_mse(prediction, normalised_patches(images, self.patch), mask), prediction, mask, latent


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter drawn afresh (N(0, 0.3), norms around 1, LayerScale around 0.5), so that every weight -- the
    small LayerScale and head mixers included -- visibly shapes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.2 * noise)
            elif "gamma" in name:
                parameter.copy_(0.5 + 0.2 * noise)
            else:
                parameter.copy_(0.3 * noise)
    return model
