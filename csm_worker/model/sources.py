"""Telling what a weights source names: a hub id, an s3:// prefix or a local folder (for --model, --qc-asr and
--watermark-weights alike), so that every option reads a string the same way."""

from __future__ import annotations

from pathlib import Path


def looks_like_path(source: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else the user meant as a folder (and the hub would refuse)."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def meant_as_folder(source: str) -> bool:
    """Whether `source` is to be checked as a local folder (before any work, on the driver): one that exists, or a
    path that names none. Hub ids and s3:// prefixes are the workers' to fetch."""
    if source.startswith("s3://"):
        return False
    return Path(source).expanduser().is_dir() or looks_like_path(source)
