"""The spectrogram silentcipher marks: a Hann STFT of a clip padded to whole windows, its magnitude and phase, and
the way back, trimmed to the clip's length. Clips of different lengths are stacked with zero frames (`stack`)."""

from __future__ import annotations

import torch


class Spectra:
    def __init__(self, n_fft: int, hop: int):
        self.n_fft, self.hop = n_fft, hop
        self._windows: dict[torch.device, torch.Tensor] = {}

    def window(self, device: torch.device) -> torch.Tensor:
        if device not in self._windows:
            self._windows[device] = torch.hann_window(self.n_fft, device=device)
        return self._windows[device]

    def analyse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A 1-D clip -> (magnitude, phase), each [bins, frames]. The clip is first padded with zeros to whole
        windows (a whole extra window when it already is), as silentcipher pads it."""
        y = torch.nn.functional.pad(y, (0, self.n_fft - y.shape[-1] % self.n_fft))
        spec = torch.stft(y, self.n_fft, self.hop, self.n_fft, window=self.window(y.device), return_complex=True)
        return spec.abs(), torch.atan2(spec.imag, spec.real)

    def synthesize(self, magnitude: torch.Tensor, phase: torch.Tensor, length: int) -> torch.Tensor:
        spec = torch.polar(magnitude, phase)
        y = torch.istft(spec, self.n_fft, self.hop, self.n_fft, window=self.window(magnitude.device))
        return y[:length]


def stack(spectra: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[bins, frames_i] each -> [B, 1, bins, max frames] zero-padded, and the mask of real frames [B, 1, 1, max]
    (None when every clip has them all: the networks then skip the masking)."""
    if len({s.shape[-1] for s in spectra}) == 1:
        return torch.stack(spectra)[:, None], None
    frames = max(s.shape[-1] for s in spectra)
    batch = torch.zeros(len(spectra), 1, spectra[0].shape[0], frames, device=spectra[0].device)
    mask = torch.zeros(len(spectra), 1, 1, frames, device=spectra[0].device)
    for i, s in enumerate(spectra):
        batch[i, 0, :, : s.shape[-1]] = s
        mask[i, 0, 0, : s.shape[-1]] = 1
    return batch, mask
