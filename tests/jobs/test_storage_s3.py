"""S3Storage against moto's real HTTP server (ThreadedMotoServer), through real boto3 clients and sockets."""

from __future__ import annotations

import hashlib
import pickle

import botocore.exceptions as bex
import pytest
from botocore.awsrequest import AWSResponse

from jobs.storage import layout
from jobs.storage import StorageError, open_storage
from jobs.storage.s3 import MiB, S3Storage, read_uri_bytes

from .conftest import ACCESS_KEY, SECRET_KEY


def fast(url: str, **kw) -> S3Storage:
    """A store whose whole-operation backoff is a few milliseconds, so retry tests stay quick."""
    return S3Storage(url, backoff_base_s=0.001, backoff_cap_s=0.005, **kw)


def test_write_read_exists_list_delete_under_prefix(bucket, raw):
    store = fast(f"s3://{bucket}/runs/r1/")
    assert store.url == f"s3://{bucket}/runs/r1"
    assert store.local_path("job.json") is None
    assert store.list() == []

    store.write_bytes("audio/c1/0001.wav", b"one")
    store.write_bytes("audio/c1/0000.wav", b"zero")
    store.write_bytes("audio/c10/0000.wav", b"ten")
    store.write_bytes("job.json", bytearray(b"{}"))
    raw.put_object(Bucket=bucket, Key="runs/r10/other.json", Body=b"not ours")  # a sibling prefix
    raw.put_object(Bucket=bucket, Key="runs/r1/", Body=b"")  # a console "folder" marker: not a key

    assert store.read_bytes("audio/c1/0001.wav") == b"one"
    assert raw.get_object(Bucket=bucket, Key="runs/r1/job.json")["Body"].read() == b"{}"  # lives under prefix/
    assert store.exists("job.json") and not store.exists("nope.json")
    assert not store.exists("audio")  # a "folder" is not an object
    assert store.list() == ["audio/c1/0000.wav", "audio/c1/0001.wav", "audio/c10/0000.wav", "job.json"]
    assert store.list("audio/c1/") == ["audio/c1/0000.wav", "audio/c1/0001.wav"]
    assert store.list("audio/c1") == ["audio/c1/0000.wav", "audio/c1/0001.wav", "audio/c10/0000.wav"]
    assert store.list("missing/") == []

    store.write_bytes("audio/c1/0001.wav", b"replaced")
    assert store.read_bytes("audio/c1/0001.wav") == b"replaced"
    store.delete("audio/c1/0001.wav")
    store.delete("audio/c1/0001.wav")  # missing is fine
    assert not store.exists("audio/c1/0001.wav")
    with pytest.raises(FileNotFoundError, match="audio/c1/0001.wav"):
        store.read_bytes("audio/c1/0001.wav")


def test_empty_prefix_uses_bucket_root(bucket, raw):
    store = fast(f"s3://{bucket}")
    assert store.url == f"s3://{bucket}"
    store.write_bytes("a/b.txt", b"x")
    assert [o["Key"] for o in raw.list_objects_v2(Bucket=bucket)["Contents"]] == ["a/b.txt"]
    assert store.list() == ["a/b.txt"]


def test_list_paginates(bucket):
    store = fast(f"s3://{bucket}/p", page_size=3)
    keys = [f"commits/c{i}/000000.json" for i in range(8)]
    for key in reversed(keys):
        store.write_bytes(key, b"{}")
    pages = []
    store.client.meta.events.register("after-call.s3.ListObjectsV2",
                                      lambda parsed, **kw: pages.append(parsed.get("KeyCount")))
    assert store.list("commits/") == sorted(keys)
    assert pages == [3, 3, 2]


def test_iter_list_streams_a_page_at_a_time_and_retries_a_page_alone(bucket):
    """A listing of millions of commit records is read a page at a time: taking the first keys costs one page,
    and a page that fails transiently is asked again on its own, not the whole listing from the start."""
    store = fast(f"s3://{bucket}/p", page_size=3, max_attempts=1)  # botocore does not retry: only our layer can
    keys = [f"commits/c{i}/000000.json" for i in range(8)]
    for key in keys:
        store.write_bytes(key, b"{}")
    sent = []
    store.client.meta.events.register("before-send.s3.ListObjectsV2", lambda request, **kw: sent.append(1))
    listing = store.iter_list("commits/")
    assert [next(listing) for _ in range(3)] == keys[:3] and len(sent) == 1
    failures = {"left": 1}

    def fail_once(request, **kw):  # the second page's first send is answered 503 SlowDown
        if len(sent) == 2 and failures["left"]:
            failures["left"] -= 1
            return slow_down(request)
        return None

    store.client.meta.events.register("before-send.s3.ListObjectsV2", fail_once)
    assert [*listing] == keys[3:]
    assert len(sent) == 4  # page 1, page 2 twice (the retry), page 3: page 1 was not asked again


def test_write_new_creates_once_accepts_identical_retry_refuses_different(bucket):
    store = fast(f"s3://{bucket}/p")
    assert store.write_new("commits/c1/000000.json", b'{"a": 1}') is True
    assert store.write_new("commits/c1/000000.json", b'{"a": 1}') is False  # our own earlier attempt landed
    with pytest.raises(StorageError, match="different content"):
        store.write_new("commits/c1/000000.json", b'{"a": 2}')
    assert store.read_bytes("commits/c1/000000.json") == b'{"a": 1}'


def test_moto_honours_if_none_match(bucket, raw):
    """The conditional put that write_new relies on is enforced by the server, not emulated client-side."""
    raw.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(bex.ClientError) as info:
        raw.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"
    assert raw.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"


def test_write_new_response_lost_then_retry_gets_412(bucket):
    """The put lands but its response is lost (reset after the call); the retry's 412 means 'already ours'."""
    store = fast(f"s3://{bucket}/p", max_attempts=1)
    lost = []

    def lose_first_response(**kw):
        if not lost:
            lost.append(1)
            raise bex.ConnectionClosedError(endpoint_url="http://s3.invalid/")

    store.client.meta.events.register("after-call.s3.PutObject", lose_first_response)
    assert store.write_new("job.json", b"{}") is False
    assert lost == [1] and store.read_bytes("job.json") == b"{}"


def test_write_new_compares_objects_written_elsewhere_by_bytes(bucket, raw):
    """Objects without our sha256 metadata are compared by ETag (MD5) or, failing that, by content."""
    store = fast(f"s3://{bucket}/p")
    raw.put_object(Bucket=bucket, Key="p/x.bin", Body=b"same")
    assert store.write_new("x.bin", b"same") is False
    with pytest.raises(StorageError, match="different content"):
        store.write_new("x.bin", b"other")


def test_multipart_write_and_conditional_create(bucket, raw):
    store = fast(f"s3://{bucket}/p")
    big = bytes(range(256)) * (9 * MiB // 256)  # 9 MiB: over the 8 MiB threshold, so two parts
    store.write_bytes("big.bin", big)
    head = raw.head_object(Bucket=bucket, Key="p/big.bin")
    assert head["ETag"].strip('"').endswith("-2")  # a multipart object's ETag names its part count
    assert head["Metadata"]["sha256"] == hashlib.sha256(big).hexdigest()
    assert store.read_bytes("big.bin") == big

    assert store.write_new("big.bin", big) is False  # CompleteMultipartUpload with If-None-Match: 412, same
    with pytest.raises(StorageError, match="different content"):
        store.write_new("big.bin", big[:-1] + b"!")
    assert store.write_new("big2.bin", big) is True
    assert raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # refused uploads were aborted


def fail_first(n: int, make):
    """A before-send hook that answers the first `n` sends with make(request) (raise or return a response)."""
    calls = []

    def hook(request, **kw):
        calls.append(request.headers.get("Authorization"))
        if len(calls) <= n:
            return make(request)
        return None

    hook.calls = calls
    return hook


def reset(request):
    raise bex.ConnectionClosedError(endpoint_url=request.url)


class _Raw:
    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **kw):
        yield self._body


def slow_down(request):
    body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Raw(body))


@pytest.mark.parametrize("make", [reset, slow_down], ids=["connection-reset", "503-slowdown"])
def test_transient_failures_past_botocore_are_retried(bucket, make):
    store = fast(f"s3://{bucket}/p", max_attempts=1)  # botocore does not retry: only our layer can
    hook = fail_first(3, make)
    store.client.meta.events.register("before-send.s3.PutObject", hook)
    store.write_bytes("a.txt", b"hello")
    assert len(hook.calls) == 4
    assert store.read_bytes("a.txt") == b"hello"


def test_botocore_and_operation_retries_stack(bucket):
    store = fast(f"s3://{bucket}/p", max_attempts=2)  # 2 sends per attempt: 3 failures end in attempt 2
    hook = fail_first(3, slow_down)
    store.client.meta.events.register("before-send.s3.PutObject", hook)
    store.write_bytes("a.txt", b"hello")
    assert len(hook.calls) == 4


def test_retry_budget_spent_raises_storage_error_without_secrets(bucket):
    store = fast(f"s3://{bucket}/p", max_attempts=1, operation_attempts=4)
    hook = fail_first(10**6, reset)
    store.client.meta.events.register("before-send.s3.PutObject", hook)
    with pytest.raises(StorageError) as info:
        store.write_bytes("audio/c1/000000.wav", b"x")
    message = str(info.value)
    assert len(hook.calls) == 4
    assert "write" in message and f"s3://{bucket}/p/audio/c1/000000.wav" in message
    assert "ConnectionClosedError" in message and "4 attempts" in message
    signature = hook.calls[0].decode().rsplit("Signature=", 1)[1]
    for secret in (SECRET_KEY, ACCESS_KEY, signature, "Authorization", "X-Amz-Signature"):
        assert secret not in message and secret not in repr(info.value)


def test_permanent_errors_are_storage_errors_at_once(aws_env):
    store = fast("s3://no-such-bucket-here/p")
    with pytest.raises(StorageError, match=r"NoSuchBucket \(HTTP 404\)"):
        store.write_bytes("a.txt", b"x")


def test_missing_key_is_file_not_found(bucket):
    store = fast(f"s3://{bucket}/p")
    with pytest.raises(FileNotFoundError):
        store.read_bytes("nope/000000.wav")
    assert not store.exists("nope/000000.wav")


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/./b", "s3://x", "a\\b", "", "a/", ".tmp-a"])
def test_bad_keys_are_rejected_before_any_request(bucket, key):
    store = fast(f"s3://{bucket}/p")
    sent = []
    store.client.meta.events.register("before-send.s3", lambda **kw: sent.append(1))
    for call in (lambda: store.write_bytes(key, b"x"), lambda: store.write_new(key, b"x"),
                 lambda: store.read_bytes(key), lambda: store.exists(key), lambda: store.delete(key)):
        with pytest.raises(ValueError):
            call()
    assert sent == []


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "s3://bucket/../x", "s3://bucket/a//b",
                                 "s3://bucket/p?versionId=1", "s3://user@bucket/p", "gs://bucket/p"])
def test_bad_urls_are_rejected(url):
    with pytest.raises(ValueError):
        S3Storage(url)


def test_open_storage_dispatches_s3_urls(bucket, aws_env):
    store = open_storage(f"s3://{bucket}/p")  # the endpoint comes from AWS_ENDPOINT_URL
    assert isinstance(store, S3Storage) and store.url == f"s3://{bucket}/p"
    store.write_bytes("k.txt", b"v")
    assert store.read_bytes("k.txt") == b"v"


def test_explicit_endpoint_overrides_environment(bucket, aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    store = open_storage(f"s3://{bucket}/p", s3_endpoint_url=aws_env)
    store.write_bytes("k.txt", b"v")
    assert store.read_bytes("k.txt") == b"v"


def test_pickles_without_its_client(bucket):
    store = fast(f"s3://{bucket}/p")
    store.write_bytes("k.txt", b"v")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.url == store.url and clone.read_bytes("k.txt") == b"v"


def test_read_uri_bytes(bucket, raw, aws_env):
    raw.put_object(Bucket=bucket, Key="voices/a b.wav", Body=b"RIFF")
    assert read_uri_bytes(f"s3://{bucket}/voices/a b.wav") == b"RIFF"
    assert read_uri_bytes(f"s3://{bucket}/voices/a b.wav", endpoint_url=aws_env) == b"RIFF"
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        read_uri_bytes(f"s3://{bucket}/voices/missing.wav")
    with pytest.raises(ValueError, match="no object"):
        read_uri_bytes(f"s3://{bucket}/")


def test_commit_records_on_s3_are_create_only(bucket):
    """A commit record on S3 is never replaced by other content: the writer refuses a committed turn before it
    writes anything (and its record goes through write_new, tests/jobs/test_outputs.py, which the server honours:
    the create-only tests above)."""
    import numpy as np

    from csm_worker.engine.requests import RenderedTurn
    from jobs.storage.outputs import OutputWriter
    from jobs.storage import StorageError

    writer = OutputWriter(fast(f"s3://{bucket}/job"), "wav", "m")
    turn = RenderedTurn("c", 0, 0, "hi", codes=np.zeros((32, 1), dtype=np.int64), seed=1, end_reason="eos",
                        audio=np.zeros(1920, dtype=np.float32))
    row = writer.commit_turn(turn, 0.9, 50, None)
    assert writer.read_commit("c", 0) == row
    turn.seed = 2  # another render of the same turn: its record differs
    with pytest.raises(StorageError, match="already committed"):
        writer.commit_turn(turn, 0.9, 50, None)
    assert writer.read_commit("c", 0) == row
    assert layout.commit_key("c", 0) in writer.storage.list("commits/")


def test_remove_leftovers_aborts_unfinished_uploads_under_the_prefix_only(bucket, raw):
    mine = raw.create_multipart_upload(Bucket=bucket, Key="run/audio/c1/000000.wav")["UploadId"]
    other = raw.create_multipart_upload(Bucket=bucket, Key="elsewhere/x.bin")["UploadId"]
    store = S3Storage(f"s3://{bucket}/run")
    assert store.remove_leftovers(layout.FOLDERS) == 1
    left = {(u["Key"], u["UploadId"]) for u in raw.list_multipart_uploads(Bucket=bucket).get("Uploads", ())}
    assert left == {("elsewhere/x.bin", other)}
    assert mine not in {u for _, u in left}
    assert store.remove_leftovers(layout.FOLDERS) == 0


def test_remove_leftovers_at_the_bucket_root_spares_other_applications_uploads(bucket, raw):
    """An OUT at a bucket's root shares the bucket with whatever else is in it: only uploads into the job's own
    folders are aborted."""
    raw.create_multipart_upload(Bucket=bucket, Key="codes/c1/000000.npy")
    other = raw.create_multipart_upload(Bucket=bucket, Key="backups/db.tar")["UploadId"]
    store = S3Storage(f"s3://{bucket}")
    assert store.remove_leftovers(layout.FOLDERS) == 1
    left = {(u["Key"], u["UploadId"]) for u in raw.list_multipart_uploads(Bucket=bucket).get("Uploads", ())}
    assert left == {("backups/db.tar", other)}
