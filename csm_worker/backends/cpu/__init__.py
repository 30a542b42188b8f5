"""The CPU backend: the speedups that only pay (or only exist) on a CPU.

- products through oneDNN with prepacked weights (backends/linear.py: MKL takes its AVX2 path on AMD CPUs);
- step functions scripted with TorchScript, so their ops run without the GIL while row_split.py runs several
  blocks of rows at once;
- the C top-k from group maxima (native_topk.py, topk.py);
- decode steps split by rows over worker threads (row_split.py), one per intra-op thread.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Callable

import torch

from ..linear import Linear

log = logging.getLogger(__name__)


class CpuBackend:
    name = "cpu"
    native_topk = True  # torch.ops.csm_render.top_k (topk.py): the C kernel, else the grouped torch version

    def linear(self, weight: torch.Tensor) -> Linear:
        return Linear(weight)  # oneDNN-packed when torch has oneDNN for this dtype

    def compile(self, fn: Callable) -> Callable:
        return script(fn)

    def decode_workers(self) -> int:
        return torch.get_num_threads()


@functools.cache
def script(fn: Callable) -> Callable:
    """fn scripted with TorchScript (once per process); the plain function when scripting fails."""
    try:
        with warnings.catch_warnings():
            # torch.jit.script is deprecated in favour of torch.compile, which on CPU took 38 s to compile the
            # depth decoder's loop and ran it 2x slower than eager; the fallback below covers its removal.
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(fn)
    except Exception as e:  # a torch without TorchScript: the same code, eagerly
        log.warning("TorchScript unavailable for %s (%s); running it eagerly", fn.__name__, e)
        return fn
