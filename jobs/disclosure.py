"""What every deliverable says about itself: the speech is synthetic, which model made it, and whether and how it
is watermarked. Written into each audio file's own tags (jobs/storage/outputs.py for turns, jobs/export for
episodes) and into the datasets' card and per-sample JSON, from the same record a turn's metadata holds."""

from __future__ import annotations

from jobs.storage.jobrecord import project_version


def disclosure(model: str, watermark: dict) -> str:
    """One sentence; `watermark`: the metadata's watermark columns (jobs.watermark_options.WatermarkOptions.record)."""
    state = watermark.get("watermark")
    if state == "on":
        mark = f"Watermarked with silentcipher (key {watermark.get('watermark_key')}); check with `csm-render verify`."
    elif state == "silent":
        mark = "Silent, so not watermarked."
    elif state == "partly":
        mark = (f"Partly watermarked: {watermark.get('turns_marked')} of {watermark.get('turns')} turns, with "
                f"silentcipher (key {watermark.get('watermark_key')}); the others are silent or opted out.")
    else:
        mark = "Not watermarked (the job opted out with --watermark off)."
    return f"Synthetic speech, AI-generated with {model} by csm-render. {mark}"


def audio_tags(title: str, model: str, watermark: dict) -> dict[str, str]:
    """Tags for csm_worker.audio (WAV INFO, FLAC/Opus Vorbis comments, MP3 ID3)."""
    return {"title": title, "comment": disclosure(model, watermark), "artist": f"synthetic voice ({model})",
            "software": f"csm-render {project_version()}"}


def episode_watermark(rows: list[dict]) -> dict:
    """A conversation's turns' watermark columns as one: "on" when every rendered turn is marked (with one key),
    "off" when none is, else "partly" with the counts. Rows written before the watermark existed count as off."""
    marked = [r for r in rows if r.get("watermark") == "on"]
    keys = sorted({r.get("watermark_key") for r in marked})
    key = ",".join(k for k in keys if k) or None
    if marked and len(marked) == len(rows):
        return {"watermark": "on", "watermark_key": key, "watermark_weights": marked[0].get("watermark_weights")}
    if not marked:
        return {"watermark": "off"}
    return {"watermark": "partly", "watermark_key": key, "turns_marked": len(marked), "turns": len(rows)}


def models_of(rows: list[dict]) -> str:
    return ", ".join(sorted({r.get("model") or "an unknown model" for r in rows})) or "an unknown model"
