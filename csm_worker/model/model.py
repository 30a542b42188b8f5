"""CSM-1B's two transformers and heads as one lean model: prefill, one backbone decode step, one frame sample.

A position is a text token or an audio frame (32 codes, embeddings summed). Per frame: the backbone's last hidden
state gives codebook 0; the depth decoder then runs 31 sequential steps over its own 33-position cache for
codebooks 1..31. Parity with transformers' `CsmForConditionalGeneration.generate` is tested.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends
from . import depth
from .sampling import SamplingParams, sample
from .transformer import Transformer

NUM_CODEBOOKS = 32


class CsmModel:
    def __init__(self, hf, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 backend: str | None = None):
        """`backend`: cpu, portable or auto (see backends/); None reads $CSM_RENDER_BACKEND, else auto."""
        cfg = hf.config
        self.device, self.dtype = torch.device(device), dtype
        self.backend = backends.resolve(self.device, backend)
        self.window = cfg.max_position_embeddings
        self.vocab = cfg.vocab_size
        self.num_codebooks = cfg.num_codebooks
        self.eos_code = cfg.codebook_eos_token_id
        bb, dd = hf.backbone_model, hf.depth_decoder
        self.backbone = Transformer(bb.layers, bb.norm, bb.rotary_emb, cfg, self.window, device, dtype, self.backend)
        self.decoder = Transformer(dd.model.layers, dd.model.norm, dd.model.rotary_emb, cfg.depth_decoder_config,
                                   self.num_codebooks + 1, device, dtype, self.backend)
        w = lambda t: t.detach().to(device, dtype).contiguous()
        self.text_embed = w(hf.embed_text_tokens.weight)  # [text_vocab, dim]
        self.audio_embed = w(bb.embed_tokens.embed_audio_tokens.weight)  # [32 * vocab, dim]
        self.dim = cfg.hidden_size
        linear = self.backend.linear
        self.c0_head = linear(w(hf.lm_head.weight))  # [vocab, dim]
        self.dd_proj = linear(w(dd.model.inputs_embeds_projector.weight))  # [dd_dim, dim]
        with torch.no_grad():
            # The depth decoder embeds a code then projects it; one table does both at once.
            self.dd_in = w(F.linear(dd.model.embed_tokens.weight.detach().float(),
                                    dd.model.inputs_embeds_projector.weight.detach().float()))  # [32*vocab, dd_dim]
        # Codebook i's head as a [vocab, dd_dim] product, one per codebook 1..31.
        self.dd_heads = [linear(w(head.t())) for head in dd.codebooks_head.weight.detach()]
        self.offsets = torch.arange(self.num_codebooks, device=device) * self.vocab
        self.depth_weights = self._depth_weights()
        self.codebooks = self.backend.compile(depth.codebooks)

    def _depth_weights(self) -> depth.DepthWeights:
        heads = [h.operand for h in self.dd_heads]
        return depth.DepthWeights(stack=self.decoder.weights, dd_in=self.dd_in, heads=heads, vocab=self.vocab,
                                  native_topk=self.backend.native_topk)

    # -- caches -----------------------------------------------------------------------------------------------
    def new_caches(self, rows: int) -> dict:
        return {
            "backbone": self.backbone.new_cache(rows, self.window, self.device, self.dtype),
            "decoder": self.decoder.new_cache(rows, self.num_codebooks + 1, self.device, self.dtype),
        }

    def cache_bytes_per_row(self) -> int:
        elem = torch.finfo(self.dtype).bits // 8
        per = lambda t, length: 2 * len(t.layers) * t.kv_heads * length * t.head_dim * elem
        return per(self.backbone, self.window) + per(self.decoder, self.num_codebooks + 1)

    # -- embeddings -------------------------------------------------------------------------------------------
    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.text_embed)  # [n] -> [n, dim]

    def embed_frames(self, codes: torch.Tensor) -> torch.Tensor:
        # [n, 32] codes -> [n, dim]: each codebook has its own slice of one table; a frame is their sum.
        # F.embedding copies whole rows (6x faster than tensor indexing here; the same values).
        return F.embedding(codes + self.offsets, self.audio_embed).sum(dim=-2)

    # -- backbone ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, caches: dict, first_row: int, embeds: list[torch.Tensor], starts: list[int]) -> torch.Tensor:
        """Prefill consecutive cache rows first_row.. together: row b takes `embeds[b]` [S_b, dim] at positions
        starts[b]..starts[b]+S_b-1. Shorter rows are right-padded; their padding writes cache positions past the
        row's end, which are rewritten before anything attends to them. Returns each row's last hidden [B, dim]."""
        B, S = len(embeds), max(e.shape[0] for e in embeds)
        x = torch.zeros(B, S, embeds[0].shape[1], device=self.device, dtype=self.dtype)
        for b, e in enumerate(embeds):
            x[b, : e.shape[0]] = e
        start = torch.tensor(starts, device=self.device)
        pos = start[:, None] + torch.arange(S, device=self.device)[None]  # [B, S]
        t_len = max(st + e.shape[0] for st, e in zip(starts, embeds))
        mask = None
        if B > 1 or starts[0] > 0:  # new positions also see the row's earlier context, and no padding
            mask = (torch.arange(t_len, device=self.device)[None, None, :] <= pos[:, :, None])[:, None]
        h = self.backbone.forward(x, pos, caches["backbone"], slice(first_row, first_row + B), pos, mask, t_len)
        last = torch.tensor([e.shape[0] - 1 for e in embeds], device=self.device)
        return h[torch.arange(B, device=self.device), last]

    @torch.no_grad()
    def decode(self, caches: dict, rows: slice, frames: torch.Tensor, pos: torch.Tensor, t_len: int,
               exact_len: bool = True) -> torch.Tensor:
        """Feed one frame per row (frames [B, 32] at positions pos [B]); returns hidden states [B, dim].
        `t_len` is max(pos) + 1 (exact_len), passed in so no device sync is needed to size the attention, or
        any larger length (a static step's bucket), whose positions past each row's own are masked out."""
        x = self.embed_frames(frames)[:, None]
        # One row that sees its whole cache prefix needs no mask: attention takes SDPA's fast unmasked path.
        mask = None if frames.shape[0] == 1 and exact_len else \
            (torch.arange(t_len, device=self.device)[None, :] <= pos[:, None])[:, None, None]
        return self.backbone.forward(x, pos[:, None], caches["backbone"], rows, pos[:, None], mask, t_len)[:, 0]

    # -- one frame --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_frame(self, caches: dict, rows: slice, h: torch.Tensor, params: SamplingParams,
                     frame_index: torch.Tensor) -> torch.Tensor:
        """h [B, dim] backbone hidden states -> codes [B, 32]. frame_index [B] numbers the frame within each
        row's turn, so sampling noise depends only on (seed, frame, codebook)."""
        B = h.shape[0]
        noise = params.frame_noise(frame_index, self.num_codebooks)  # one batch of hashing per frame
        c = sample(self.c0_head(h), params, None if noise is None else noise[:, 0], self.backend.native_topk)
        # Depth decoder: position 0 is the projected backbone state, position i >= 1 holds codebook i-1's code.
        x = torch.stack([self.dd_proj(h), F.embedding(c, self.dd_in)], dim=1)  # [B, 2, dd_dim]
        pos = torch.arange(2, device=self.device)[None].expand(B, 2)
        out = self.decoder.forward(x, pos, caches["decoder"], rows, pos, None, 2)[:, -1]
        k = min(params.max_top_k, self.vocab)
        rest = self.codebooks(out, c, noise, params.temperature, params.top_k, k, params.same_top_k,
                              *caches["decoder"], rows.start, rows.stop, self.depth_weights)  # [B, 31]
        return torch.cat([c[:, None], rest], dim=1)
