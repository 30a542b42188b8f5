"""A CPU top-k in a few lines of C, compiled with the system C compiler on first use and called through ctypes.

Why: a draw takes the top 50 of 2051 logits per row, 32 times a frame. torch.topk on CPU runs a branchy select
over the whole row (~15 us per row on fresh data), which was a quarter of a decode step. This kernel bounds the
answer first: the k-th largest of the rows' group maxima (column j's group is j mod G) is a value with at least
k values >= it, so only the few values above it (~70 of 2051 for k = 50 and 2k groups) can be in the top-k;
those are kept in a sorted list of k. About 4 us per row, and ctypes releases the GIL while it runs (the row
split's threads and the scripted depth decoder call it concurrently).

No compiler, a failed build, or CSM_RENDER_NATIVE=0: `load()` returns None and callers use torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from .presets import cache_root

log = logging.getLogger(__name__)

SOURCE = r"""
#include <stdint.h>
#include <math.h>
#include <stdlib.h>

/* Put (v, i) into the descending list vals/idx holding *m <= k entries. Entries arrive in index order, and an
   equal value never moves ahead of an earlier one: ties keep the lower index first. */
static void push(float *vals, int64_t *idx, int64_t *m, int64_t k, float v, int64_t i) {
    int64_t p;
    if (*m == k) {
        if (!(v > vals[k - 1])) return;
        p = k - 1;
    } else {
        p = (*m)++;
    }
    while (p > 0 && vals[p - 1] < v) { vals[p] = vals[p - 1]; idx[p] = idx[p - 1]; p--; }
    vals[p] = v; idx[p] = i;
}

/* The k-th largest of a[0..n), 1 <= k <= n (Hoare's selection; reorders a). */
static float kth_largest(float *a, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) { float t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
        }
        if (want <= j) hi = j;        /* a[lo..j] >= pivot >= a[i..hi]; between them, the pivot's value */
        else if (want >= i) lo = i;
        else return a[want];
    }
    return a[want];
}

/* The k largest of each row of x [rows, n] (row r at x + r * stride), largest first, into values/indices
   [rows, k]. Needs k <= groups <= n; NaNs are skipped. Returns 0, or -1 when out of memory. */
int csm_topk(const float *x, int64_t rows, int64_t n, int64_t stride, int64_t k, int64_t groups,
             float *values, int64_t *indices) {
    float *gmax = malloc(sizeof(float) * groups);
    if (!gmax) return -1;
    int64_t per = n / groups;
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * stride;
        for (int64_t j = 0; j < groups; j++) gmax[j] = -INFINITY;
        for (int64_t s = 0; s < per; s++)
            for (int64_t j = 0; j < groups; j++) {
                float v = row[s * groups + j];
                gmax[j] = v > gmax[j] ? v : gmax[j];
            }
        /* k group maxima, from k distinct columns, are >= bound: nothing below it is in the top k. */
        float bound = kth_largest(gmax, groups, k);
        int64_t m = 0;
        for (int64_t j = 0; j < n; j++)
            if (row[j] >= bound) push(values + r * k, indices + r * k, &m, k, row[j], j);
    }
    free(gmax);
    return 0;
}
"""

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def load() -> ctypes.CDLL | None:
    """The compiled kernel, built once per source version into the cache folder; None when unavailable."""
    global _lib, _tried
    with _lock:
        if not _tried:
            _tried = True
            if os.environ.get("CSM_RENDER_NATIVE", "1") != "0":
                try:
                    _lib = _bind(ctypes.CDLL(str(_build())))
                except Exception as e:  # no compiler, a read-only cache, an exotic platform: torch's top-k
                    log.warning("native top-k unavailable (%s); using torch.topk", e)
        return _lib


def _build() -> Path:
    tag = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
    target = cache_root() / "native" / f"csm_topk_{tag}.so"
    if target.exists():
        return target
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler found")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "topk.c", Path(tmp) / "topk.so"
        src.write_text(SOURCE)
        subprocess.run([cc, "-O3", "-shared", "-fPIC", "-o", str(out), str(src)], check=True,
                       capture_output=True, timeout=120)
        os.replace(out, target)  # atomic: a concurrent build or a killed one never leaves half a file
    return target


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.csm_topk.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, ptr]
    lib.csm_topk.restype = ctypes.c_int
    return lib


def top_k(lib: ctypes.CDLL, x: torch.Tensor, k: int, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, V] float32 on CPU with unit stride along V; groups in [k, V]."""
    B, V = x.shape
    values = torch.empty(B, k, dtype=torch.float32)
    indices = torch.empty(B, k, dtype=torch.int64)
    if lib.csm_topk(x.data_ptr(), B, V, x.stride(0), k, groups, values.data_ptr(), indices.data_ptr()):
        raise MemoryError("native top-k: out of memory")
    return values, indices
