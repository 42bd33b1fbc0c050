"""Decontamination against evaluation sets: `python -m filters.decontam build|scan`, and the `decontam` step."""
