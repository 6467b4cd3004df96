"""The concept experiments' mini spec on the embedded Qwen 0.5B through the real CLI (slow: about a minute).

What it checks are the effects the mini run showed on this model (layer 16 of 24, strengths 2 and 4):
injecting a word's vector on a line's tokens raises that word's probability as "the word you think
about", the line is still repeated without injection, and the written sentence's residual stream is
closer to the concept vector when the model is told to think about the word than when told not to.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

pytestmark = pytest.mark.slow

SPEC = Path(__file__).resolve().parents[2] / "specs" / "concept_experiments_mini.intro"


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mini")
    # A private request cache; the converted weights stay in the user's cache (converting takes a minute).
    command = [
        sys.executable,
        "-m",
        "intro.cli",
        "run",
        str(SPEC),
        "--runs",
        str(root),
        "--cache",
        str(root / "c"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return root / "concept_experiments_mini" / "cube.zarr"


def _estimate(cube: Path, group: str) -> xr.DataArray:
    """One estimate of a stdlib function's group (thoughts vs text, prefill intention)."""
    return xr.open_zarr(cube, group=group).load()["estimate"]


def test_injection_on_the_line_raises_the_word_and_spares_the_repetition(cube: Path) -> None:
    injected = _estimate(cube, "thoughts_vs_text.p_word_injected")
    control = _estimate(cube, "thoughts_vs_text.p_word_control")
    assert float(injected.mean()) > float(control.mean()) + 0.05
    assert float(_estimate(cube, "thoughts_vs_text.repeat_control").mean()) == 1.0


def test_thinking_about_the_word_moves_the_sentence_towards_its_vector(cube: Path) -> None:
    think = _estimate(cube, "think_about.think")
    controls = (
        _estimate(cube, "think_about.control_think") + _estimate(cube, "think_about.control_dont")
    ) / 2
    assert (_estimate(cube, "think_about.think_minus_dont").values > 0).all()
    assert (think.values > controls.values).all()


def test_prefill_intention_fills_its_readouts(cube: Path) -> None:
    assert _estimate(cube, "prefill_intention.accident_log_odds_shift").notnull().all()
    disowned = _estimate(cube, "prefill_intention.disown_injected")
    assert ((disowned >= 0) & (disowned <= 1)).all()
