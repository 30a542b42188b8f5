"""Tests of csm_worker/model: the lean model's pieces and loading a checkpoint."""
