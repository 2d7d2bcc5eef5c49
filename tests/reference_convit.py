"""An independent ConViT in plain PyTorch, written from the paper (d'Ascoli et al. 2021, "ConViT: Improving Vision
Transformers with Soft Convolutional Inductive Biases") in timm's state-dict layout, for the converter tests. It
imports nothing from mimir_hf.

Keys: `patch_embed.proj`, `pos_embed` (patches only), `cls_token`, `blocks.N.{norm1, norm2, mlp.fc1, mlp.fc2}`, GPSA
blocks `blocks.N.attn.{qk, v, proj, pos_proj, gating_param}`, ordinary blocks `blocks.N.attn.{qkv, proj}`, `norm`,
`head`. The class token joins before block `local_up_to_layer`.

`MaeConvit` is the authors' ConViT masked autoencoder as `notes/reference_facts.md` section 4 describes it, written
here independently: the encoder above on the visible patches (GPSA blocks see them, in their shuffled order, as a
square grid), then a decoder of GPSA blocks (qkv bias) over the full patch grid, without the class token. Extra keys:
`decoder_embed`, `mask_token`, `decoder_pos_embed`, `decoder_blocks.N.*`, `decoder_norm`, `decoder_pred`.
"""

import torch
from torch import nn

from .reference_cait import Mlp, PatchEmbed, mask_of, masked_mse, normalised_patches, scatter_back, visible_order


def patch_offsets(side):
    """r[i, j] = (dx, dy, dx^2 + dy^2) for query patch i and key patch j of a side x side grid, from coordinates."""
    coordinates = [(row, column) for row in range(side) for column in range(side)]  # row-major patch order
    r = torch.zeros(len(coordinates), len(coordinates), 3)
    for i, (query_row, query_column) in enumerate(coordinates):
        for j, (key_row, key_column) in enumerate(coordinates):
            dx, dy = key_column - query_column, key_row - query_row
            r[i, j] = torch.tensor([dx, dy, dx * dx + dy * dy], dtype=torch.float32)
    return r


class GPSA(nn.Module):
    def __init__(self, dim, heads, qkv_bias, locality_strength=1.0):
        super().__init__()
        self.heads = heads
        self.qk = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(3, heads)
        self.gating_param = nn.Parameter(torch.ones(heads))
        self.locality_strength = locality_strength

    def local_init(self):
        """Head number a + k * b (a, b < k, k = floor(sqrt(heads))) looks at kernel cell (dx, dy) = (b - c, a - c),
        c the kernel centre: score -(|delta - centre|^2) = 2 dx_h dx + 2 dy_h dy - (dx^2 + dy^2) + const."""
        with torch.no_grad():
            self.v.weight.copy_(torch.eye(self.v.weight.shape[0]))
            k = int(self.heads**0.5)
            c = (k - 1) / 2
            for a in range(k):
                for b in range(k):
                    self.pos_proj.weight[a + k * b] = torch.tensor([2 * (b - c), 2 * (a - c), -1.0])
            self.pos_proj.weight.mul_(self.locality_strength)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        q, k = self.qk(x).view(b, n, 2, h, d // h).unbind(2)
        v = self.v(x).view(b, n, h, d // h)
        content = (torch.einsum("bihe,bjhe->bhij", q, k) / (d // h) ** 0.5).softmax(dim=-1)
        r = patch_offsets(int(n**0.5))
        positional = torch.einsum("ijc,hc->hij", r, self.pos_proj.weight) + self.pos_proj.bias[:, None, None]
        positional = positional.softmax(dim=-1)[None]
        g = torch.sigmoid(self.gating_param)[None, :, None, None]
        attention = (1 - g) * content + g * positional
        attention = attention / attention.sum(dim=-1, keepdim=True)
        return self.proj(torch.einsum("bhij,bjhe->bihe", attention, v).reshape(b, n, d))


class MHSA(nn.Module):
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(x).view(b, n, 3, h, d // h).unbind(2)
        attention = (torch.einsum("bihe,bjhe->bhij", q, k) / (d // h) ** 0.5).softmax(dim=-1)
        return self.proj(torch.einsum("bhij,bjhe->bihe", attention, v).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp, qkv_bias, use_gpsa):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = GPSA(dim, heads, qkv_bias) if use_gpsa else MHSA(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ConVit(nn.Module):
    def __init__(
        self,
        img_size=32,
        patch_size=4,
        in_chans=3,
        num_classes=10,
        embed_dim=48,
        depth=3,
        num_heads=4,
        mlp_ratio=4,
        qkv_bias=False,
        local_up_to_layer=2,
        use_pos_embed=True,
    ):
        super().__init__()
        num_patches = (img_size // patch_size) ** 2
        self.local_up_to_layer = local_up_to_layer
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim)) if use_pos_embed else None
        self.blocks = nn.ModuleList(
            [
                Block(embed_dim, num_heads, int(embed_dim * mlp_ratio), qkv_bias, index < local_up_to_layer)
                for index in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward_features(self, images):
        x = self.patch_embed(images)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for index, block in enumerate(self.blocks):
            if index == self.local_up_to_layer:
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = block(x)
        return self.norm(x)[:, 0]

    def forward(self, images):
        return self.head(self.forward_features(images))


class MaeConvit(ConVit):
    """The ConViT masked autoencoder of MIMIR pre-training. `forward(images, noise)` returns (loss, prediction, mask,
    latent) with `latent` the encoder's [class token, visible patches] after `norm`."""

    def __init__(
        self,
        img_size=16,
        patch_size=4,
        in_chans=3,
        embed_dim=32,
        depth=3,
        num_heads=4,
        mlp_ratio=4,
        qkv_bias=True,
        local_up_to_layer=2,
        decoder_dim=16,
        decoder_depth=2,
        decoder_heads=4,
        mask_ratio=0.75,
    ):
        super().__init__(
            img_size, patch_size, in_chans, 1, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, local_up_to_layer
        )
        del self.head
        num_patches = (img_size // patch_size) ** 2
        self.patch, self.keep = patch_size, int(num_patches * (1 - mask_ratio))
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches, decoder_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_dim, decoder_heads, int(decoder_dim * mlp_ratio), qkv_bias=True, use_gpsa=True)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size * patch_size * in_chans)

    def forward(self, images, noise):
        tokens = self.patch_embed(images) + self.pos_embed
        orders = visible_order(noise)
        x = torch.stack([tokens[b, order[: self.keep]] for b, order in enumerate(orders)])
        for index, block in enumerate(self.blocks):  # GPSA: offsets of a sqrt(keep) x sqrt(keep) grid, from len(x)
            if index == self.local_up_to_layer:
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = block(x)
        latent = self.norm(x)
        y = scatter_back(self.decoder_embed(latent)[:, 1:], self.mask_token, orders) + self.decoder_pos_embed
        for block in self.decoder_blocks:  # GPSA over the full grid, in patch order
            y = block(y)
        prediction = self.decoder_pred(self.decoder_norm(y))
        mask = mask_of(orders, self.keep)
        return masked_mse(prediction, normalised_patches(images, self.patch), mask), prediction, mask, latent


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter drawn afresh (N(0, 0.3); norms around 1; gates spread over (0, 1) so both the content and the
    positional attention matter), so that every weight visibly shapes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.2 * noise)
            elif "gating_param" in name:
                parameter.copy_(noise)
            elif "pos_proj" in name:
                parameter.copy_(0.5 * noise)
            else:
                parameter.copy_(0.3 * noise)
    return model
