"""Mark clips with a key and read keys back, as silentcipher's 44.1 kHz model does it (and so as Sesame's reference
generator marks CSM's output): resample to 44.1 kHz, scale to a fixed power, take the STFT magnitude, let the
networks write the message into it below the message band's top, and go back with the clip's own phase.

Marking runs a batch of clips through the networks at once (per-clip statistics, see nets.py), in groups of at
most `max_frames` spectrogram frames, so memory stays bounded whatever the batch holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import message
from .hparams import Hparams
from .nets import CarrierDecoder, Encoder, MsgDecoder, masked_mean
from .spectra import Spectra, stack

REFERENCE_SDR = 36.0  # dB of signal over mark: what Sesame's reference generator passes (the checkpoint's own is 47)
TRAINING_POWER = 0.002837200844477648  # mean square the networks were trained at (VCTK's); every clip is scaled to it
SEARCH_S = 2.0  # seconds of a clip the phase search listens to


@dataclass(frozen=True)
class Detection:
    marked: bool  # a message was read and, when a key was expected, it is that key
    key: tuple[int, ...] | None  # the key read (None: no message could be read)
    confidence: float  # share of frames agreeing with the message read, 0-1
    shift: int  # samples (at 44.1 kHz) skipped to align with the mark's frames


class Watermarker:
    def __init__(self, hparams: Hparams, encoder: Encoder, carrier_decoder: CarrierDecoder, msg_decoder: MsgDecoder,
                 device: str | torch.device = "cpu", source: str = "", weights_id: str = "", max_frames: int = 1024):
        self.h = hparams
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).requires_grad_(False)
        self.carrier_decoder = carrier_decoder.to(self.device).requires_grad_(False)
        self.msg_decoder = msg_decoder.to(self.device).requires_grad_(False)
        self.spectra = Spectra(hparams.N_FFT, hparams.HOP_LENGTH)
        self.source = source  # where the weights came from, and their sha256: the job record names both
        self.weights_id = weights_id
        self.max_frames = max_frames

    @property
    def sample_rate(self) -> int:
        return self.h.SR

    # -- marking ------------------------------------------------------------------------------------------------

    def mark(self, clip: np.ndarray, rate: int, key=message.REFERENCE_KEY, sdr: float = REFERENCE_SDR) -> np.ndarray:
        return self.mark_batch([clip], rate, key, sdr)[0]

    def mark_batch(self, clips: list[np.ndarray], rate: int, key=message.REFERENCE_KEY,
                   sdr: float = REFERENCE_SDR) -> list[np.ndarray]:
        """Each clip (float32 at `rate`) marked with `key`, same length and rate. A silent or non-finite clip has
        nothing to carry a mark and comes back unchanged, as silentcipher leaves silence."""
        return self._mark_all(clips, rate, key, sdr)[0]

    def finalizer(self, key=message.REFERENCE_KEY, sdr: float = REFERENCE_SDR):
        """The engine's `finalize`: marks a step's finished turns in one batch, in place, and says which were."""

        def mark(turns: list) -> None:
            clips, marked = self._mark_all([t.audio for t in turns], turns[0].sample_rate, key, sdr)
            for turn, clip, was in zip(turns, clips, marked):
                turn.audio, turn.watermark = clip, "on" if was else "silent"

        return mark

    def _mark_all(self, clips, rate, key, sdr) -> tuple[list[np.ndarray], list[bool]]:
        out = [np.asarray(c, dtype=np.float32) for c in clips]
        todo = []  # (index, clip at 44.1 kHz, its power, magnitude, phase)
        for i, clip in enumerate(out):
            y = _resample(clip, rate, self.h.SR)
            power = float(np.mean(y.astype(np.float64) ** 2)) if len(y) else 0.0
            if power > 0 and np.isfinite(power):
                t = torch.from_numpy(y * np.float32(np.sqrt(TRAINING_POWER / power))).to(self.device)
                todo.append((i, len(y), power, *self.spectra.analyse(t)))
        for group in _groups(todo, self.max_frames, frames_of=lambda item: item[3].shape[-1]):
            magnitudes = self._marked([item[3] for item in group], key, sdr)
            for (i, length, power, _, phase), magnitude in zip(group, magnitudes):
                y = self.spectra.synthesize(magnitude, phase, length).cpu().numpy()
                y = y * np.float32(np.sqrt(power / TRAINING_POWER))
                out[i] = _fit(_resample(y, self.h.SR, rate), len(out[i]))
        done = {item[0] for item in todo}
        return out, [i in done for i in range(len(out))]

    @torch.inference_mode()
    def _marked(self, magnitudes: list[torch.Tensor], key, sdr: float) -> list[torch.Tensor]:
        h = self.h
        carrier, mask = stack(magnitudes)
        frames = carrier.shape[-1]
        onehot = torch.from_numpy(message.one_hot_frames(key, frames, h.message_dim)).to(self.device)
        msg = self.encoder.transform_message(onehot.expand(len(magnitudes), 1, -1, -1), mask)
        mark = self.carrier_decoder(self.encoder(carrier, mask), carrier, msg, mask)
        if h.ensure_negative_message:
            mark = mark.abs()
        mark[:, :, h.message_band_size :] = 0
        if not h.no_normalization:
            per_frame = torch.mean(mark**2, dim=2, keepdim=True).sqrt()
            mark = mark / per_frame if mask is None else torch.where(mask > 0, mark / per_frame, 0.0)
            mark = mark / 10 ** (sdr / 20)
        if h.frame_level_normalization:
            mark = mark * torch.mean(carrier**2, dim=2, keepdim=True).sqrt()
        elif h.utterance_level_normalization:
            mark = mark * masked_mean(carrier**2, mask).sqrt()
        if h.ensure_negative_message:
            marked = torch.relu(carrier - mark)
        elif h.ensure_constrained_message:
            marked = carrier + torch.maximum(torch.minimum(mark, carrier), -carrier)
        else:
            marked = (carrier + mark).abs()
        return [marked[i, 0, :, : m.shape[-1]] for i, m in enumerate(magnitudes)]

    # -- detection ----------------------------------------------------------------------------------------------

    def detect(self, clip: np.ndarray, rate: int, key=message.REFERENCE_KEY, search_step: int = 10) -> Detection:
        """Read the key in `clip`. The mark's frames start where marking started; a clip cut or re-encoded (an
        MP3's encoder delay) starts elsewhere, so unless the clip reads as `key` as it is, the shift (every
        `search_step` samples of one hop, as silentcipher searches, over the first SEARCH_S seconds) whose
        symbols repeat most consistently is used. `search_step` 0: no search. `key` None: report any key."""
        y = _resample(np.asarray(clip, dtype=np.float32), rate, self.h.SR)
        power = float(np.mean(y.astype(np.float64) ** 2)) if len(y) else 0.0
        if not (power > 0 and np.isfinite(power)):
            return Detection(False, None, 0.0, 0)
        y = torch.from_numpy(y * np.float32(np.sqrt(TRAINING_POWER / power))).to(self.device)
        found = self._read(y, 0, key)
        if found.marked or search_step <= 0:
            return found
        shift = self._best_shift(y[: int(SEARCH_S * self.h.SR) + self.h.HOP_LENGTH], search_step)
        return found if shift == 0 else self._read(y, shift, key)

    def _read(self, y: torch.Tensor, shift: int, key) -> Detection:
        reading = message.read(self._symbols([y[shift:]])[0], self.h.message_len, self.h.message_dim)
        marked = reading.key is not None and (key is None or tuple(reading.key) == tuple(key))
        return Detection(marked, reading.key, reading.confidence, shift)

    def _best_shift(self, y: torch.Tensor, step: int) -> int:
        shifts = list(range(0, self.h.HOP_LENGTH, step))
        scores = []
        for group in _groups(shifts, self.max_frames, frames_of=lambda s: (len(y) - s) // self.h.HOP_LENGTH + 2):
            for symbols in self._symbols([y[s:] for s in group]):
                scores.append(message.agreement(symbols, self.h.message_len, self.h.message_dim))
        return shifts[int(np.argmax(scores))]  # the first of equals, as silentcipher keeps the first best

    @torch.inference_mode()
    def _symbols(self, ys: list[torch.Tensor]) -> list[np.ndarray]:
        """The symbol the decoder reads in each frame of each (power-scaled, 44.1 kHz) clip."""
        magnitudes = [self.spectra.analyse(y)[0] for y in ys]
        carrier, mask = stack(magnitudes)
        scores = self.msg_decoder(carrier, mask)
        best = scores.argmax(dim=1).cpu().numpy()
        return [best[i, : m.shape[-1]] for i, m in enumerate(magnitudes)]


def _resample(y: np.ndarray, rate: int, wanted: int) -> np.ndarray:
    import soxr

    y = np.asarray(y, dtype=np.float32).reshape(-1)
    return y if rate == wanted or not len(y) else soxr.resample(y, rate, wanted, quality="VHQ").astype(np.float32)


def _fit(y: np.ndarray, length: int) -> np.ndarray:
    """A round trip through another rate can end a sample long or short: the clip keeps its own length."""
    return y[:length] if len(y) >= length else np.pad(y, (0, length - len(y)))


def _groups(items: list, max_frames: int, frames_of) -> list[list]:
    """Consecutive items in groups whose stack (items x the longest's frames) holds at most `max_frames` frames
    (one item alone may hold more)."""
    groups, current, longest = [], [], 0
    for item in items:
        frames = frames_of(item)
        if current and (len(current) + 1) * max(longest, frames) > max_frames:
            groups.append(current)
            current, longest = [], 0
        current.append(item)
        longest = max(longest, frames)
    return groups + ([current] if current else [])
