"""silentcipher's three networks, written for this project from its published architecture (Sony, MIT), with the
parameter names of its checkpoints so `load_state_dict` takes the published `enc_c.ckpt`, `dec_c.ckpt` and
`dec_m_0.ckpt` as they are.

Every layer is a gated 3x3 convolution (conv * sigmoid(gate)) followed by batch norm. silentcipher's own code never
switches its networks to eval mode, so that batch norm normalizes with the statistics of the clip in hand, not the
running averages stored in the checkpoint; the published decoder only finds marks made that way, so these networks
do the same, per clip. That is what lets them run a batch of clips of different lengths at once: each clip's
statistics are taken over its own frames only (`mask`), and padded frames are zeroed after every layer, so a
clip's result is the one it would get alone.
"""

from __future__ import annotations

import torch
from torch import nn

BN_EPS = 1e-5  # nn.BatchNorm2d's default, which silentcipher's layers use


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over frequency and the clip's own frames, per clip and channel: [B, C, F, T] -> [B, C, 1, 1].
    `mask` None: every frame is the clip's (a batch of one length)."""
    if mask is None:
        return x.mean(dim=(2, 3), keepdim=True)
    count = mask.sum(dim=(2, 3), keepdim=True) * x.shape[2]
    return (x * mask).sum(dim=(2, 3), keepdim=True) / count


def gated(x: torch.Tensor, conv_w, conv_b, gate_w, gate_b, padding: int) -> torch.Tensor:
    """conv(x) * sigmoid(gate(x)) as one convolution of both kernels stacked (the same sums, one pass over x)."""
    y = nn.functional.conv2d(x, torch.cat([conv_w, gate_w]), torch.cat([conv_b, gate_b]), padding=padding)
    a, g = y.chunk(2, dim=1)
    return a * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """conv(x) * sigmoid(gate(x)), then batch norm with the clip's own statistics."""

    def __init__(self, dim_in: int, dim_out: int, kernel_size: int = 3):
        super().__init__()
        self.padding = kernel_size // 2
        self.conv = nn.Conv2d(dim_in, dim_out, kernel_size, padding=self.padding)
        self.gate = nn.Conv2d(dim_in, dim_out, kernel_size, padding=self.padding)
        self.bn = nn.BatchNorm2d(dim_out)  # only its affine weight and bias are used (see the module's docstring)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = gated(x, self.conv.weight, self.conv.bias, self.gate.weight, self.gate.bias, self.padding)
        return self.normalize(h, mask)

    def normalize(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Batch norm's (h - mean) / sqrt(var + eps) * weight + bias, as h * scale + shift in one pass."""
        if mask is None:
            var, mean = torch.var_mean(h, dim=(2, 3), keepdim=True, correction=0)
        else:
            mean = masked_mean(h, mask)
            var = masked_mean((h - mean) ** 2, mask)  # biased, as batch norm's normalization is
        scale = self.bn.weight.view(1, -1, 1, 1) * torch.rsqrt(var + BN_EPS)
        out = torch.addcmul(self.bn.bias.view(1, -1, 1, 1) - mean * scale, h, scale)
        return out if mask is None else out * mask


def _run(layers, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        if isinstance(layer, GatedLayer):  # MsgDecoder interleaves no-op dropouts, kept for the parameter names
            x = layer(x, mask)
    return x


class Encoder(nn.Module):
    """The carrier's features (32 channels) and the message's projection onto the frequency axis."""

    def __init__(self, n_layers: int, message_dim: int, message_band_size: int, n_fft: int, out_dim: int = 32):
        super().__init__()
        self.main = nn.Sequential(GatedLayer(1, 32), *[GatedLayer(32, 32) for _ in range(n_layers - 2)],
                                  GatedLayer(32, out_dim))
        self.linear = nn.Linear(message_dim, message_band_size)
        self.bins = n_fft // 2 + 1

    def forward(self, carrier: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _run(self.main, carrier, mask)

    def transform_message(self, message: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, 1, message_dim, T] one-hot symbols -> [B, 1, bins, T]: the band's projection, zeros above it."""
        band = self.linear(message.transpose(2, 3)).transpose(2, 3)
        band = nn.functional.pad(band, (0, 0, 0, self.bins - band.shape[2]))
        return band if mask is None else band * mask


class CarrierDecoder(nn.Module):
    """The mark's magnitude per bin, from the carrier's features, the carrier and the message.

    silentcipher feeds its first layer the carrier and the message each repeated 32 times; a convolution over 32
    copies of one channel is the convolution of that channel with the 32 kernels summed, so the first layer here
    convolves 34 channels with folded kernels (a third of the work) and gives the same sums."""

    def __init__(self, n_layers: int, message_band_size: int, features: int = 32, copies: int = 32):
        super().__init__()
        width = 96
        self.main = nn.Sequential(GatedLayer(features + 2 * copies, width),
                                  *[GatedLayer(width, width) for _ in range(n_layers - 2)],
                                  GatedLayer(width, 1, kernel_size=1))
        self.band = message_band_size
        self.features, self.copies = features, copies

    def folded_first(self) -> tuple[torch.Tensor, torch.Tensor]:
        f, c = self.features, self.copies
        first = self.main[0]

        def fold(w: torch.Tensor) -> torch.Tensor:
            return torch.cat([w[:, :f], w[:, f : f + c].sum(1, keepdim=True), w[:, f + c :].sum(1, keepdim=True)], 1)

        return fold(first.conv.weight), fold(first.gate.weight)

    def forward(self, features: torch.Tensor, carrier: torch.Tensor, message: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        first = self.main[0]
        conv_w, gate_w = self.folded_first()
        x = torch.cat([features, carrier, message], dim=1)
        h = first.normalize(gated(x, conv_w, first.conv.bias, gate_w, first.gate.bias, first.padding), mask)
        return _run(self.main[1:], h, mask)


class MsgDecoder(nn.Module):
    """Per frame, a score for each message symbol, from the carrier's magnitudes in the message band."""

    def __init__(self, message_dim: int, message_band_size: int, channels: int = 128, n_layers: int = 10):
        super().__init__()
        layers = [GatedLayer(1, channels)] + [GatedLayer(channels, channels) for _ in range(n_layers - 2)] + \
                 [GatedLayer(channels, message_dim)]
        # Dropout(0) before every layer, as in the published module: they do nothing but give the indices.
        self.main = nn.Sequential(*[m for layer in layers for m in (nn.Dropout(0), layer)])
        self.linear = nn.Linear(message_band_size, 1)
        self.band = message_band_size

    def forward(self, carrier: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, 1, bins, T] -> [B, message_dim, T]."""
        h = _run(self.main, carrier[:, :, : self.band], mask)
        return self.linear(h.transpose(2, 3)).squeeze(3)
