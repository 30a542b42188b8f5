"""Tests of csm_worker/quality: the per-turn checks."""
