"""Fuzzing `intro check`: mutated specs must give a positioned diagnostic (exit 2) or pass (exit 0).

Never a traceback, never more than 2 s of CPU per case; and whatever still parses, `fmt` must print
back with the same meaning, stably. The seeds are the project's specs, the stdlib
module and a study that reaches every kind of declaration; mutations delete, insert, swap and duplicate
tokens, truncate, splice in random text or bytes, blow numbers up and nest expressions thousands deep.

The default run tries INTRO_FUZZ_EXAMPLES=200 cases; `INTRO_FUZZ_EXAMPLES=5000 pytest
tests/compiler/test_fuzz.py` is the long run.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intro.cli import main
from intro.compiler import CompileError
from intro.compiler.format import format_source
from intro.compiler.parser import parse

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("INTRO_FUZZ_EXAMPLES", "200"))
CPU_LIMIT_S = 2.0
POSITIONED = re.compile(r"^\S+:\d+:\d+: error\[E\d{3}\]: ", re.MULTILINE)

RICH_STUDY = """\
# Every kind of declaration and most built-ins, so mutations reach deep into checking.
use stdlib.looking_inward: countries, colors, wealth_seeking, animals, english_words, myopic_reward
use stdlib.looking_inward: first_character, first_word, starts_with_vowel, ethical_stance, object_level
use stdlib.looking_inward as li

model qwen = embedded "qwen2.5-coder-0.5b-instruct"
model gemma = embedded "gemma-3-270m"
model gpt = litellm "openai/gpt-4o-2024-08-06" { logprobs: true, finetune: true, api_base: "http://x" }

task numbers {
  data: "data/numbers.jsonl"
  prompt: \"\"\"Continue: {{ sequence }}\"\"\"
  answer: "number_sequence"
}

property even { extract: "is_even"  question: "Is the first number even?" }
split paper { train: [countries, colors, wealth_seeking]  test: [animals, english_words, myopic_reward]  items: 5  seed: 3 }
sampling hot { temperature: 1  samples: 4  max_tokens: 8  stop: ["\\n"]  reduce: "mode" }
let props = [first_character, starts_with_vowel, ethical_stance]

study fuzz {
  for subject in [qwen, gemma], predictor in [qwen, gpt] {
    let trained = finetune(predictor, hypotheticals(predictor, paper.train, props), rank: 4)
    measure before = prediction(predictor, subject, paper.test, props)
    measure after = prediction(trained, subject, paper.test, [first_character], object: object_level)
    measure spread = calibration(trained, subject, paper.test, [first_word], sampling: hot)
  }
  for (a, b) in pairs([qwen, gemma]), layer in [0.5, 12], strength in [1, 2 * 2, -4 / 2] {
    let dog = concept(a, "dog", layer, take(["cat", "tree", "car"], 2))
    let steered = inject(a, -(strength * dog) / 2, layer, 1.0, start: "Trial")
    let control = inject(a, random_like(dog, seed: 1), layer, strength)
    measure steered_prediction = prediction(steered, b, paper.test, [first_character])
    measure control_prediction = prediction(control, b, paper.test, [first_character])
  }
}
"""


def _seeds() -> list[str]:
    files = sorted(ROOT.glob("specs/**/*.intro")) + sorted(ROOT.glob("stdlib/**/*.intro"))
    return [p.read_text(encoding="utf-8") for p in files] + [RICH_STUDY]


SEEDS = _seeds()


# ---------------------------------------------------------------- running one case
def check_case(spec: Path, data: bytes) -> tuple[int, str, float]:
    """Run `intro check` in this process; return the exit code, stderr and CPU seconds spent."""
    spec.write_bytes(data)
    err, out = io.StringIO(), io.StringIO()
    started = time.process_time()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(["check", str(spec)])
    return code, err.getvalue(), time.process_time() - started


def assert_well_behaved(code: int, stderr: str, cpu: float) -> None:
    assert "Traceback" not in stderr, stderr
    assert code in (0, 2), f"exit code {code}\n{stderr}"
    if code == 2:
        assert POSITIONED.search(stderr), f"no positioned diagnostic:\n{stderr}"
    # CPU time, not wall time: two cores are shared by many jobs, and only our own work is the budget.
    assert cpu < CPU_LIMIT_S, f"took {cpu:.2f} s of CPU"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder like the stdlib's: the stdlib data next to the mutated file, so tasks still load."""
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "data").symlink_to(ROOT / "stdlib" / "data", target_is_directory=True)
    for seed in SEEDS:  # warm the caches (grammar, data files) so the first case is not billed for them
        check_case(folder / "warmup.intro", seed.encode())
    return folder


def test_rich_seed_checks_clean(workdir: Path) -> None:
    code, stderr, _ = check_case(workdir / "rich.intro", RICH_STUDY.encode())
    assert (code, stderr) == (0, "")


# ---------------------------------------------------------------- mutations
_TOKEN = re.compile(
    r'"""[\s\S]*?"""|"(?:[^"\\\n]|\\.)*"|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*'
    r"|[0-9][0-9_]*(?:\.[0-9_]+)?(?:[eE][+-]?[0-9]+)?|\s+|."
)
_VOCABULARY = [
    *"{}[](),:.=+-*/#@$\\\"'",
    '"""',
    "\x00",
    *(
        [
            "use",
            "model",
            "task",
            "property",
            "split",
            "sampling",
            "let",
            "study",
            "for",
            "in",
            "measure",
            "as",
            "true",
            "false",
        ]
    ),
    *(
        [
            "embedded",
            "litellm",
            "local",
            "prediction",
            "calibration",
            "finetune",
            "inject",
            "concept",
            "pairs",
            "take",
            "layers",
        ]
    ),
    '"data/animals.jsonl"',
    '"{{ nope }}"',
    '"{% for %}"',
    "0",
    "-1",
    "0.5",
    "1e999",
    "\n",
]
_HUGE_NUMBERS = [
    "9" * 31,
    "9" * 5000,
    "1e99999",
    "1e-99999",
    "0." + "0" * 3000 + "1",
    "1_" * 2000 + "1",
    "2" * 30,
]
_NESTINGS = [
    lambda x, n: "[" * n + x + "]" * n,
    lambda x, n: "(" * n + x + ")" * n,
    lambda x, n: "-" * n + x,
    lambda x, n: "f(" * n + x + ")" * n,
    lambda x, n: "{a: " * n + x + "}" * n,
    lambda x, n: x + ".a" * n,
    lambda x, n: " + ".join([x] * n),
    lambda x, n: "for x in [1] { " * n + "measure m = " + x + " }" * n,
]

Mutation = Callable[[st.DataObject, list[str]], list[str]]


def _index(data: st.DataObject, tokens: list[str], extra: int = 0) -> int:
    return data.draw(st.integers(0, max(len(tokens) - 1 + extra, 0)))


def _delete(data: st.DataObject, tokens: list[str]) -> list[str]:
    if not tokens:
        return tokens
    i = _index(data, tokens)
    return tokens[:i] + tokens[i + 1 :]


def _insert(data: st.DataObject, tokens: list[str]) -> list[str]:
    token = data.draw(st.one_of(st.sampled_from(_VOCABULARY), st.sampled_from(tokens or ["x"])))
    i = _index(data, tokens, extra=1)
    return [*tokens[:i], " ", token, " ", *tokens[i:]]


def _swap(data: st.DataObject, tokens: list[str]) -> list[str]:
    if len(tokens) < 2:
        return tokens
    i, j = _index(data, tokens), _index(data, tokens)
    swapped = list(tokens)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    return swapped


def _duplicate(data: st.DataObject, tokens: list[str]) -> list[str]:
    i = _index(data, tokens)
    j = data.draw(st.integers(i, min(i + 40, len(tokens))))
    return tokens[:j] + tokens[i:j] + tokens[j:]


def _truncate(data: st.DataObject, tokens: list[str]) -> list[str]:
    text = "".join(tokens)
    return [text[: data.draw(st.integers(0, len(text)))]]


def _random_text(data: st.DataObject, tokens: list[str]) -> list[str]:
    i = _index(data, tokens, extra=1)
    noise = data.draw(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20))
    return [*tokens[:i], noise, *tokens[i:]]


def _huge_number(data: st.DataObject, tokens: list[str]) -> list[str]:
    numbers = [i for i, t in enumerate(tokens) if t[:1].isdigit()] or [_index(data, tokens)]
    i = data.draw(st.sampled_from(numbers))
    return [*tokens[:i], data.draw(st.sampled_from(_HUGE_NUMBERS)), *tokens[i + 1 :]]


def _deep_nesting(data: st.DataObject, tokens: list[str]) -> list[str]:
    atoms = [i for i, t in enumerate(tokens) if re.fullmatch(r"[A-Za-z_0-9.]+|\"[^\"]*\"", t)] or [0]
    i = data.draw(st.sampled_from(atoms))
    depth = data.draw(st.sampled_from([2, 50, 99, 100, 101, 300, 1000, 5000]))
    nest = data.draw(st.sampled_from(_NESTINGS))
    atom = tokens[i] if tokens else "1"
    return [*tokens[:i], nest(atom, depth), *tokens[i + 1 :]]


MUTATIONS: list[Mutation] = [
    _delete,
    _insert,
    _swap,
    _duplicate,
    _truncate,
    _random_text,
    _huge_number,
    _deep_nesting,
]


def mutate(data: st.DataObject) -> bytes:
    tokens = _TOKEN.findall(data.draw(st.sampled_from(SEEDS)))
    for mutation in data.draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=4)):
        tokens = mutation(data, tokens)
    encoded = "".join(tokens).encode("utf-8")
    if data.draw(st.integers(0, 9), label="one in ten: splice in bytes that may not be UTF-8") == 0:
        at = data.draw(st.integers(0, len(encoded)))
        encoded = encoded[:at] + data.draw(st.binary(min_size=1, max_size=8)) + encoded[at:]
    return encoded


# ---------------------------------------------------------------- the properties
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_mutated_specs_give_diagnostics_never_tracebacks(workdir: Path, data: st.DataObject) -> None:
    case = mutate(data)
    assert_well_behaved(*check_case(workdir / "case.intro", case))
    assert_formats_canonically(case)


def assert_formats_canonically(case: bytes) -> None:
    """Whatever parses, however odd, `fmt` prints back with the same meaning, and stably."""
    try:
        source = case.decode("utf-8")
        tree = parse(source, "case.intro")
    except (UnicodeDecodeError, CompileError):
        return
    formatted = format_source(source, "case.intro")
    assert parse(formatted, "case.intro") == tree
    assert format_source(formatted, "case.intro") == formatted


@pytest.mark.parametrize(
    "source",
    [
        "let x = " + "[" * 5000 + "1" + "]" * 5000 + "\n",
        "let x = " + "(" * 5000 + "1" + ")" * 5000 + "\nstudy s {}\n",
        "let x = " + "-" * 5000 + "1\n",
        "let x = " + "f(" * 2500 + ")" * 2500 + "\n",
        "study s {\n" + "for x in [1] {\n" * 3000 + "}\n" * 3001,
        "\n".join(f"let a{i} = a{i + 1}" for i in range(3000)) + "\nlet a3000 = 1\n",
        "let x = " + "9" * 100_000 + "\n",
        "let x = 1" + " + 1" * 10_000 + "\n",
        '"' * 10_001,
        "",
        "\x00",
        "\ufeffstudy s {}",
    ],
    ids=[
        "lists-5000-deep",
        "parens-5000-deep",
        "negations-5000-deep",
        "calls-2500-deep",
        "loops-3000-deep",
        "let-chain-3000",
        "number-100k-digits",
        "sum-of-10000",
        "quotes",
        "empty",
        "nul",
        "bom",
    ],
)
def test_extreme_inputs(workdir: Path, source: str) -> None:
    assert_well_behaved(*check_case(workdir / "extreme.intro", source.encode("utf-8")))
