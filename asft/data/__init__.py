"""Ingesting and screening fine-tuning data: sources and schemas in, ``Record`` rows out,
harmful rows quarantined, malformed rows rejected; every input row is accounted for."""
