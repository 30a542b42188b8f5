"""Tests of csm_worker/backends/cpu: the CPU backend's kernels."""
