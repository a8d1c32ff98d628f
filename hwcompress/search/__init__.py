"""Hardware-aware search: per-layer sensitivity -> budgeted allocation -> fit (the paper's
pipeline with the chosen settings, export, profile, verify) -> report."""
