"""Harmful-sample screeners behind one interface, and how to combine them."""

from asft.data.screening.base import ScreenResult, Screener, combine, request_text

__all__ = ["ScreenResult", "Screener", "combine", "request_text"]
