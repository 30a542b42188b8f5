"""Tests of csm_worker/watermark: silentcipher's networks, message format and weights, in this project's code."""
