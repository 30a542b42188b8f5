"""`csm-render bench`: the engine against transformers' `generate` on the same weights, in the same run.

Every ratio compares two measurements taken here, in the same dtype, each the best of interleaved rounds, so
it holds on a noisy machine. Frames are 80 ms of audio; both sides sample (temperature 0.9, top-k 50) as a job would.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass

import torch

from .backends.linear import Linear, onednn_available
from .engine.engine import Engine
from .engine.requests import ConversationRequest, RenderedTurn, TurnRequest
from .generator import Generator
from .model.prompt import TextEncoder

FRAME_S = 0.08
# Every figure is the best of this many interleaved rounds: on a shared machine a busy moment then falls on
# neither side of a ratio more than on the other (one round gave ratios 2x apart on the same commit).
ROUNDS = 3
# About as many positions as a typical utterance takes with the Llama-3 tokenizer (presets count one per byte).
PROMPT = "Hello there, how are you?"


@dataclass
class BenchResult:
    model: str
    device: str
    dtype: str
    batch_size: int
    frames: int
    rounds: int
    engine_frames_per_s: float
    engine_b1_frames_per_s: float
    hf_b1_frames_per_s: float
    hf_bN_frames_per_s: float
    speedup_vs_hf_b1: float
    speedup_vs_hf_bN: float
    turn_cost_ratio: float
    realtime_factor: float
    realtime_factor_b1: float
    peak_flops_per_s: float
    decode_flops_per_frame: float
    compute_efficiency: float
    peak_memory_mb: float
    backend: str = ""
    # The portable backend (plain PyTorch, what CUDA runs) on the same weights and batch, measured in the same
    # rounds; None when the engine measured above is the portable one.
    portable_frames_per_s: float | None = None
    portable_compute_efficiency: float | None = None
    # What a job adds per turn, in seconds per second of audio, and as a share of the engine's time at batch N for
    # that audio (the ratio to its realtime factor): the always-on quality checks, and the watermark (None when
    # its weights cannot be had; random ones with a random preset).
    qc_checks_s_per_audio_s: float | None = None
    qc_checks_ratio: float | None = None
    watermark_s_per_audio_s: float | None = None
    watermark_ratio: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# How a decode step runs (Engine's static= and graphs=): None is the engine's default for the device (CUDA:
# graphs; CPU: dynamic); "static" is the fixed-shape step run eagerly, so graphs/static is what graphs add.
MODES = {None: {}, "dynamic": dict(static=False, graphs=False), "static": dict(static=True, graphs=False),
         "graphs": dict(static=True, graphs=True)}


def engine_frames_per_s(gen: Generator, batch_size: int, frames: int, conversations: int | None = None,
                        mode: str | None = None) -> float:
    """Frames per second with `batch_size` slots busy: `conversations` one-turn conversations of `frames` frames."""
    return engine_run(gen, batch_size, frames, conversations, mode)[0]


def engine_run(gen: Generator, batch_size: int, frames: int, conversations: int | None = None,
               mode: str | None = None) -> tuple[float, Engine]:
    """engine_frames_per_s, and the engine it measured (its graphs' capture time, its stats)."""
    n = conversations or batch_size
    convs = [ConversationRequest(f"b{i}", [TurnRequest(0, i % 2, PROMPT, max_audio_length_ms=frames * 80,
                                                       seed=i)]) for i in range(n)]
    engine = _engine(gen, batch_size, mode)
    _warm(gen, engine)  # also captures the graphs the measured steps replay (same buckets)
    _sync(gen.device)
    start = time.perf_counter()
    done = sum(ev.num_frames for ev in engine.run(convs) if isinstance(ev, RenderedTurn))
    _sync(gen.device)
    return done / (time.perf_counter() - start), engine


def _engine(gen: Generator, batch_size: int, mode: str | None = None) -> Engine:
    # Its own engine without Mimi decoding: the token loop is what is measured, and the generator's shared
    # engines keep decoding audio for later calls.
    return Engine(gen.model, gen.codec, gen.loaded.tokenizer, batch_size=batch_size, decode_audio=False,
                  **MODES[mode])


def _warm(gen: Generator, engine) -> None:
    warm = [ConversationRequest("warm", [TurnRequest(0, 0, "warm up", max_audio_length_ms=240, seed=1)])]
    for _ in engine.run(warm):
        pass


def turn_cost_ratio(gen: Generator, turns: int = 20, frames: int = 25, repeats: int = 3) -> float:
    """In one conversation of equal turns, the time of the last turn over the first: 1.0 means context reuse
    makes turn cost independent of the conversation's length (the reference re-prefills everything). Each
    turn's time is the best of `repeats` runs of the conversation, so machine noise does not decide it."""
    engine = _engine(gen, 1)
    _warm(gen, engine)
    conv = ConversationRequest("turns", [TurnRequest(i, i % 2, PROMPT, max_audio_length_ms=frames * 80, seed=i)
                                         for i in range(turns)])
    best = [float("inf")] * turns
    for _ in range(repeats):
        stamps = [time.perf_counter()]
        for ev in engine.run([conv]):
            if isinstance(ev, RenderedTurn):
                _sync(gen.device)
                stamps.append(time.perf_counter())
        best = [min(b, t1 - t0) for b, t0, t1 in zip(best, stamps, stamps[1:])]
    return best[-1] / best[0]


@torch.no_grad()
def hf_frames_per_s(gen: Generator, batch_size: int, frames: int) -> float:
    """transformers' own `generate` on the same weights, same prompt for every row (it cannot batch unequal
    prompts without padding), sampling like the engine."""
    hf = gen.loaded.hf
    ids = TextEncoder(gen.loaded.tokenizer).encode(0, PROMPT)
    input_ids = torch.tensor([ids] * batch_size, device=gen.device)
    kwargs = dict(do_sample=True, temperature=0.9, top_k=50, depth_decoder_do_sample=True,
                  depth_decoder_temperature=0.9, depth_decoder_top_k=50)
    hf.generate(input_ids=input_ids, max_new_tokens=2, min_new_tokens=2, **kwargs)  # warm-up
    _sync(gen.device)
    start = time.perf_counter()
    out = hf.generate(input_ids=input_ids, max_new_tokens=frames, min_new_tokens=frames, **kwargs)
    _sync(gen.device)
    return out.shape[0] * out.shape[1] / (time.perf_counter() - start)


def peak_flops_per_s(device, dtype, n: int | None = None, repeats: int = 4, trials: int = 5) -> float:
    """The device's own matmul throughput in `dtype` (best of `trials`): the ceiling `compute_efficiency` is
    measured against. On CPU it is the better of torch's default matmul and the oneDNN product the engine uses
    (backends/linear.py), so the engine's faster kernels do not inflate its efficiency. Default size: 2048 on CPU,
    8192 on GPUs (a 2048^3 product is over in ~20 us on an H100, too short to reach its peak)."""
    n = n or (8192 if str(device).startswith("cuda") else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    products = [lambda: a @ b]
    if onednn_available(torch.device(device), dtype):
        products.append(lambda w=Linear(b): w(a))
    best = 0.0
    for product in products:
        product()
        for _ in range(trials):
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                product()
            _sync(device)
            best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


def decode_flops_per_frame(gen: Generator) -> float:
    """Matmul FLOPs one frame needs: one backbone position and codebook-0 head, 32 depth-decoder positions and
    31 codebook heads. Attention score work is left out (small next to the projections at these lengths)."""
    cfg = gen.loaded.config
    dd = cfg.depth_decoder_config

    def per_position(c) -> int:
        h, k, d, w, f = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size, c.intermediate_size
        return c.num_hidden_layers * 2 * (w * (h + 2 * k) * d + h * d * w + 3 * w * f)

    backbone = per_position(cfg) + 2 * cfg.hidden_size * cfg.vocab_size
    decoder = 32 * per_position(dd) + 31 * 2 * dd.hidden_size * cfg.vocab_size + 2 * cfg.hidden_size * dd.hidden_size
    return float(backbone + decoder)


def peak_memory_mb(device) -> float:
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bench(gen: Generator, batch_size: int, frames: int = 50, hf_frames: int | None = None,
              rounds: int = ROUNDS, compare_portable: bool = True) -> BenchResult:
    hf_frames = hf_frames or min(frames, 20)
    portable = None
    if compare_portable and gen.model.backend.name != "portable":
        portable = Generator(gen.loaded, gen.device, gen.model.dtype, backend="portable")
    measures = {
        "eng_b1": lambda: engine_frames_per_s(gen, 1, frames),
        "eng_bn": lambda: engine_frames_per_s(gen, batch_size, frames),
        "hf_b1": lambda: hf_frames_per_s(gen, 1, hf_frames),
        "hf_bn": lambda: hf_frames_per_s(gen, batch_size, hf_frames),
        "peak": lambda: peak_flops_per_s(gen.device, gen.model.dtype),
    }
    if portable is not None:
        measures["portable_bn"] = lambda: engine_frames_per_s(portable, batch_size, frames)
    if batch_size == 1:
        del measures["eng_bn"], measures["hf_bn"]
    best = dict.fromkeys(measures, 0.0)
    for _ in range(rounds):  # interleaved, so each side gets the machine's quiet moments as often
        for key, measure in measures.items():
            best[key] = max(best[key], measure())
    eng_b1, hf_b1, peak = best["eng_b1"], best["hf_b1"], best["peak"]
    eng_bn, hf_bn = best.get("eng_bn", eng_b1), best.get("hf_bn", hf_b1)
    per_frame = decode_flops_per_frame(gen)
    checks, marking = gate_costs(gen, batch_size, frames)
    share = lambda cost: None if cost is None else cost * eng_bn * FRAME_S
    return BenchResult(
        model=gen.loaded.name, device=str(gen.device), dtype=str(gen.model.dtype).replace("torch.", ""),
        batch_size=batch_size, frames=frames, rounds=rounds, engine_frames_per_s=eng_bn, engine_b1_frames_per_s=eng_b1,
        hf_b1_frames_per_s=hf_b1, hf_bN_frames_per_s=hf_bn, speedup_vs_hf_b1=eng_bn / hf_b1,
        speedup_vs_hf_bN=eng_bn / hf_bn, turn_cost_ratio=turn_cost_ratio(gen),
        realtime_factor=eng_bn * FRAME_S, realtime_factor_b1=eng_b1 * FRAME_S, peak_flops_per_s=peak,
        decode_flops_per_frame=per_frame, compute_efficiency=eng_bn * per_frame / peak,
        peak_memory_mb=peak_memory_mb(gen.device), backend=gen.model.backend.name,
        portable_frames_per_s=best.get("portable_bn"),
        portable_compute_efficiency=best["portable_bn"] * per_frame / peak if portable else None,
        qc_checks_s_per_audio_s=checks, qc_checks_ratio=share(checks), watermark_s_per_audio_s=marking,
        watermark_ratio=share(marking),
    )


def gate_costs(gen: Generator, batch_size: int, frames: int) -> tuple[float, float | None]:
    """Seconds per second of audio of the quality checks and of the watermark (None when its weights cannot be
    had), each the best of ROUNDS, on a batch of the engine's own decoded turns."""
    from .errors import ModelLoadError
    from .quality.checks import check_turn

    convs = [ConversationRequest(f"g{i}", [TurnRequest(0, i % 2, PROMPT, max_audio_length_ms=frames * 80, seed=i)])
             for i in range(batch_size)]
    turns = [e for e in gen.render(convs, batch_size=batch_size) if isinstance(e, RenderedTurn)]
    audio_s = sum(len(t.audio) for t in turns) / gen.sample_rate
    checks = _best_seconds(lambda: [check_turn(t.audio, t.sample_rate, t.text, t.end_reason) for t in turns])
    try:
        marker = gen.watermarker
    except ModelLoadError:
        marker = None
    if marker is None or not audio_s:
        return checks / max(audio_s, FRAME_S), None
    clips = [t.audio for t in turns]
    marker.mark_batch(clips, gen.sample_rate)  # warm-up: first-call costs out of the figure
    marking = _best_seconds(lambda: (marker.mark_batch(clips, gen.sample_rate), _sync(gen.device)))
    return checks / audio_s, marking / audio_s


def _best_seconds(work, rounds: int = ROUNDS) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def fastest_batch_size(gen: Generator, frames: int, candidates=(8, 16, 32, 64)) -> int:
    """GPU: the slots that fit in free memory (engine/memory.py). CPU: the fastest of a short sweep."""
    if str(gen.device).startswith("cuda"):
        return gen.max_batch_size()
    rates = {b: engine_frames_per_s(gen, b, min(frames, 12)) for b in candidates}
    return max(rates, key=rates.get)
