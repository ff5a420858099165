"""Prefect flows: thin recipes over the asft library."""
