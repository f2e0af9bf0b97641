"""`harken tune`: thresholds calibrated on the user's own labelled audio (docs/speakers.md)."""
