"""Storage: OUT (a local folder or s3://) and what a job keeps there: outputs, commit records, the job record, the lease.

The key -> bytes interface itself lives in base.py; its public names are re-exported here, so `from jobs.storage
import open_storage` reads as the stage it belongs to."""

from jobs.storage.base import TMP_PREFIX, LocalStorage, ObjectExists, Storage, StorageError, check_key, open_storage

__all__ = ["TMP_PREFIX", "LocalStorage", "ObjectExists", "Storage", "StorageError", "check_key", "open_storage"]
