"""A CPU top-k in a few lines of C, compiled with the system C compiler on first use and called through ctypes.

Why: a draw takes the top 50 of 2051 logits per row, 32 times a frame. torch.topk on CPU runs a branchy select
over the whole row (~15 us per row on fresh data), which was a quarter of a decode step. This kernel bounds the
answer first: the k-th largest of the rows' group maxima (column j's group is j mod G) is a value with at least
k values >= it, so only the few values above it (~70 of 2051 for k = 50 and 2k groups) can be in the top-k.
Both the bound and the survivors' order come from counting comparisons rather than from a selection or an
insertion sort: on fresh rows every data-dependent branch of those mispredicts, and the counting loops vectorize.
About 2.9 us per row on engine logits (4.4 with the earlier selection + insertion kernel, same run), and ctypes
releases the GIL while it runs (the row split's threads and the scripted depth decoder call it concurrently).

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

from ...cache import cache_root

log = logging.getLogger(__name__)

SOURCE = r"""
#include <stdint.h>
#include <math.h>
#include <stdlib.h>

/* Each hot loop below is built for AVX-512, AVX2 and plain x86-64, and the loader picks the best the CPU has
   (GCC's target_clones), so one cached build serves every CPU a shared cache folder sees. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

/* Survivors beyond this many are ordered by insertion instead of by counting (O(m^2)): only heavily tied rows. */
#define COUNT_LIMIT 512

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

/* gmax[j] = the max of column j's group (columns j, j + groups, ...) over the first per * groups columns. */
CLONES static void group_maxima(const float *row, int64_t per, int64_t groups, float *gmax) {
    for (int64_t j = 0; j < groups; j++) gmax[j] = -INFINITY;
    for (int64_t s = 0; s < per; s++)
        for (int64_t j = 0; j < groups; j++) {
            float v = row[s * groups + j];
            gmax[j] = v > gmax[j] ? v : gmax[j];
        }
}

/* The k-th largest of a[0..n), 1 <= k <= n: the largest a[i] with at least k values >= it.
   Counting, not selection: no data-dependent branches (a selection mispredicts on every fresh row), and the
   inner loop runs over i, so it vectorizes without a horizontal sum. */
CLONES static float kth_largest(const float *a, int64_t n, int64_t k, int32_t *cnt) {
    for (int i = 0; i < (int)n; i++) cnt[i] = 0;
    for (int j = 0; j < (int)n; j++) {
        float v = a[j];
        for (int i = 0; i < (int)n; i++) cnt[i] += v >= a[i];
    }
    float best = -INFINITY;
    for (int i = 0; i < (int)n; i++) best = cnt[i] >= k && a[i] > best ? a[i] : best;
    return best;
}

/* The values >= bound of row[0..n) with their columns, in column order; returns how many. */
CLONES static int64_t survivors(const float *row, int64_t n, float bound, float *sv, int64_t *si) {
    int64_t m = 0;
    for (int64_t j = 0; j < n; j++) {
        sv[m] = row[j]; si[m] = j;
        m += row[j] >= bound;  /* branch-free: whether a column survives is a coin toss to the predictor */
    }
    return m;
}

/* Each survivor's rank: how many come before it in (value descending, column ascending) order. */
CLONES static void place(const float *sv, const int64_t *si, int64_t m, int64_t k, float *vals, int64_t *idx,
                         int32_t *rank) {
    for (int i = 0; i < (int)m; i++) rank[i] = 0;
    for (int j = 0; j < (int)m; j++) {
        float v = sv[j];
        for (int i = 0; i < (int)m; i++) rank[i] += (v > sv[i]) | ((v == sv[i]) & (j < i));  /* earlier wins ties */
    }
    for (int i = 0; i < (int)m; i++)
        if (rank[i] < k) { vals[rank[i]] = sv[i]; idx[rank[i]] = si[i]; }
}

/* The k largest of each row of x [rows, n] (row r at x + r * stride), largest first, ties by lower index, into
   values/indices [rows, k]. Needs k <= groups <= n; NaNs are skipped (a row with fewer than k other values is
   padded with -inf at index 0). Returns 0, or -1 when out of memory. */
int csm_topk(const float *x, int64_t rows, int64_t n, int64_t stride, int64_t k, int64_t groups,
             float *values, int64_t *indices) {
    float *gmax = malloc(sizeof(float) * groups), *sv = malloc(sizeof(float) * n);
    int64_t *si = malloc(sizeof(int64_t) * n);
    int32_t *cnt = malloc(sizeof(int32_t) * (n > groups ? n : groups));
    if (!gmax || !sv || !si || !cnt) { free(gmax); free(sv); free(si); free(cnt); return -1; }
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * stride;
        float *vals = values + r * k;
        int64_t *idx = indices + r * k;
        group_maxima(row, n / groups, groups, gmax);
        /* k group maxima, from k distinct columns, are >= bound: nothing below it is in the top k. */
        int64_t m = survivors(row, n, kth_largest(gmax, groups, k, cnt), sv, si);
        for (int64_t j = m < k ? m : k; j < k; j++) { vals[j] = -INFINITY; idx[j] = 0; }
        if (m <= COUNT_LIMIT) {
            place(sv, si, m, k, vals, idx, cnt);
        } else {
            int64_t filled = 0;
            for (int64_t j = 0; j < m; j++) push(vals, idx, &filled, k, sv[j], si[j]);
        }
    }
    free(gmax); free(sv); free(si); free(cnt);
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
