"""Manifests on S3 (moto's HTTP server): validated from local copies, their relative audio mapped back to S3."""

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.manifests.manifest import ManifestError, load_conversations, validate_manifests
from jobs.manifests.remote import local_manifests
from jobs.plan.spool import build_spool


def put_manifest(raw, bucket, key, rows):
    buf = io.BytesIO()
    schema = pa.schema([("conversation_id", pa.string()), ("turn_index", pa.int64()), ("speaker", pa.int64()),
                        ("text", pa.string()), ("audio", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    raw.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())


ROWS = [
    {"conversation_id": "c1", "turn_index": 0, "speaker": 0, "text": "Voice prompt.", "audio": "voices/a.wav"},
    {"conversation_id": "c1", "turn_index": 1, "speaker": 1, "text": "Rendered.", "audio": None},
]


def test_a_prefix_of_manifests_loads_and_relative_audio_points_at_s3(raw, bucket, aws_env, tmp_path):
    put_manifest(raw, bucket, "jobs/m/part-0.parquet", ROWS[:1])
    put_manifest(raw, bucket, "jobs/m/sub/part-1.parquet", ROWS[1:])
    raw.put_object(Bucket=bucket, Key="jobs/m/notes.txt", Body=b"not a manifest")
    with local_manifests([f"s3://{bucket}/jobs/m/"], aws_env) as local:
        assert local.has_remote
        report = validate_manifests(local.args, check_audio=False)
        spool = build_spool(report.files, {}, str(tmp_path / "plan"), audio_name=local.name)
        items = [item for chunk in spool.chunks() for item in chunk]
    (conv,) = [item.spec for item in items]
    assert [t.turn_index for t in conv.turns] == [0, 1]
    assert conv.turns[0].audio == f"s3://{bucket}/jobs/m/voices/a.wav"
    assert conv.turns[1].audio is None


def test_a_single_manifest_object_and_problems_named_by_their_s3_uri(raw, bucket, aws_env):
    bad = [dict(ROWS[1], text="   ")]
    put_manifest(raw, bucket, "one/bad.parquet", bad)
    with local_manifests([f"s3://{bucket}/one/bad.parquet"], aws_env) as local:
        with pytest.raises(ManifestError) as info:
            load_conversations(local.args, check_audio=False)
        problems = local.problems(info.value.problems)
    assert problems and {p.file for p in problems} == {f"s3://{bucket}/one/bad.parquet"}
    assert "text" in {p.column for p in problems}


def test_local_arguments_pass_through_untouched(tmp_path):
    with local_manifests([str(tmp_path)]) as local:
        assert local.args == [str(tmp_path)] and not local.has_remote
        assert local.name(str(tmp_path / "v.wav")) == str(tmp_path / "v.wav")
