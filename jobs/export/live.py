"""`csm-render run --export ...`: each conversation exported as soon as it is complete, while the job renders.

On the driver, not the workers: a worker's time belongs to its GPU (stitching and encoding a long episode there
would idle the engine's slots), while the driver only counts events and has the CPU to spare. Exports run on one
background thread, so the driver's loop keeps reading worker events; the driver hands over a conversation when
its worker reports it done without error (its metadata is written by then). At the end of the run one ordinary
export pass follows (runner.run_job): it catches conversations completed by earlier runs, skipping everything
already exported, and makes the dataset kinds, which are whole-job outputs.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from jobs.storage import Storage

from jobs.export.command import ExportSummary, export_job, export_one
from jobs.export.destination import open_dest
from jobs.export.options import PER_CONVERSATION, ExportOptions
from jobs.export.reader import JobView

log = logging.getLogger(__name__)


class LiveExporter:
    def __init__(self, storage: Storage, opts: ExportOptions):
        self.opts = replace(opts, kinds=tuple(k for k in opts.kinds if k in PER_CONVERSATION))
        self.view, self.dest = JobView(storage), open_dest(storage, None)
        self.summary = ExportSummary(self.dest.url, self.opts.kinds)
        self._scratch = tempfile.TemporaryDirectory(prefix="csm-render-export-")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="export")

    def submit(self, conversation_id: str) -> None:
        self._pool.submit(self._export, conversation_id)

    def _export(self, conversation_id: str) -> None:
        try:
            conv = self.view.conversation(conversation_id)
            if export_one(self.view, self.dest, conv, self.opts, self._scratch.name, self.summary):
                self.summary.complete += 1
        except Exception as e:  # an export problem never stops the render; the final pass tries again
            self.summary.errors[conversation_id] = f"{type(e).__name__}: {e}"

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._scratch.cleanup()
        made = self.summary.exported.get("conversations", 0) or self.summary.exported.get("captions", 0)
        print(f"exported {made} conversation(s) as they completed", file=sys.stderr)


def export_options(cfg) -> ExportOptions:
    """What `run --export` (RunConfig) asked for: its kinds, with run's --export-* settings or export's defaults."""
    opts = getattr(cfg, "export_options", None) or ExportOptions()
    return replace(opts, kinds=tuple(getattr(cfg, "export", ()) or ()))


def live_exporter(cfg, storage: Storage) -> LiveExporter | None:
    """The job's live exporter, or None when `cfg.export` (RunConfig) asks for no per-conversation kind."""
    opts = export_options(cfg)
    if not any(k in PER_CONVERSATION for k in opts.kinds):
        return None
    return LiveExporter(storage, opts)


def final_export(storage: Storage, cfg) -> ExportSummary:
    """The export pass at the end of `run --export`: what is complete and not yet exported (with the same
    settings as the live exports, so none is redone), the datasets."""
    return export_job(JobView(storage), open_dest(storage, None), export_options(cfg))
