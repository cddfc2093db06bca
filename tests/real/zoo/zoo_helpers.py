"""Shared by the zoo tests: a case folder built from its wheel in the zoo cache, or a skip saying why not."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.zoo.build import build_case
from models.zoo.cases import CASES_BY_NAME, ZooCase
from models.zoo.fetch import ZooFetchError, zoo_dir


def built_case(name: str) -> tuple[ZooCase, Path]:
    case = CASES_BY_NAME[name]
    try:
        return case, build_case(case, zoo_dir())
    except ZooFetchError as exc:
        pytest.skip(f"zoo case {name} cannot be built (offline or package gone?): {exc}")
