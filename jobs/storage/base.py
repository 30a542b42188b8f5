"""Where a job's outputs live: a small key -> bytes interface with a local-folder backend.

Keys are relative, "/"-separated paths ("audio/conv-1/0003.wav"), the same shape an S3 backend will use, so the
rest of the job system never builds filesystem paths itself. Writes are atomic: a reader (or a resumed run) sees
either the whole previous object, the whole new one, or nothing, never a torn file.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

TMP_PREFIX = ".tmp-"  # reserved: in-flight writes; never listed, never a valid key segment
_DRIVE_OR_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:$")  # "s3:", "C:" as a first segment


class StorageError(Exception):
    """A storage operation that would leave the output root, or a root that cannot be used."""


class ObjectExists(StorageError):
    """write_new found an object with different content under the key; nothing was changed."""


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative key, else raise ValueError naming it."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"storage key {key!r} must be a non-empty string")
    reason = _key_problem(key)
    if reason:
        raise ValueError(f"invalid storage key {key!r}: {reason}")
    return key


def _key_problem(key: str) -> str | None:
    if "\x00" in key:
        return "contains a NUL character"
    if "\\" in key:
        return "contains a backslash; use '/' to separate folders"
    if key.startswith("/"):
        return "is absolute; keys are relative to the output root"
    if "://" in key or _DRIVE_OR_SCHEME.match(key.split("/", 1)[0]):
        return "looks like a URL or drive; keys are relative to the output root"
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            return f"has an empty, '.' or '..' segment ({segment!r})"
        if segment.startswith(TMP_PREFIX):
            return f"segment {segment!r} uses the reserved prefix {TMP_PREFIX!r}"
    return None


class Storage(ABC):
    """Key-based object storage. `url` names the root in messages."""

    url: str

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key` atomically, replacing any previous object whole."""

    @abstractmethod
    def write_new(self, key: str, data: bytes) -> bool:
        """Create `key` only if nothing is there, atomically. True: this call created it. False: an object with
        the same content is there already (a retried write). StorageError: different content is there; nothing
        was changed. Commit records use it, so a committed turn is never replaced."""

    def upload_file(self, key: str, path: str) -> None:
        """Store the local file `path` under `key` atomically, replacing any previous object whole, without
        holding it in memory (export shards of hundreds of MB). Backends stream it; this fallback does not."""
        self.write_bytes(key, Path(path).read_bytes())

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with `prefix` (a plain string prefix, as in S3)."""
        return sorted(self.iter_list(prefix))

    @abstractmethod
    def iter_list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix`, in no set order, as they are listed (list() sorts them): for listings too
        large to hold (every commit record of a job of millions of turns)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine."""

    def local_path(self, key: str) -> str | None:
        """A filesystem path for `key` when the backend is local, else None."""
        return None

    def remove_leftovers(self, folders: Iterable[str]) -> int:
        """Delete what killed writers left behind (temporary files, unfinished uploads) at the top level and
        under `folders` ("audio/", ...) only, never elsewhere (an OUT at a bucket's root or a shared folder holds
        other things); returns how many. Only one run writes to an OUT at a time, so anything unfinished at the
        start of a run is abandoned."""
        return 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class LocalStorage(Storage):
    """Objects are files under `root`; the root is created on the first write."""

    def __init__(self, root: str | os.PathLike):
        self._root = Path(root).expanduser().resolve()
        self.url = str(self._root)

    def remove_leftovers(self, folders: Iterable[str]) -> int:
        removed, keep = 0, {f.strip("/") for f in folders}
        for folder, subfolders, names in os.walk(self._root):
            if folder == str(self._root):
                subfolders[:] = [d for d in subfolders if d in keep]
            for name in names:
                if name.startswith(TMP_PREFIX):
                    Path(folder, name).unlink(missing_ok=True)
                    removed += 1
        return removed

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = _write_temp(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)  # persist the rename itself

    def upload_file(self, key: str, path: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f"{TMP_PREFIX}{dest.name}-{secrets.token_hex(6)}"
        try:
            with open(path, "rb") as src, open(tmp, "xb") as f:
                shutil.copyfileobj(src, f, 1 << 20)  # a MiB at a time: never whole in memory
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(dest.parent)

    def write_new(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = _write_temp(path, data)
        try:
            os.link(tmp, path)  # a hard link is created whole or not at all, and never over an existing file
        except FileExistsError:
            if path.read_bytes() == bytes(data):
                return False
            raise ObjectExists(f"{path} already exists with different content; refusing to replace it (delete "
                               "it, or write to a new OUT, to render it again)") from None
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return True

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def iter_list(self, prefix: str = "") -> Iterator[str]:
        # Walk only the folder the prefix names, then filter by string prefix (S3 semantics: "a/b" matches "a/bc").
        folder = prefix.rpartition("/")[0]
        if folder:
            check_key(folder)
        start = self._path(folder) if folder else self._root
        return (k for k in _walk_files(start, folder) if k.startswith(prefix))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> str:
        return str(self._path(key))

    def _path(self, key: str) -> Path:
        """The file for `key`, verified to stay under the root even through symlinks."""
        path = self._root / check_key(key)
        resolved = path.resolve()
        if resolved == self._root or not resolved.is_relative_to(self._root):
            raise StorageError(f"key {key!r} resolves to {resolved}, outside the output root {self.url}")
        return path


def _walk_files(folder: Path, key_prefix: str) -> list[str]:
    """Keys of regular files under `folder` (symlinks and temp files skipped: only what we wrote counts)."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    keys = []
    for entry in entries:
        key = f"{key_prefix}/{entry.name}" if key_prefix else entry.name
        if entry.name.startswith(TMP_PREFIX) or entry.is_symlink():
            continue
        if entry.is_dir():
            keys.extend(_walk_files(Path(entry.path), key))
        elif entry.is_file():
            keys.append(key)
    return keys


def _write_temp(path: Path, data: bytes) -> Path:
    """`data` in a new, fsynced temporary file beside `path` (same folder, so renames and links are atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{secrets.token_hex(6)}"
    try:
        # O_EXCL: never clobber another writer's temp file; mode 0o666 lets the umask decide, as open() would.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename or link makes it visible
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _fsync_dir(folder: Path) -> None:
    """Best effort: some filesystems (and all of Windows) cannot open or fsync a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_storage(out: str | os.PathLike, s3_endpoint_url: str | None = None) -> Storage:
    """Storage for a job's OUT: a local folder path, a file:// URL, or s3://bucket/prefix.

    S3 settings come from the standard AWS configuration (environment, profiles, AWS_ENDPOINT_URL);
    `s3_endpoint_url` (the CLI's --s3-endpoint-url) overrides the endpoint. Local paths ignore it.
    """
    out = os.fspath(out)
    if not out:
        raise ValueError("output location is empty: give a folder path or an s3://bucket/prefix URL")
    if out.startswith("s3://"):
        from jobs.storage.s3 import S3Storage  # imported here so boto3 loads only when S3 is used

        return S3Storage(out, endpoint_url=s3_endpoint_url)
    if out.startswith("file://"):
        return LocalStorage(_file_url_path(out))
    if "://" in out:
        raise ValueError(f"unsupported output location {out!r}: use a folder path, file:// or s3://")
    return LocalStorage(out)


def _file_url_path(url: str) -> str:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"file URL {url!r} names host {parsed.netloc!r}: only local file:///path URLs work")
    return url2pathname(parsed.path)  # also undoes %-escapes
