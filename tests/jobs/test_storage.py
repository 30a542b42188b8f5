import os
from pathlib import Path

import pytest

from jobs.storage import base as storage_mod
from jobs.storage import LocalStorage, Storage, StorageError, check_key, open_storage


@pytest.fixture
def store(tmp_path):
    return LocalStorage(tmp_path / "out")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_write_read_exists_list_delete(store, tmp_path):
    assert not (tmp_path / "out").exists()  # root created lazily
    assert store.list() == []

    store.write_bytes("audio/c1/0001.wav", b"one")
    store.write_bytes("audio/c1/0000.wav", b"zero")
    store.write_bytes("audio/c10/0000.wav", b"ten")
    store.write_bytes("job.json", b"{}")

    assert store.read_bytes("audio/c1/0001.wav") == b"one"
    assert store.exists("job.json") and not store.exists("nope.json")
    assert not store.exists("audio")  # a folder is not an object
    assert store.list() == ["audio/c1/0000.wav", "audio/c1/0001.wav", "audio/c10/0000.wav", "job.json"]
    assert store.list("audio/c1/") == ["audio/c1/0000.wav", "audio/c1/0001.wav"]
    assert store.list("audio/c1") == ["audio/c1/0000.wav", "audio/c1/0001.wav", "audio/c10/0000.wav"]
    assert store.list("missing/") == []
    assert store.local_path("job.json") == str(tmp_path / "out" / "job.json")

    store.delete("audio/c1/0001.wav")
    store.delete("audio/c1/0001.wav")  # missing is fine
    assert not store.exists("audio/c1/0001.wav")
    with pytest.raises(FileNotFoundError):
        store.read_bytes("audio/c1/0001.wav")


def test_overwrite_replaces_whole_object(store):
    store.write_bytes("a.bin", b"x" * 1000)
    store.write_bytes("a.bin", b"short")
    assert store.read_bytes("a.bin") == b"short"
    store.write_bytes("a.bin", bytearray(b"bytes-like"))
    assert store.read_bytes("a.bin") == b"bytes-like"


def test_crash_before_rename_leaves_nothing(store, tmp_path, monkeypatch):
    store.write_bytes("keep.bin", b"old")

    def crash(src, dst):
        raise OSError("killed mid-write")

    monkeypatch.setattr(storage_mod.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        store.write_bytes("new.bin", b"data")
    with pytest.raises(OSError, match="killed"):
        store.write_bytes("keep.bin", b"new")
    monkeypatch.undo()

    assert not store.exists("new.bin")
    assert store.read_bytes("keep.bin") == b"old"  # previous object untouched
    assert files_under(tmp_path / "out") == ["keep.bin"]  # no temp file left


def test_crash_after_data_written_leaves_no_temp_file(store, tmp_path, monkeypatch):
    seen = []

    def crash(fd):  # the temp file holds the data at this point: a crash before it is durable
        seen.extend(p.name for p in (tmp_path / "out" / "sub").iterdir())
        raise OSError("disk gone")

    monkeypatch.setattr(storage_mod.os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        store.write_bytes("sub/x.bin", b"payload")
    monkeypatch.undo()

    assert len(seen) == 1 and seen[0].startswith(".tmp-")  # the crash really hit mid-write
    assert not store.exists("sub/x.bin")
    assert files_under(tmp_path / "out") == []


def test_non_bytes_data_leaves_no_temp_file(store, tmp_path):
    with pytest.raises(TypeError):
        store.write_bytes("sub/y.bin", "not bytes")
    assert files_under(tmp_path / "out") == []


def test_list_never_shows_temp_files(store, tmp_path):
    store.write_bytes("audio/c1/0000.wav", b"a")
    # A temp file left behind by a killed process, with the naming our writer uses.
    leftover = tmp_path / "out" / "audio" / "c1" / ".tmp-0001.wav-deadbeef0000"
    leftover.write_bytes(b"partial")

    assert store.list() == ["audio/c1/0000.wav"]
    assert store.list("audio/c1/") == ["audio/c1/0000.wav"]
    assert not store.exists("audio/c1/0001.wav")


def test_remove_leftovers_clears_temp_files_of_the_job_folders_only(store, tmp_path):
    """Temp files of killed writes go, in the job's folders and at OUT's top; nothing outside them is touched,
    even under OUT (an OUT in a shared folder)."""
    out = tmp_path / "out"
    store.write_bytes("audio/c1/0000.wav", b"a")
    mine = [out / "audio" / "c1" / ".tmp-0001.wav-deadbeef0000", out / ".tmp-job.json-0000deadbeef"]
    theirs = out / "notes" / ".tmp-draft"
    theirs.parent.mkdir()
    for path in (*mine, theirs):
        path.write_bytes(b"partial")

    assert store.remove_leftovers(["audio/", "codes/"]) == 2
    assert not any(p.exists() for p in mine)
    assert theirs.read_bytes() == b"partial" and store.read_bytes("audio/c1/0000.wav") == b"a"


@pytest.mark.parametrize(
    "key",
    ["../x", "/abs", "a//b", "a/./b", "s3://x", "s3:", "a\\b", "", "a/", ".", "a/..", "x\x00y", "C:/x", ".tmp-a"],
)
def test_bad_keys_rejected(store, key):
    with pytest.raises(ValueError, match="key"):
        check_key(key)
    for call in (store.exists, store.read_bytes, store.delete, store.local_path):
        with pytest.raises(ValueError):
            call(key)
    with pytest.raises(ValueError):
        store.write_bytes(key, b"x")


@pytest.mark.parametrize("key", ["a", "audio/c-1/0000.wav", "conv:7/turn 1.flac", "a/.hidden", "..a/b.."])
def test_good_keys_accepted(key):
    assert check_key(key) == key


def test_key_error_names_the_key():
    with pytest.raises(ValueError, match=r"'\.\./secret'"):
        check_key("../secret")


def test_symlink_out_of_root_cannot_be_used(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    root = tmp_path / "out"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "file-link").symlink_to(outside / "secret.txt")

    with pytest.raises(StorageError, match="outside"):
        store.write_bytes("link/evil.txt", b"x")
    with pytest.raises(StorageError):
        store.read_bytes("file-link")
    with pytest.raises(StorageError):
        store.write_bytes("file-link", b"overwrite")
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"
    assert store.list() == []  # symlinks are not objects this store wrote


def test_open_storage_path_and_file_url(tmp_path):
    by_path = open_storage(str(tmp_path / "o"))
    by_url = open_storage((tmp_path / "o").as_uri())
    by_pathlike = open_storage(tmp_path / "o")
    assert all(isinstance(s, LocalStorage) for s in (by_path, by_url, by_pathlike))

    by_url.write_bytes("k/v.txt", b"hello")
    assert by_path.read_bytes("k/v.txt") == b"hello"
    assert by_path.url == by_url.url == str(tmp_path / "o")
    assert str(tmp_path / "o") in repr(by_path)


def test_open_storage_file_url_with_escapes(tmp_path):
    target = tmp_path / "with space"
    store = open_storage(target.as_uri())  # file:///.../with%20space
    store.write_bytes("a", b"1")
    assert (target / "a").read_bytes() == b"1"


def test_open_storage_rejects_others():
    with pytest.raises(ValueError, match="gs://"):
        open_storage("gs://bucket/prefix")
    with pytest.raises(ValueError, match="host"):
        open_storage("file://otherhost/data")
    with pytest.raises(ValueError):
        open_storage("")


def test_storage_is_abstract():
    with pytest.raises(TypeError):
        Storage()


def test_write_new_creates_once_accepts_identical_retry_refuses_different(store, tmp_path):
    assert store.write_new("commits/c1/000000.json", b'{"a": 1}') is True
    assert store.write_new("commits/c1/000000.json", b'{"a": 1}') is False  # a retry of the same write
    with pytest.raises(StorageError, match="already exists with different content"):
        store.write_new("commits/c1/000000.json", b'{"a": 2}')
    assert store.read_bytes("commits/c1/000000.json") == b'{"a": 1}'
    assert files_under(tmp_path / "out") == ["commits/c1/000000.json"]  # no temp file left by any of them


def test_write_new_never_replaces_a_file_that_appears_meanwhile(store, tmp_path, monkeypatch):
    """Another writer's record lands between our temp file and our link: the link fails, theirs stays."""
    real_link = os.link

    def racing_link(src, dst):
        Path(dst).write_bytes(b"theirs")
        return real_link(src, dst)

    monkeypatch.setattr(storage_mod.os, "link", racing_link)
    with pytest.raises(StorageError):
        store.write_new("commits/c1/000001.json", b"ours")
    assert store.read_bytes("commits/c1/000001.json") == b"theirs"
    assert files_under(tmp_path / "out") == ["commits/c1/000001.json"]
