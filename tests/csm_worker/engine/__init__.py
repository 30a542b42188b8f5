"""Tests of csm_worker/engine: the batched renderer, its parity with transformers on each backend and device."""
