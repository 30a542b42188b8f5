"""Tests of csm_worker/backends: backend choice and the fixed-weight product."""
