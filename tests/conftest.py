"""Test session set-up: CrypTen patches first, nothing downloads (tiny models:
``crypten_mpcache.testing``)."""

from __future__ import annotations

import os

import crypten_mpcache  # noqa: F401  (applies the CrypTen compatibility patches first)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download at run time
