"""A job's quality-gate settings (`run --qc-retries`, `--qc-threshold NAME=VALUE`, `--qc-asr`, `--qc-max-cer`),
handed to every worker.

The checks themselves are csm_worker/quality/checks.py; here only which thresholds a job overrides and how many
times a failed turn is rendered again. They are not part of the job's fingerprint: each turn records its own
result (qc_status, qc_failed, qc_attempt, qc_attempts), so a re-run with other settings mixes nothing silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from csm_worker.quality.asr import DEFAULT_MAX_CER
from csm_worker.quality.checks import Thresholds

DEFAULT_RETRIES = 2


class QcOptionError(ValueError):
    pass


@dataclass(frozen=True)
class QcOptions:
    retries: int = DEFAULT_RETRIES  # a failed turn is rendered up to this many more times
    overrides: tuple[tuple[str, float], ...] = field(default=())  # (threshold name, value), as given
    asr: str | None = None  # a speech recognizer (hub id, folder or s3://): each turn is transcribed and scored
    max_cer: float = DEFAULT_MAX_CER  # with `asr`: a turn whose transcript's CER is above this fails

    def thresholds(self) -> Thresholds:
        return Thresholds(**{name: _typed(name, value) for name, value in self.overrides})


def threshold_names() -> list[str]:
    return [f.name for f in fields(Thresholds)]


def parse_thresholds(items: tuple[str, ...] | list[str]) -> tuple[tuple[str, float], ...]:
    """NAME=VALUE pairs as the CLI takes them; QcOptionError names the bad one and the names there are."""
    known = {f.name: f for f in fields(Thresholds)}
    parsed = []
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in known:
            raise QcOptionError(f"--qc-threshold {item!r}: expected NAME=VALUE with NAME one of "
                                f"{', '.join(known)}")
        try:
            number = float(value)
        except ValueError:
            raise QcOptionError(f"--qc-threshold {item!r}: {value.strip()!r} is not a number") from None
        if not number >= 0 or number == float("inf"):  # also refuses NaN
            raise QcOptionError(f"--qc-threshold {item!r}: the value must be a finite number >= 0")
        if isinstance(getattr(Thresholds(), name), int) and number != int(number):
            raise QcOptionError(f"--qc-threshold {item!r}: {name} is a whole number")
        parsed.append((name, number))
    return tuple(parsed)


def _typed(name: str, value: float):
    default = getattr(Thresholds(), name)
    return int(value) if isinstance(default, int) else float(value)
