"""Per-turn quality checks: what a rendered turn's audio says about CSM's usual failures, checked before commit."""
