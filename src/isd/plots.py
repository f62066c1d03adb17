"""matplotlib without a display: every chart of the package goes through here."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display, no GUI toolkit

import matplotlib.pyplot as plt  # noqa: E402


def pyplot():
    return plt
