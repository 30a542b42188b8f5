"""Verify real marks with the real silentcipher checkpoint, wherever it is available (never in CI: it cannot be
downloaded there, and random weights read nothing back).

    python scripts/watermark_check.py [--weights sony/silentcipher | FOLDER] [--audio speech.wav] [--out JSON]

Marks a clip (a given recording, else 6 s of speech-shaped noise) at 24 kHz with the reference key, as a job's
worker does; writes it as a job writes turns and exports episodes (16-bit WAV, MP3 and Opus through libsndfile at
their default bitrates); reads each file back and detects the key, with the phase search for the lossy ones.
Prints one line per format and the marking cost per audio second on this device; exit 0 when every file reads
the key. scripts/gpu_check.sh runs it when SILENTCIPHER_WEIGHTS names the checkpoint.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from csm_worker.watermark import HUB_REPO, REFERENCE_KEY, key_id, load_watermarker  # noqa: E402
from jobs.export.options import AUDIO_FORMATS  # noqa: E402

RATE = 24_000


def speech_shaped(seconds: float = 6.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = np.clip(np.sin(2 * np.pi * 3.3 * t), 0, None) ** 2
    voiced = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 560, 700), 1))
    return (0.2 * envelope * (voiced + 0.3 * rng.standard_normal(len(t)))).astype(np.float32)


def round_trip(clip: np.ndarray, fmt: str) -> np.ndarray:
    container, subtype, _ = AUDIO_FORMATS[fmt]
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", RATE, 1, subtype, format=container) as f:
        f.write(np.clip(clip, -1, 1))
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=HUB_REPO)
    ap.add_argument("--audio", default=None)
    ap.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    marker = load_watermarker(args.weights, args.device)
    clip = speech_shaped()
    if args.audio:
        import soxr

        samples, rate = sf.read(args.audio, dtype="float32", always_2d=True)
        clip = soxr.resample(samples.mean(axis=1), rate, RATE).astype(np.float32)
    marker.mark(clip[:RATE], RATE)  # warm-up
    start = time.perf_counter()
    marked = marker.mark(clip, RATE)
    cost = (time.perf_counter() - start) / (len(clip) / RATE)
    results = {"device": args.device, "weights": args.weights, "mark_s_per_audio_s": cost,
               "sdr_db": float(10 * np.log10(np.sum(clip**2) / max(np.sum((marked - clip) ** 2), 1e-20)))}
    unmarked = marker.detect(clip, RATE, REFERENCE_KEY, search_step=0)
    results["unmarked_original"] = {"marked": unmarked.marked, "confidence": unmarked.confidence}
    ok = not unmarked.marked
    for fmt in ("wav", "mp3", "opus"):
        heard = round_trip(marked, fmt)
        found = marker.detect(heard, RATE, REFERENCE_KEY, search_step=0 if fmt == "wav" else 10)
        results[fmt] = {"marked": found.marked, "key": key_id(found.key) if found.key else None,
                        "confidence": found.confidence, "shift": found.shift}
        ok &= found.marked
        print(f"{fmt:5s} marked={found.marked} key={results[fmt]['key']} confidence={found.confidence:.3f}")
    print(f"marking: {cost * 1000:.1f} ms per audio second on {args.device}; SDR {results['sdr_db']:.1f} dB; "
          f"the unmarked original reads as marked: {unmarked.marked}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
