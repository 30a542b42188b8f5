"""The `csm-render` command line. Exit codes: 0 all done, 1 some conversations failed, 2 bad input or usage."""

from __future__ import annotations

import atexit
import gc
import os
import sys
from contextlib import contextmanager

import click

from csm_worker import DEFAULT_MODEL, ModelLoadError
from csm_worker.quality.asr import DEFAULT_MAX_CER

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_RESUME = 75  # sysexits' EX_TEMPFAIL: the job stopped short of its end; run it again to resume

model_option = click.option("--model", default=DEFAULT_MODEL, show_default=True,
                            help="Hub id, local folder in the hub format, or random:tiny|random:small|random:csm-1b.")
# Arrow objects left in reference cycles (Parquet read from in-memory buffers) are otherwise collected in the
# interpreter's final teardown, after Arrow's thread pool is gone: the process then aborts ("terminate called
# without an active exception", exit 134) after its work is done, about 1 run in 8 here. Collecting them while
# everything is alive avoids that (apache/arrow#34314). Registered first, so it runs last of the atexit handlers.
atexit.register(gc.collect)
revision_option = click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of --model.")
# None, not "auto", by default: an explicit choice overrides $CSM_RENDER_BACKEND, the default leaves it to it.
backend_option = click.option("--backend", default=None, type=click.Choice(["auto", "cpu", "portable"]),
                              help="The engine's kernels: cpu (oneDNN, TorchScript, C top-k; CPU only), portable "
                                   "(plain PyTorch, what CUDA runs) or auto (default: $CSM_RENDER_BACKEND, else "
                                   "auto: cpu on CPU, portable elsewhere).")


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@contextmanager
def _clear_errors():
    """End the command on a storage or file-system error (no credentials, no such bucket, a read-only or missing
    folder, an unreachable cluster) with its message, which names the object or path, instead of a traceback."""
    from jobs.storage import StorageError

    try:
        yield
    except (StorageError, OSError) as e:
        _fail(str(e))


def _report_problems(problems) -> None:
    for p in problems:
        click.echo(str(p), err=True)
    click.echo(f"{len(problems)} problem(s): nothing was rendered or written.", err=True)


@click.group()
@click.version_option(package_name="csm-render")
def main() -> None:
    """Render dialogue from Parquet manifests with Sesame's CSM-1B, on one machine or a Ray cluster."""


@main.command()
@click.argument("manifests", nargs=-1, required=True)
@model_option
@revision_option
@click.option("--max-audio-length-ms", default=10_000, show_default=True,
              help="Default longest turn, used where a row has no max_audio_length_ms.")
@click.option("--no-audio-check", is_flag=True, help="Do not open given audio files.")
@click.option("--s3-endpoint-url", default=None, help="S3-compatible endpoint for s3:// manifests.")
@click.option("--voices", default=None, help="Also check this cast (as `run --voices`): its rows, recordings "
              "and that its prompts fit each conversation's window.")
def validate(manifests, model, revision, max_audio_length_ms, no_audio_check, s3_endpoint_url, voices) -> None:
    """Check MANIFESTS (files, folders or globs) without rendering. Exit 0 if valid, 2 if not."""
    from jobs.manifests.manifest import ManifestError
    from jobs.manifests.validation import validated_manifests
    from jobs.manifests.voices import read_cast

    try:
        with _clear_errors():
            cast = read_cast(voices, s3_endpoint_url) if voices else None
        with _clear_errors(), validated_manifests(manifests, model, revision, cast=cast,
                                                  default_max_audio_length_ms=max_audio_length_ms,
                                                  check_audio=not no_audio_check,
                                                  s3_endpoint_url=s3_endpoint_url, need_model=False) as (report, _):
            pass
    except ModelLoadError as e:
        _fail(str(e))
    except ManifestError as e:
        _report_problems(e.problems)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(report.summary())
    for line in cast.describe() if cast else []:
        click.echo(f"cast: {line}")


_JOB_OPTIONS = [
    click.argument("manifests", nargs=-1, required=True),
    click.option("--out", required=True, help="Output: a local folder or s3://bucket/prefix."),
    click.option("--s3-endpoint-url", default=None, help="S3-compatible endpoint (MinIO, R2, ...); else the "
                 "standard AWS configuration (AWS_ENDPOINT_URL, profiles) applies."),
    model_option,
    revision_option,
    click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])),
    click.option("--dtype", default="auto", show_default=True,
                 type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
                 help="auto: float32 on CPU, bfloat16 on CUDA."),
    backend_option,
    click.option("--batch-size", default="auto", show_default=True,
                 help="Conversations each worker renders at once, or auto (GPU: from free memory; CPU: 32)."),
    click.option("--workers", default=None, type=click.IntRange(1),
                 help="Ray workers (default: one per GPU, else 1)."),
    click.option("--gpus-per-worker", default=None, type=click.FloatRange(0, 8),
                 help="GPUs each worker asks Ray for; below 1 packs several workers on one GPU (default: 1 when "
                 "the cluster has GPUs or --device cuda, else 0)."),
    click.option("--max-attempts", default=3, show_default=True, type=click.IntRange(1),
                 help="A conversation whose worker dies this many times is failed and recorded."),
    click.option("--watchdog-s", default=900.0, show_default=True, type=click.FloatRange(1),
                 help="Stop a worker that holds conversations but commits nothing for this long; they are retried."),
    click.option("--lock-wait-s", default=140.0, show_default=True, type=click.FloatRange(0),
                 help="When another run holds OUT, wait this long for it to end, then exit 2 (the default is time "
                      "enough for the lease of a run that vanished to expire)."),
    click.option("--if-busy", default="fail", show_default=True, type=click.Choice(["fail", "skip"]),
                 help="When another run still holds OUT after --lock-wait-s: fail (exit 2) or skip (exit 0, nothing "
                      "done; for schedules, whose late or doubled runs would otherwise fail)."),
    click.option("--format", "audio_format", default="wav", show_default=True, type=click.Choice(["wav", "flac"])),
    click.option("--temperature", default=0.9, show_default=True, type=click.FloatRange(0, 5, min_open=True)),
    click.option("--top-k", default=50, show_default=True, type=click.IntRange(1, 2051)),
    click.option("--max-audio-length-ms", default=10_000, show_default=True, type=click.IntRange(80, 120_000)),
    click.option("--seed", default=0, show_default=True, type=click.IntRange(0), help="Job seed; turns without "
                 "their own seed derive one from it, the conversation and the turn index."),
    click.option("--new-run", is_flag=True, help="OUT holds a job with other settings: forget it and render anew."),
    click.option("--rerender-failed", is_flag=True,
                 help="Render again, as a new recorded pass, the finished turns that failed the quality checks and "
                      "the turns after them in their conversations (they heard the failed turn), with new seeds; "
                      "earlier passes' files are kept. An interrupted pass is resumed by the next run."),
    click.option("--qc-retries", default=2, show_default=True, type=click.IntRange(0, 10),
                 help="A turn that fails the quality checks is rendered again up to this many more times (another "
                      "seed, derived from its own) before the next turn hears it; the best attempt is kept."),
    click.option("--qc-threshold", "qc_thresholds", multiple=True, metavar="NAME=VALUE",
                 help="Override one quality-check threshold (repeatable); the names and defaults are in the "
                      "README's Quality checks."),
    click.option("--qc-asr", default=None, metavar="MODEL",
                 help="Also transcribe every turn with this speech recognizer (a hub id, local folder or s3:// "
                      "prefix; a Whisper or CTC model) and fail turns whose transcript is too far from the text."),
    click.option("--qc-max-cer", default=DEFAULT_MAX_CER, show_default=True, type=click.FloatRange(0),
                 help="With --qc-asr: the highest character error rate of a passing turn."),
    click.option("--watermark", default="on", show_default=True, type=click.Choice(["on", "off"]),
                 help="Mark every turn as synthetic with silentcipher's watermark, as Sesame's reference does (off: "
                      "an explicit opt-out, recorded in the job record and every turn's metadata)."),
    click.option("--watermark-key", default=None, metavar="KEY",
                 help="The watermark's 5-byte key: 212,211,146,56,201 or d4d39238c9 (default: the reference's, so "
                      "Sesame's own check finds the marks)."),
    click.option("--watermark-weights", default=None, metavar="SOURCE",
                 help="silentcipher's weights: a hub id, a local folder or s3:// prefix in the layout of "
                      "sony/silentcipher, or random:silentcipher (default: sony/silentcipher; random weights for "
                      "a random:* model)."),
    click.option("--voices", default=None, help="The job's cast: a Parquet file or folder (local or s3://) of "
                 "speaker, text, audio[, name, order] rows; each conversation starts with its speakers' prompts."),
]


def job_options(command):
    """The options of a job, shared by `run` and `submit` (which passes them on to `run` on the cluster)."""
    for option in reversed(_JOB_OPTIONS):
        command = option(command)
    return command


@main.command()
@job_options
@click.option("--address", default=None,
              help="Ray cluster to join (`auto`: the one started on this machine; default: RAY_ADDRESS, else a new "
                   "local Ray).")
@click.option("--export", "export_kinds", default=None, help="Also export as the job goes (see `csm-render export`): "
              "conversations,captions are made as each conversation completes, hf,webdataset at the end; under "
              "OUT/exports/, with export's defaults unless --export-* say otherwise.")
@click.option("--export-format", default=None, type=click.Choice(["wav", "flac", "mp3", "opus"]),
              help="--export's conversations: wav (default), flac, mp3 or opus.")
@click.option("--export-loudness", type=click.FloatRange(-70, 0), default=None,
              help="--export's conversations: normalize each to this integrated loudness (LUFS; -16 podcasts).")
@click.option("--export-pause-ms", type=click.IntRange(0, 60_000), default=None,
              help="--export's conversations and captions: silence after a turn whose row has no pause_ms.")
@click.option("--export-include-failed-qc", is_flag=True,
              help="--export's hf and webdataset: keep the turns that failed the quality checks (flagged).")
def run(manifests, out, s3_endpoint_url, model, revision, device, dtype, batch_size, workers, gpus_per_worker,
        max_attempts, watchdog_s, lock_wait_s, if_busy, address, audio_format, temperature, top_k,
        max_audio_length_ms, seed, new_run, rerender_failed, qc_retries, qc_thresholds, qc_asr, qc_max_cer,
        watermark, watermark_key,
        watermark_weights, voices, export_kinds, export_format,
        export_loudness, export_pause_ms, export_include_failed_qc, backend) -> None:
    """Render every turn of MANIFESTS into OUT. Re-running the same command resumes."""
    from jobs.cluster.feeder import FeederLost
    from jobs.storage.jobrecord import JobMismatch
    from jobs.manifests.manifest import ManifestError
    from jobs.plan.order import Defaults
    from jobs.storage.run_lock import LeaseLost, OutInUse
    from jobs.runner import RunConfig, run_job
    from jobs.storage import StorageError, open_storage

    if batch_size != "auto" and not (batch_size.isdigit() and 0 < int(batch_size) <= 4096):
        _fail(f"--batch-size must be a positive integer or auto, not {batch_size!r}")
    batch_size = batch_size if batch_size == "auto" else int(batch_size)
    if new_run and rerender_failed:
        _fail("--rerender-failed renders a job's failed turns again; --new-run forgets the job: choose one")
    if "://" not in out:  # workers on other nodes would resolve a relative OUT from their own folder
        out = os.path.abspath(out)
    cfg = RunConfig(manifests=list(manifests), out=out, model=model, revision=revision, device=device,
                    dtype=None if dtype == "auto" else dtype, batch_size=batch_size, workers=workers,
                    gpus_per_worker=gpus_per_worker, max_attempts=max_attempts, watchdog_s=watchdog_s,
                    lock_wait_s=lock_wait_s,
                    address=address, audio_format=audio_format, new_run=new_run, rerender_failed=rerender_failed,
                    s3_endpoint_url=s3_endpoint_url,
                    voices=voices, backend=backend,
                    defaults=Defaults(temperature, top_k, max_audio_length_ms, seed),
                    qc=_qc_options(qc_retries, qc_thresholds, qc_asr, qc_max_cer),
                    watermark=_watermark_options(watermark, watermark_key, watermark_weights))
    cfg.export = _export_kinds(export_kinds)  # an unknown kind: exit 2 before anything is written
    cfg.export_options = _export_options(cfg.export, export_format, export_loudness, export_pause_ms,
                                         export_include_failed_qc)
    try:
        open_storage(out, s3_endpoint_url)
    except ValueError as e:
        _fail(f"--out {out}: {e}")
    _check_cluster_access(address)
    try:
        summary = run_job(cfg)
    except ManifestError as e:
        _report_problems(e.problems)
        sys.exit(EXIT_BAD_INPUT)
    except OutInUse as e:
        if if_busy == "skip" and not isinstance(e, LeaseLost):  # LeaseLost: taken over mid-run, not busy at start
            click.echo(f"skipped (--if-busy skip): {e}")
            sys.exit(EXIT_OK)
        _fail(str(e))
    except (JobMismatch, ModelLoadError, StorageError, OSError) as e:
        _fail(str(e))  # OSError: a local OUT that cannot be written, a missing manifest, an unreachable cluster
    except FeederLost as e:
        _fail(str(e), EXIT_RESUME)
    except KeyboardInterrupt:
        # Every file is written under a temporary name and renamed, so whatever was in flight is either
        # committed or absent: nothing to clean up.
        _fail("interrupted: committed turns are kept; run the same command again to resume", EXIT_INTERRUPTED)
    click.echo(summary.text())
    sys.exit(summary.exit_code)


def _qc_options(retries: int, thresholds: tuple[str, ...], asr: str | None = None,
                max_cer: float = DEFAULT_MAX_CER):
    """--qc-retries, --qc-threshold, --qc-asr and --qc-max-cer, checked before anything is written (exit 2 for a
    bad threshold)."""
    from jobs.qc_options import QcOptionError, QcOptions, parse_thresholds

    from jobs.qc_judge import check_recognizer_source

    try:
        options = QcOptions(retries, parse_thresholds(thresholds), asr or None, max_cer)
        if options.asr:
            check_recognizer_source(options.asr)
        return options
    except (QcOptionError, ModelLoadError) as e:
        _fail(str(e))


def _watermark_options(state: str, key: str | None, weights: str | None):
    """--watermark, --watermark-key and --watermark-weights, checked before anything is written (exit 2): a bad
    key, or a local weights folder that is missing or not silentcipher's layout."""
    from csm_worker.watermark import WatermarkKeyError, parse_key
    from csm_worker.watermark.weights import check_local_source
    from jobs.watermark_options import WatermarkOptions

    try:
        options = WatermarkOptions(state == "on", **({"key": parse_key(key)} if key else {}), weights=weights)
        if options.enabled and weights:
            check_local_source(weights)
        return options
    except (WatermarkKeyError, ModelLoadError) as e:
        _fail(str(e))


def _check_cluster_access(address: str | None) -> None:
    """A token-secured cluster that wants a token we lack, or refuses ours: exit 2 at once, before anything is
    written (jobs/cluster/auth.py)."""
    from jobs.cluster.auth import ClusterAuthError
    from jobs.cluster.ray_pool import check_cluster_access

    try:
        check_cluster_access(address)
    except ClusterAuthError as e:
        _fail(str(e))


def _export_options(kinds: tuple[str, ...], audio_format: str | None, loudness: float | None,
                    pause_ms: int | None, include_failed_qc: bool = False):
    """run --export-*'s settings as export's options (None: none given), checked like export's own (exit 2)."""
    per_conversation = {k: v for k, v in (("audio_format", audio_format), ("loudness_lufs", loudness),
                                          ("pause_ms", pause_ms)) if v is not None}
    given = {**per_conversation, **({"include_failed_qc": True} if include_failed_qc else {})}
    if not given:
        return None
    from jobs.export.options import PER_CONVERSATION, ExportOptions, ExportRequestError, check_options

    if per_conversation and not any(k in PER_CONVERSATION for k in kinds):  # the datasets hold the files as they are
        _fail("--export-format, --export-loudness and --export-pause-ms need --export KINDS with conversations or "
              "captions")
    if include_failed_qc and not any(k not in PER_CONVERSATION for k in kinds):
        _fail("--export-include-failed-qc needs --export KINDS with hf or webdataset")

    opts = ExportOptions(kinds=kinds, **given)
    try:
        check_options(opts)
    except ExportRequestError as e:
        _fail(f"--export-{str(e).lstrip('-')}")
    return opts


def _export_kinds(value: str | None) -> tuple[str, ...]:
    """run --export's kinds, checked before anything is written (exit 2 for an unknown one)."""
    if value is None:
        return ()
    from jobs.export.options import ExportRequestError, parse_kinds

    try:
        return parse_kinds([value])
    except ExportRequestError as e:
        _fail(f"--export: {e}")


@main.command()
@job_options
@click.option("--address", required=True, envvar="RAY_ADDRESS", show_envvar=True,
              help="The cluster's Job Submission API, e.g. http://HEAD:8265 (Ray dashboard port).")
@click.option("--submission-id", default=None, help="Names the job; a second submit of the same id starts nothing "
              "and reports (with --wait, follows) the job already there. Default: one Ray picks.")
@click.option("--wait", is_flag=True, help="Follow the job's logs until it ends; exit with its exit code.")
@click.option("--no-upload", is_flag=True, help="The cluster's image has csm-render installed: do not ship the "
              "project in the job's runtime environment.")
@click.pass_context
def submit(ctx, address, submission_id, wait, no_upload, **_) -> None:
    """Submit `csm-render run MANIFESTS --out OUT ...` as a Ray job. Local paths must exist on the cluster (a
    shared file system); s3:// ones always do. Prints the submission id."""
    from jobs.redact import redact
    from jobs.cluster.submit import follow, submit as submit_job

    _qc_options(ctx.params["qc_retries"], ctx.params["qc_thresholds"])  # a bad threshold: exit 2, nothing sent
    _watermark_options(ctx.params["watermark"], ctx.params["watermark_key"], None)  # a bad key, likewise
    try:
        job = submit_job(address, _run_args(ctx), submission_id, upload=not no_upload)
    except Exception as e:  # refused, unreachable, a proxy's 502, a malformed address: Ray raises many kinds
        _fail(redact(f"cannot submit to {address}: {e}"))  # an address may carry user:token@
    verb = "submitted" if job.created else f"already submitted ({job.status}); nothing new started"
    click.echo(f"{job.submission_id}: {verb}", err=True)
    click.echo(job.submission_id)
    if not wait:
        return
    try:
        status, code = follow(address, job.submission_id)
    except KeyboardInterrupt:
        _fail(f"stopped following; the job goes on. Follow it again with: csm-render submit ... --submission-id "
              f"{job.submission_id} --wait", EXIT_INTERRUPTED)
    except Exception as e:  # the cluster went away while we followed; the job itself may go on
        _fail(redact(f"lost {address} while following {job.submission_id}: {e}"))
    click.echo(f"{job.submission_id}: {status}", err=True)
    sys.exit(code)


def _run_args(ctx: click.Context) -> list[str]:
    """`run`'s arguments for the values given to `submit`: options left at their defaults are left out, so the
    cluster's `run` applies its own defaults exactly as a local `run` would."""
    from jobs.cluster.submit import cluster_path

    args = [cluster_path(m) for m in ctx.params["manifests"]]
    for param in ctx.command.params:
        if param.name in ("manifests", "address", "submission_id", "wait", "no_upload"):
            continue
        value = ctx.params[param.name]
        if value == param.default or value is None or (getattr(param, "is_flag", False) and not value):
            continue  # a flag is passed on only when set
        if param.name in ("out", "voices"):
            value = cluster_path(value)
        if getattr(param, "multiple", False):
            args += [part for item in value for part in (param.opts[0], str(item))]
            continue
        args += [param.opts[0]] if getattr(param, "is_flag", False) else [param.opts[0], str(value)]
    return args


@main.command()
@click.argument("out")
@click.argument("manifests", nargs=-1)
@click.option("--s3-endpoint-url", default=None, help="S3-compatible endpoint for an s3:// OUT.")
def status(out, manifests, s3_endpoint_url) -> None:
    """What OUT holds: conversations and turns done, failed and pending (pending needs MANIFESTS), audio hours,
    and the last error of each failed conversation."""
    from jobs.manifests.manifest import validate_manifests
    from jobs.manifests.remote import local_manifests
    from jobs.status import job_status
    from jobs.storage import open_storage

    try:
        storage = open_storage(out, s3_endpoint_url)
    except ValueError as e:
        _fail(f"{out}: {e}")
    with _clear_errors(), local_manifests(list(manifests), s3_endpoint_url) as local:
        files = None
        if manifests:
            report = validate_manifests(local.args, check_audio=False)
            if not report.ok:
                _report_problems(local.problems(report.problems))
                sys.exit(EXIT_BAD_INPUT)
            files = report.files
        click.echo(job_status(storage, files).text())


@main.command()
@click.argument("out")
@click.option("--qc-threshold", "qc_thresholds", multiple=True, metavar="NAME=VALUE",
              help="Override one quality-check threshold (repeatable), as for run.")
@click.option("--qc-asr", default=None, metavar="MODEL",
              help="Also transcribe every turn with this speech recognizer, as for run (records qc_cer, qc_wer, "
                   "qc_transcript).")
@click.option("--qc-max-cer", default=DEFAULT_MAX_CER, show_default=True, type=click.FloatRange(0),
              help="With --qc-asr: the highest character error rate of a passing turn.")
@click.option("--lock-wait-s", default=140.0, show_default=True, type=click.FloatRange(0),
              help="When a run holds OUT, wait this long for it to end, then exit 2.")
@click.option("--s3-endpoint-url", default=None, help="S3-compatible endpoint for an s3:// OUT.")
def qc(out, qc_thresholds, qc_asr, qc_max_cer, lock_wait_s, s3_endpoint_url) -> None:
    """Check OUT's finished turns again with the current settings, without rendering, and record the results in
    their metadata (status and export follow). Exit 0 all passed, 1 some failed, 2 bad request."""
    from jobs.qc_recheck import recheck
    from jobs.storage import StorageError, open_storage
    from jobs.storage.run_lock import OutInUse

    options = _qc_options(0, qc_thresholds, qc_asr, qc_max_cer)
    try:
        storage = open_storage(out, s3_endpoint_url)
    except ValueError as e:
        _fail(f"{out}: {e}")
    try:
        with _clear_errors():
            summary = recheck(storage, options, lock_wait_s, s3_endpoint_url=s3_endpoint_url)
    except (OutInUse, StorageError, ModelLoadError, OSError) as e:
        _fail(str(e))
    click.echo(summary.text())
    sys.exit(summary.exit_code)


@main.command()
@click.argument("out")
@click.option("--to", "kinds", multiple=True, default=("conversations,captions,hf,webdataset",), show_default=True,
              help="What to make: conversations, captions, hf, webdataset (comma-separated or repeated).")
@click.option("--dest", default=None, help="Where to write (a folder or s3://...; default OUT/exports).")
@click.option("--format", "audio_format", default="wav", show_default=True,
              type=click.Choice(["wav", "flac", "mp3", "opus"]), help="conversations: the file format.")
@click.option("--pause-ms", default=400, show_default=True, type=click.IntRange(0, 60_000),
              help="Silence after a turn whose row has no pause_ms.")
@click.option("--fade-ms", default=5.0, show_default=True, type=click.FloatRange(0, 100),
              help="Fade in and out at each turn's edges (0: none), so joins never click.")
@click.option("--loudness", "loudness_lufs", default=None, type=click.FloatRange(-70, 0),
              help="Normalize each conversation to this integrated loudness, LUFS (-16 podcasts, -20 audiobooks).")
@click.option("--true-peak", "true_peak_db", default=-1.0, show_default=True, type=click.FloatRange(-20, 0),
              help="Ceiling (dBTP) that normalization never pushes a peak past.")
@click.option("--include-given", is_flag=True, help="Keep given voice-prompt turns in conversations and "
              "captions (needs --manifest: OUT does not hold them).")
@click.option("--manifest", "manifests", multiple=True, help="The job's manifest(s), for --include-given.")
@click.option("--max-shard-mb", default=256.0, show_default=True, type=float, help="hf, webdataset: shard size.")
@click.option("--split-by-conversation", "validation_fraction", default=0.0, type=float,
              help="hf: the share of conversations (0-1) in a validation split.")
@click.option("--license", "license_id", default=None, help="hf: the dataset card's license (default: the model's).")
@click.option("--include-failed-qc", is_flag=True, help="hf, webdataset: keep the turns that failed the quality "
              "checks (flagged in qc_status); by default the datasets hold only passed turns.")
@click.option("--s3-endpoint-url", default=None, help="S3-compatible endpoint for s3:// OUT or DEST.")
def export(out, kinds, dest, audio_format, pause_ms, fade_ms, loudness_lufs, true_peak_db, include_given,
           manifests, max_shard_mb, validation_fraction, license_id, include_failed_qc, s3_endpoint_url) -> None:
    """Make finished deliverables from OUT (never changing it): one audio file and captions per conversation,
    a Hugging Face dataset, webdataset shards. Exports what is complete, even while the job runs; a re-run
    redoes only what changed. Exit 0 done, 1 some conversations could not be exported, 2 bad request."""
    from jobs.export.command import export_job, prepare
    from jobs.export.options import ExportOptions, ExportRequestError, parse_kinds

    try:
        opts = ExportOptions(kinds=parse_kinds(kinds), audio_format=audio_format, pause_ms=pause_ms,
                             fade_ms=fade_ms, include_given=include_given, loudness_lufs=loudness_lufs,
                             true_peak_db=true_peak_db, max_shard_mb=max_shard_mb,
                             validation_fraction=validation_fraction, license=license_id, manifests=manifests,
                             include_failed_qc=include_failed_qc)
        with _clear_errors():
            view, target = prepare(out, dest, opts, s3_endpoint_url)
            summary = export_job(view, target, opts)
    except ExportRequestError as e:
        _fail(str(e))
    click.echo(summary.text())
    sys.exit(summary.exit_code)


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--key", default=None, metavar="KEY", help="The key to look for (default: the job's, when a path "
              "lies in an OUT, else the reference's 212,211,146,56,201).")
@click.option("--weights", default=None, metavar="SOURCE", help="silentcipher's weights (default: the job's, "
              "else sony/silentcipher).")
@click.option("--search-step", default=10, show_default=True, type=click.IntRange(0),
              help="When a file does not read as the key from its first sample, look for the mark's frames every "
                   "this many samples (0: do not search; the search costs a decoder pass per step).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--s3-endpoint-url", default=None, help="S3-compatible endpoint for s3:// PATHS or weights.")
def verify(paths, key, weights, search_step, device, s3_endpoint_url) -> None:
    """Say for each audio file under PATHS (files, folders, an OUT, an export; local or s3://) whether it carries
    the watermark, its key and the confidence. Exit 1 if any file is unmarked."""
    import torch

    from csm_worker.watermark import HUB_REPO, REFERENCE_KEY, WatermarkKeyError, key_id, parse_key
    from jobs.storage import StorageError
    from jobs.verify import VerifyError, clips, decode, job_watermark
    from jobs.watermark_options import load_marker

    try:
        record = job_watermark(list(paths), s3_endpoint_url)
    except (StorageError, ValueError) as e:
        _fail(str(e))
    try:
        wanted = parse_key(key) if key else (tuple(bytes.fromhex(record["watermark_key"]))
                                              if record.get("watermark_key") else None)
    except WatermarkKeyError as e:
        _fail(str(e))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    try:
        marker = load_marker(weights or record.get("watermark_weights") or HUB_REPO, device, s3_endpoint_url)
    except (ModelLoadError, StorageError) as e:
        _fail(str(e))
    wanted = wanted or REFERENCE_KEY
    counts = {"marked": 0, "unmarked": 0}
    try:
        for clip in clips(list(paths), s3_endpoint_url):
            samples, rate = decode(clip)
            found = marker.detect(samples, rate, wanted, search_step=search_step)
            state = "marked" if found.marked else "unmarked"
            counts[state] += 1
            read = key_id(found.key) if found.key and all(0 <= b < 256 for b in found.key) else "-"
            click.echo(f"{state:9s} key {read:10s} confidence {found.confidence:.2f}  {clip.name}")
    except (VerifyError, StorageError) as e:
        _fail(str(e))
    if not sum(counts.values()):
        _fail(f"no audio files under {', '.join(paths)}")
    click.echo(f"{counts['marked']} marked, {counts['unmarked']} unmarked (key {key_id(wanted)}, weights "
               f"{marker.source})", err=True)
    sys.exit(1 if counts["unmarked"] else 0)


@main.command()
@model_option
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "float32", "bfloat16", "float16"]))
@click.option("--batch-size", default="auto", show_default=True,
              help="Slots for the engine measurement, or auto (GPU: from free memory; CPU: best of a sweep).")
@click.option("--frames", default=50, show_default=True, type=click.IntRange(4),
              help="Frames per turn for the engine measurement.")
@click.option("--hf-frames", default=20, show_default=True, type=click.IntRange(2),
              help="Frames for transformers' generate (slow; fewer frames keep the run short).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@backend_option
def bench(model, device, dtype, batch_size, frames, hf_frames, as_json, backend) -> None:
    """Measure the engine against transformers' generate on the same weights, in the same run."""
    import json

    from csm_worker import bench as bench_mod
    from csm_worker import load_csm_1b

    try:
        gen = load_csm_1b(device, model, None if dtype == "auto" else dtype, backend=backend)
    except ModelLoadError as e:
        _fail(str(e))
    if batch_size == "auto":
        size = bench_mod.fastest_batch_size(gen, frames)
        click.echo(f"--batch-size auto chose {size}", err=True)
    elif batch_size.isdigit() and int(batch_size) > 0:
        size = int(batch_size)
    else:
        _fail(f"--batch-size must be a positive integer or auto, not {batch_size!r}")
    result = bench_mod.run_bench(gen, size, frames=frames, hf_frames=hf_frames).as_dict()
    if as_json:
        click.echo(json.dumps(result))
        return
    for key, value in result.items():
        # Small figures (the checks' cost, a fraction of a millisecond per audio second) keep 3 significant digits.
        shown = (f"{value:,.3f}" if abs(value) >= 0.1 else f"{value:.3g}") if isinstance(value, float) else value
        click.echo(f"{key:27s} {shown}")


@main.command("bench-scaling")
@model_option
@click.option("--workers", "worker_counts", default="1,2", show_default=True,
              help="Worker counts to compare, comma-separated; each runs the same job.")
@click.option("--conversations", default=16, show_default=True, type=click.IntRange(1))
@click.option("--turns", default=3, show_default=True, type=click.IntRange(1))
@click.option("--max-audio-length-ms", default=2000, show_default=True, type=click.IntRange(80, 120_000))
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--batch-size", default="auto", show_default=True)
@click.option("--gpus-per-worker", default=None, type=click.FloatRange(0, 8))
@click.option("--logical-gpus", default=0, type=click.IntRange(0),
              help="Start a local Ray with this many logical GPUs, one per worker (placement only; the model runs "
              "on --device): each worker is then a fixed unit of compute, one core each on CPU.")
@click.option("--address", default=None, help="Ray cluster to join, as for `run` (default: RAY_ADDRESS, else a "
              "new local Ray).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per worker count.")
def bench_scaling(model, worker_counts, conversations, turns, max_audio_length_ms, device, batch_size,
                  gpus_per_worker, logical_gpus, address, as_json) -> None:
    """Throughput of one synthetic job with 1..N workers, as ratios to the first count (render phase only)."""
    import json

    from jobs.cluster.bench_scaling import measure

    try:
        counts = [int(c) for c in worker_counts.split(",") if c.strip()]
    except ValueError:
        _fail(f"--workers takes comma-separated whole numbers, not {worker_counts!r}")
    batch = batch_size if batch_size == "auto" else int(batch_size)
    if logical_gpus and address:
        _fail("--logical-gpus starts a local Ray of its own: leave out --address")
    if not logical_gpus:
        _check_cluster_access(address)
    rows = measure(model, counts, conversations, turns, max_audio_length_ms, device, batch, gpus_per_worker,
                   logical_gpus, address)
    for row in rows:
        click.echo(json.dumps(row) if as_json else
                   f"workers {row['workers']}: {row['audio_s_per_s']:.2f} audio s/s over {row['render_s']:.1f} s "
                   f"({row['ratio_vs_first']:.2f}x the first)")


if __name__ == "__main__":
    main()
