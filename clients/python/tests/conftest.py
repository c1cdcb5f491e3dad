"""Shared helpers: the vectors file, and the gateway the suite talks to."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Dict

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def vectors() -> Dict[str, Any]:
    with open(ROOT / "proto" / "testdata" / "vectors.json", encoding="utf-8") as f:
        data: Dict[str, Any] = json.load(f)
    return data


def required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run the suite with bash clients/with-cluster.sh")
    return value
