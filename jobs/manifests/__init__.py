"""Manifests: reading Parquet manifests of dialogue turns and validating them (file, row and column in every problem)."""
