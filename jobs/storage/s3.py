"""The S3 backend of `Storage`: OUT = s3://bucket/prefix, keys live under `prefix/`.

Settings (credentials, region, endpoint, addressing style) come from the standard AWS configuration: environment,
profiles, `AWS_ENDPOINT_URL`; an explicit `endpoint_url` (the CLI's `--s3-endpoint-url`) overrides the endpoint.

Atomic by nature: an S3 object appears whole or not at all, multipart uploads included (the parts become visible
only at CompleteMultipartUpload), so no temp-and-rename dance is needed.

Two layers of retry: botocore retries each HTTP request (`max_attempts`, standard mode), and each whole operation
is retried here a few times more, with exponential backoff and full jitter, for what leaks through (connection
resets, timeouts, 5xx, SlowDown). When that budget is spent the operation raises StorageError naming the operation
and the object; messages never carry credentials, signatures or request headers.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import boto3
import botocore.exceptions as bex
from botocore.config import Config

from jobs.redact import redact
from jobs.storage import ObjectExists, Storage, StorageError, check_key

T = TypeVar("T")
MiB = 1024 * 1024
SHA256_META = "sha256"  # stored as x-amz-meta-sha256 on every object this backend writes
MAX_PARTS = 10_000  # S3's limit on parts per multipart upload
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "ConditionalRequestConflict"}


class S3Storage(Storage):
    """Objects under s3://bucket/prefix.

    `max_attempts` is botocore's per-request budget (sends, the first one included; standard retry mode);
    `operation_attempts` (with `backoff_base_s` and `backoff_cap_s`) the whole-operation one on top.
    `page_size` and `multipart_threshold` exist for tests.
    """

    def __init__(self, url: str, endpoint_url: str | None = None, max_attempts: int = 8, *,
                 operation_attempts: int = 5, backoff_base_s: float = 0.2, backoff_cap_s: float = 5.0,
                 connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 multipart_threshold: int = 8 * MiB, page_size: int = 1000):
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.endpoint_url = endpoint_url
        self.max_attempts = max_attempts
        self.operation_attempts = max(1, operation_attempts)
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.multipart_threshold = max(5 * MiB, multipart_threshold)  # S3's smallest part (but the last) is 5 MiB
        self.page_size = page_size
        self._client = None
        self._lock = threading.Lock()

    # -- the Storage interface ------------------------------------------------------------------------------------

    def write_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any previous object whole."""
        full, data = self._full(key), bytes(data)
        self._retry("write", self._where(key), lambda: self._put(full, data, create_only=False))

    def upload_file(self, key: str, path: str) -> None:
        """Store the local file `path` under `key`: one put below the multipart threshold, else a multipart upload
        read from the file a part at a time (only one part in memory), visible only once complete."""
        full, where = self._full(key), self._where(key)
        size = os.path.getsize(path)
        if size < self.multipart_threshold:
            self._retry("write", where, lambda: self._put(full, Path(path).read_bytes(), create_only=False))
            return
        meta = {SHA256_META: _file_sha256(path)}
        self._retry("write", where, lambda: self._put_multipart_file(full, path, size, meta))

    def _put_multipart_file(self, full: str, path: str, size: int, meta: dict) -> None:
        part_size = max(self.multipart_threshold, -(-size // MAX_PARTS))
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full, Metadata=meta)["UploadId"]
        try:
            parts = []
            with open(path, "rb") as f:
                for number, body in enumerate(iter(partial(f.read, part_size), b""), start=1):
                    etag = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                                   PartNumber=number, Body=body)["ETag"]
                    parts.append({"PartNumber": number, "ETag": etag})
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})
        except BaseException:
            try:  # best effort, as in _put_multipart
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except Exception:
                pass
            raise

    def write_new(self, key: str, data: bytes) -> bool:
        """Create `key` only if no object is there (a conditional put, `If-None-Match: *`).

        True: this call created it. False: an object with the same content (sha256) is already there, e.g. an
        earlier attempt of this very write whose response was lost and whose retry got 412 Precondition Failed.
        StorageError: an object with different content is there; nothing was changed.
        """
        full, data = self._full(key), bytes(data)
        where = self._where(key)

        def attempt() -> bool:
            try:
                self._put(full, data, create_only=True)
                return True
            except bex.ClientError as exc:
                if _code(exc) != "PreconditionFailed" and _status(exc) != 412:
                    raise
            same = self._same_content(full, data)
            if same is None:  # deleted between our put and our look: a transient race, try the put again
                raise _Vanished()
            if not same:
                raise ObjectExists(f"{where} already exists with different content; refusing to replace it "
                                   "(delete it, or write to a new OUT, to render it again)")
            return False

        return self._retry("create", where, attempt)

    def remove_leftovers(self, folders: Iterable[str]) -> int:
        """Abort multipart uploads a killed writer left unfinished in `folders` of the prefix: their parts are
        invisible but billed until aborted. (A single put appears whole or not at all, so nothing else is left;
        top-level objects are small, never multipart.) Other uploads are left alone, even with OUT at the
        bucket's root."""
        base = f"{self.prefix}/" if self.prefix else ""

        def attempt(folder: str) -> list[tuple[str, str]]:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                 Prefix=base + folder)
            return [(u["Key"], u["UploadId"]) for page in pages for u in page.get("Uploads", ())]

        uploads = [u for folder in folders for u in self._retry("list uploads", self.url, partial(attempt, folder))]
        for key, upload_id in uploads:
            self._retry("abort upload", f"s3://{self.bucket}/{key}", lambda: self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id))
        return len(uploads)

    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when absent."""
        return self._get(self._full(key), self._where(key))

    def download(self, key: str, path: str) -> None:
        """Stream the object to the local file `path` (boto3's managed transfer: ranged parts, never whole in
        memory), for objects too large for read_bytes such as model weights."""
        full = self._full(key)
        self._retry("download", self._where(key),
                    lambda: self.client.download_file(Bucket=self.bucket, Key=full, Filename=path))

    def exists(self, key: str) -> bool:
        full = self._full(key)
        return self._retry("exists check", self._where(key), lambda: self._head(full) is not None)

    def iter_list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix` (a plain string prefix), a page at a time, each page retried on its own (a
        listing of millions of keys is never held whole, and a failure on page 3,000 does not start it over).
        Objects whose names are not valid keys (a console's "folder/" marker, "a//b") are skipped: only what a
        Storage could have written counts."""
        folder = prefix.rpartition("/")[0]
        if folder:
            check_key(folder)
        base = f"{self.prefix}/" if self.prefix else ""
        token: str | None = None
        while True:
            args = {"Bucket": self.bucket, "Prefix": base + prefix, "MaxKeys": self.page_size}
            if token:
                args["ContinuationToken"] = token
            page = self._retry("list", f"{self.url}/{prefix}", partial(self.client.list_objects_v2, **args))
            for obj in page.get("Contents", ()):
                rel = obj["Key"][len(base):]
                if obj["Key"].startswith(base) and _is_key(rel):
                    yield rel
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine (S3 answers 204 either way)."""
        full = self._full(key)
        self._retry("delete", self._where(key), lambda: self.client.delete_object(Bucket=self.bucket, Key=full))

    # -- the client ----------------------------------------------------------------------------------------------

    @property
    def client(self):
        """The boto3 S3 client, made on first use (thread-safe; clients are, sessions are not shared)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    # total_max_attempts counts the first try, as AWS_MAX_ATTEMPTS does ("max_attempts" in
                    # this dict would count retries only, one more request than asked for).
                    config = Config(retries={"mode": "standard", "total_max_attempts": self.max_attempts},
                                    connect_timeout=self.connect_timeout, read_timeout=self.read_timeout)
                    # endpoint_url=None lets botocore use AWS_ENDPOINT_URL(_S3) or the profile's endpoint_url
                    self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url,
                                                                  config=config)
        return self._client

    def __getstate__(self) -> dict:
        # Picklable (e.g. sent to Ray actors): the client and lock are rebuilt on the other side.
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _client=None, _lock=threading.Lock())

    # -- single attempts -----------------------------------------------------------------------------------------

    def _put(self, full: str, data: bytes, create_only: bool) -> None:
        cond = {"IfNoneMatch": "*"} if create_only else {}
        meta = {SHA256_META: hashlib.sha256(data).hexdigest()}
        if len(data) < self.multipart_threshold:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data, Metadata=meta, **cond)
        else:
            self._put_multipart(full, data, meta, cond)

    def _put_multipart(self, full: str, data: bytes, meta: dict, cond: dict) -> None:
        # Our own multipart rather than boto3's upload_fileobj: s3transfer does not pass IfNoneMatch on to
        # CompleteMultipartUpload. Parts go up one after another; outputs here are rarely over a few MiB.
        part_size = max(self.multipart_threshold, -(-len(data) // MAX_PARTS))
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full, Metadata=meta)["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, len(data), part_size), start=1):
                body = data[start:start + part_size]
                etag = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                               PartNumber=number, Body=body)["ETag"]
                parts.append({"PartNumber": number, "ETag": etag})
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts}, **cond)
        except BaseException:
            try:  # best effort: an abandoned upload's parts are billed until aborted (or a lifecycle rule runs)
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except Exception:
                pass
            raise

    def _get(self, full: str, where: str) -> bytes:
        def attempt() -> bytes:
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=full)
            except bex.ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404") or _status(exc) == 404:
                    raise FileNotFoundError(f"no object at {where}") from None
                raise
            with resp["Body"] as body:
                return body.read()  # a reset mid-body (ResponseStreamingError) retries the whole get

        return self._retry("read", where, attempt)

    def _head(self, full: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=full)
        except bex.ClientError as exc:
            if _status(exc) == 404 or _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def _same_content(self, full: str, data: bytes) -> bool | None:
        """Whether the object at `full` holds `data`; None when it is gone."""
        head = self._head(full)
        if head is None:
            return None
        stored = head.get("Metadata", {}).get(SHA256_META)
        if stored:
            return stored == hashlib.sha256(data).hexdigest()
        etag = head.get("ETag", "").strip('"')
        if etag == hashlib.md5(data).hexdigest():  # a single-part upload's ETag is its MD5 (SSE-KMS aside)
            return True
        # Written by something else, multipart or encrypted: only the bytes can tell.
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=full)
        except bex.ClientError as exc:
            if _status(exc) == 404 or _code(exc) == "NoSuchKey":
                return None
            raise
        with resp["Body"] as body:
            return body.read() == data

    # -- retries and messages ------------------------------------------------------------------------------------

    def _retry(self, op: str, where: str, attempt: Callable[[], T]) -> T:
        """Run `attempt` until it succeeds, fails for good, or `operation_attempts` transient failures."""
        last: BaseException | None = None
        for number in range(self.operation_attempts):
            if number:
                # Full jitter: a uniform wait in [0, min(cap, base * 2^n)] keeps many workers from retrying in step.
                time.sleep(random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** (number - 1))))
            try:
                return attempt()
            except Exception as exc:
                if not _transient(exc):
                    if isinstance(exc, (bex.ClientError, bex.BotoCoreError)):
                        raise StorageError(f"S3 {op} of {where} failed: {describe_error(exc)}") from None
                    raise
                last = exc
        raise StorageError(f"S3 {op} of {where} failed after {self.operation_attempts} attempts: "
                           f"{describe_error(last)}") from None

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str) -> str:
        return f"{self.url}/{key}"


def read_uri_bytes(uri: str, endpoint_url: str | None = None) -> bytes:
    """The bytes of one object named `s3://bucket/key` (manifests, given audio); FileNotFoundError when absent.

    The key is taken as it is (any name S3 allows), not checked as an output key."""
    bucket, key = parse_s3_url(uri, check=False)
    if not key:
        raise ValueError(f"S3 URI {uri!r} names a bucket but no object: use s3://bucket/path/to/object")
    return S3Storage(f"s3://{bucket}", endpoint_url=endpoint_url)._get(key, uri)


def parse_s3_url(url: str, check: bool = True) -> tuple[str, str]:
    """'s3://bucket/some/prefix/' -> ('bucket', 'some/prefix'); ValueError naming the URL when malformed."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"S3 location {url!r} must look like s3://bucket or s3://bucket/prefix")
    if parsed.query or parsed.fragment or "@" in parsed.netloc or ":" in parsed.netloc:
        raise ValueError(f"S3 location {url!r} must be a plain s3://bucket/prefix (no port, user, '?' or '#')")
    prefix = parsed.path.strip("/") if check else parsed.path[1:]
    if check and prefix:
        try:
            check_key(prefix)
        except ValueError as exc:
            raise ValueError(f"S3 location {url!r}: the prefix is not usable: {exc}") from None
    return parsed.netloc, prefix


def describe_error(exc: BaseException | None) -> str:
    """What went wrong, safe to log: error code, HTTP status and S3's message, or the exception's kind with any
    URL query strings and user info removed. Never request headers, signatures or credentials."""
    if isinstance(exc, bex.ClientError):
        msg = exc.response.get("Error", {}).get("Message", "")
        return f"{_code(exc) or 'error'} (HTTP {_status(exc)})" + (f": {redact(msg)}" if msg else "")
    if isinstance(exc, bex.NoCredentialsError):
        return "no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
    if isinstance(exc, _Vanished):
        return "the object kept disappearing between a refused create and the content check"
    return f"{type(exc).__name__}: {redact(str(exc))}"


class _Vanished(Exception):
    """A create-only put was refused, then the object was gone when we looked: retried as transient."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, bex.SSLError):  # a certificate problem does not heal by waiting
        return False
    if isinstance(exc, (bex.ConnectionError, bex.HTTPClientError, _Vanished)):
        return True  # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError, ...
    if isinstance(exc, bex.ClientError):
        return _status(exc) >= 500 or _code(exc) in _TRANSIENT_CODES
    return False


def _code(exc: bex.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: bex.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(partial(f.read, MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_key(name: str) -> bool:
    try:
        check_key(name)
    except ValueError:
        return False
    return True
