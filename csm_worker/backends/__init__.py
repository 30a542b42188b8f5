"""Backends: where the CPU-only speedups live, apart from the plain PyTorch path that CUDA runs.

A backend decides four things for the lean model: how a fixed-weight product runs (`linear`), whether a
step function is compiled (`compile`), which top-k the sampler calls (`native_topk`) and over how many threads a
decode step is split by rows (`decode_workers`). Everything else (the model, the engine, sampling) is the same
code on every backend, which is why CPU tests of the portable backend cover what a GPU runs. linear.py, the
fixed-weight product both build, sits here: its oneDNN branch is the cpu backend's, its F.linear one the portable's.

- `cpu` (cpu/, with its kernels: row_split.py, native_topk.py, topk.py): oneDNN prepacked products,
  TorchScript, the C top-k, row-split threads. CPU only.
- `portable` (portable.py): plain PyTorch ops only (F.linear, torch.topk, eager functions, one thread of
  control). What CUDA runs; forcible on CPU to test it.

The choice: the `backend=` argument, else the CSM_RENDER_BACKEND environment variable (Ray workers inherit it),
else `auto` (cpu on CPU, portable elsewhere).
"""

from __future__ import annotations

import os

import torch

from ..errors import ModelLoadError
from .cpu import CpuBackend
from .portable import PortableBackend

ENV = "CSM_RENDER_BACKEND"
BACKENDS = {"cpu": CpuBackend, "portable": PortableBackend}
CHOICES = ("auto", *BACKENDS)

Backend = CpuBackend | PortableBackend


class BackendError(ModelLoadError):
    """An unknown backend, or one the device cannot run; the message says what to choose."""


def resolve(device: str | torch.device, name: str | None = None) -> Backend:
    """The backend for `device`: `name`, else $CSM_RENDER_BACKEND, else auto."""
    device = torch.device(device)
    name = (name or os.environ.get(ENV) or "auto").strip().lower()
    if name == "auto":
        name = "cpu" if device.type == "cpu" else "portable"
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (from the backend argument or ${ENV}): "
                           f"choose one of {', '.join(CHOICES)}")
    if name == "cpu" and device.type != "cpu":
        raise BackendError(f"the cpu backend runs only on the CPU, not on {device.type}: choose portable or auto")
    return BACKENDS[name]()
