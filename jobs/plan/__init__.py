"""Plan: what is left to render (committed turns skipped), longest conversations first, streamed from a spool."""
