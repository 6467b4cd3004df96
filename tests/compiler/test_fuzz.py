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
import json
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intro.cli import main
from intro.compiler import CompileError
from intro.compiler.datasets import clear_cache
from intro.compiler.format import format_source
from intro.compiler.parser import parse

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("INTRO_FUZZ_EXAMPLES", "200"))
CPU_LIMIT_S = 2.0
POSITIONED = re.compile(r"^\S+:\d+:\d+: error\[E\d{3}\]: ", re.MULTILINE)

RICH_STUDY = """\
# Every kind of declaration and most primitives, so mutations reach deep into checking.
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
    let trained = finetune(predictor, li.hypothetical_examples(predictor, paper.train, props), rank: 4)
    measure before = li.predict_property(predictor, subject, paper.test, first_character)
    measure after = li.predict_property(trained, subject, paper.test, ethical_stance, object: object_level).accuracy
    measure spread = li.calibration_of(trained, subject, paper.test, first_word, sampling: hot)
  }
  for (a, b) in pairs([qwen, gemma]), layer in [0.5, 12], strength in [1, 2 * 2, -4 / 2] {
    let dog = concept(a, "dog", layer, take(["cat", "tree", "car"], 2))
    let steered = steer(a, -(strength * dog) / 2, layer, 1.0, start: "Trial")
    let control = steer(a, random_like(dog, seed: 1), layer, strength)
    let asked = prompts(paper.test, "{{ object_prompt }} Answer in one word.", system: "Be brief.")
    let words = extract(generate(steered, asked, hot), nth_word(1))
    measure steered_words = rate(extract(generate(steered, asked, hot), contains("dog")), over: "samples")
    measure agreement = accuracy(words, extract(generate(b, asked), nth_word(1)), by: "task")
    measure shift = difference(mean(score(steered, asked, "Yes")), mean(score(control, asked, "Yes")))
    measure picked = probability(choose(b, asked, ["Yes", "No"]), "Yes")
  }
}
"""


# Seeds left out: the paper-scale concept studies. With the paper's word lists, controls and grader prompts
# they lower to about 70,000 steps each and check in 2-3 s of CPU on their own, over the budget before any
# mutation grows their sweep. Their mini twins call the same stdlib functions, so mutations still reach them.
TOO_BIG_TO_FUZZ = ("concept_experiments.intro", "concept_injection.intro")


def _seeds() -> list[str]:
    files = sorted(ROOT.glob("specs/**/*.intro")) + sorted(ROOT.glob("stdlib/**/*.intro"))
    files = [p for p in files if p.name not in TOO_BIG_TO_FUZZ]
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


def test_a_loop_over_a_list_that_starts_with_a_list_checks(workdir: Path) -> None:
    # found by the fuzz (`layer in [0.5, 12]` nested as `[[0.5], 12]`): labelling the values as a tuple
    # loop's arms read the first value of 12
    source = RICH_STUDY.replace("layer in [0.5, 12]", "layer in [[0.5], 12]")
    assert source != RICH_STUDY
    code, stderr, cpu = check_case(workdir / "nested_loop.intro", source.encode())
    assert_well_behaved(code, stderr, cpu)


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
            "generate",
            "choose",
            "finetune",
            "steer",
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


# ---------------------------------------------------------------- data files, templates, odd paths
# The same properties when what is broken is not the spec's text but what it reads: a task's JSONL or CSV
# rows (truncated, bytes flipped, values of the wrong type, fields missing, nested 100,000 deep, huge) and
# its prompt template; or the path itself (a FIFO, /dev/zero, a directory, a symlink out of the folder).
# `intro check` runs first and, when it passes, `intro compile` renders every prompt. Two guards watch each
# case: an audit hook fails it the moment anything opens a file that is not a regular file (so a FIFO
# cannot block and /dev/zero cannot fill memory), and a wall-clock alarm fails it when it sits blocked for
# 2 s without using the CPU.

DATA_SPEC = """\
use stdlib.looking_inward: first_character, predict_property

model qwen = embedded "qwen2.5-coder-0.5b-instruct"

task rows {
  data: DATA
  prompt: PROMPT
  IDLINE
}

split part { test: [rows]  items: 3 }

study d {
  measure m = predict_property(qwen, qwen, part.test, first_character)
}
"""

_DATA_ROWS = [
    {"id": f"r{i}", "sequence": f"cat, dog, {word}", "split": "val", "n": i}
    for i, word in enumerate(["cow", "owl", "eel", "bat", "elk"])
]
_PROMPTS = [
    "Continue: {{ sequence }}",
    "{% for part in sequence.split(', ') %}{{ part | upper }} {% endfor %}",
    "{{ sequence }} ({{ n + 1 }}) {{ id }}",
]
_TEMPLATE_BITS = [
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "{{ missing }}",
    "{{ sequence[0] }}",
    "{{ sequence.__class__.__mro__ }}",
    "{{ n / 0 }}",
    "{{ sequence * 1000 }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "{{ '%s' % sequence }}",
    "{% include 'x' %}",
    "{% raw %}",
    "{{ sequence|join('-') }}",
    "{{ n ** 100 }}",
    "{{ self }}",
    "\x00",
    "\\",
    '"',
]
_WRONG_VALUES = [None, True, 0, -1, 1.5, "", "x" * 1000, [], {}, [1, [2]], {"a": {"b": 1}}, 1e308]
SPECIAL_PATHS = ["special/fifo.jsonl", "special/zero.jsonl", "special/folder.jsonl", "special/out.jsonl"]


def _jsonl(rows: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _csv(rows: list[dict[str, object]]) -> bytes:
    names = list(dict.fromkeys(key for row in rows for key in row))
    lines = [",".join(names)] + [",".join(_csv_field(row.get(name, "")) for name in names) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def _csv_field(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _mutate_rows(data: st.DataObject, rows: list[dict[str, object]]) -> list[dict[str, object]]:
    rows = [dict(row) for row in rows[: data.draw(st.integers(0, len(rows)))] or rows]
    for _ in range(data.draw(st.integers(0, 3))):
        row = data.draw(st.sampled_from(rows))
        key = data.draw(st.sampled_from(["id", "sequence", "split", "n", "extra"]))
        action = data.draw(st.sampled_from(["drop", "wrong", "deep", "huge", "duplicate"]))
        if action == "drop":
            row.pop(key, None)
        elif action == "wrong":
            row[key] = data.draw(st.sampled_from(_WRONG_VALUES))
        elif action == "deep":
            depth = data.draw(st.sampled_from([2, 99, 100, 101, 1000, 100_000]))
            row[key] = _Raw("[" * depth + "1" + "]" * depth)
        elif action == "huge":
            row[key] = data.draw(st.sampled_from(["y" * 1_000_000, _Raw("9" * 5000), _Raw("1e999999")]))
        else:
            row[key] = rows[0].get(key, "r0")
    return rows


class _Raw(str):
    """A value written into the JSON text as is (deep nesting, numbers no float can hold)."""


def _dumps_raw(rows: list[dict[str, object]]) -> bytes:
    lines = []
    for row in rows:
        raws = {key: value for key, value in row.items() if isinstance(value, _Raw)}
        text = json.dumps({key: (f"@RAW:{key}@" if key in raws else value) for key, value in row.items()})
        for key, value in raws.items():
            text = text.replace(json.dumps(f"@RAW:{key}@"), str(value))
        lines.append(text + "\n")
    return "".join(lines).encode()


def _mutate_bytes(data: st.DataObject, raw: bytes) -> bytes:
    for _ in range(data.draw(st.integers(0, 3))):
        kind = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if kind == "truncate":
            raw = raw[:at]
        elif kind == "flip" and raw:
            raw = raw[:at] + bytes([raw[at] ^ (1 << data.draw(st.integers(0, 7)))]) + raw[at + 1 :]
        else:
            raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=6)) + raw[at:]
    return raw


def _template(data: st.DataObject) -> str:
    text = data.draw(st.sampled_from(_PROMPTS))
    for _ in range(data.draw(st.integers(0, 3))):
        at = data.draw(st.integers(0, len(text)))
        text = text[:at] + data.draw(st.sampled_from(_TEMPLATE_BITS)) + text[at:]
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


@attrs.frozen
class DataCase:
    spec: str
    data_name: str
    data: bytes | None  # None: the path is one of the odd ones in special/
    spec_is_fifo: bool


def data_case(data: st.DataObject) -> DataCase:
    suffix = data.draw(st.sampled_from([".jsonl", ".csv"]))
    rows = _mutate_rows(data, _DATA_ROWS)
    content = _dumps_raw(rows) if suffix == ".jsonl" else _csv(rows)
    content = _mutate_bytes(data, content)
    name = f"data/case{suffix}"
    if data.draw(st.integers(0, 5), label="one in six: an odd path") == 0:
        name = data.draw(st.sampled_from(SPECIAL_PATHS))
    id_line = data.draw(st.sampled_from(["", 'id: "id"', 'id: "sequence"', 'id: "n"', 'id: "nope"']))
    spec = DATA_SPEC.replace("DATA", json.dumps(name)).replace("PROMPT", _template(data))
    spec = spec.replace("IDLINE", id_line)
    fifo = data.draw(st.integers(0, 19), label="one in twenty: the spec is a FIFO") == 0
    return DataCase(spec, name, None if name.startswith("special/") else content, fifo)


class _NonRegularOpen(Exception):
    """Raised by the audit hook when a case opens something that is not a regular file."""


class _Hang(Exception):
    """Raised by the alarm when a case has sat blocked, without using the CPU, for 2 s."""


# The hook is process-wide and permanent: it acts only while a case runs (_WATCH_ON), and lists in
# _WATCHING the non-regular paths the case tried to open.
_WATCHING: list[str] = []
_WATCH_ON = [False]


def _audit(event: str, args: tuple[object, ...]) -> None:
    if not _WATCH_ON[0] or event != "open" or not isinstance(args[0], str | bytes | os.PathLike):
        return
    try:
        mode = os.stat(args[0]).st_mode
    except (OSError, ValueError):
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        _WATCHING.append(os.fsdecode(args[0]))
        raise _NonRegularOpen(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Fail on opening a non-regular file, and on 2 s blocked (wall clock passing, CPU not)."""
    wall, cpu = time.monotonic(), time.process_time()

    def alarm(signum: int, frame: object) -> None:
        elapsed, used = time.monotonic() - wall, time.process_time() - cpu
        if used < 0.25 * elapsed or elapsed > 30:
            raise _Hang(f"blocked: {elapsed:.1f} s of wall clock, {used:.2f} s of CPU")
        signal.setitimer(signal.ITIMER_REAL, 1.0)  # busy, not blocked: the CPU budget judges it

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    _WATCHING.clear()
    _WATCH_ON[0] = True
    try:
        yield
    finally:
        _WATCH_ON[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


HANG_S = 2.0


def run_cli(*args: str) -> tuple[int, str, float]:
    """`intro ARGS` in this process, guarded; the exit code, stderr and CPU seconds spent."""
    err, out = io.StringIO(), io.StringIO()
    started = time.process_time()
    with guarded(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(list(args))
    assert not _WATCHING, f"opened a file that is not a regular file: {_WATCHING}"
    return code, err.getvalue(), time.process_time() - started


@pytest.fixture(scope="module")
def datadir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder for data cases, with a FIFO, /dev/zero, a directory and an outside file in special/."""
    folder = tmp_path_factory.mktemp("datafuzz")
    (folder / "data").mkdir()
    special = folder / "special"
    special.mkdir()
    os.mkfifo(special / "fifo.jsonl")
    (special / "zero.jsonl").symlink_to("/dev/zero")
    (special / "folder.jsonl").mkdir()
    outside = tmp_path_factory.mktemp("outside") / "secret.jsonl"
    outside.write_bytes(_jsonl(_DATA_ROWS))
    (special / "out.jsonl").symlink_to(outside)
    os.mkfifo(folder / "fifo.intro")
    return folder


def run_data_case(folder: Path, case: DataCase) -> None:
    clear_cache()
    if case.data is not None:
        (folder / case.data_name).write_bytes(case.data)
    spec = folder / "fifo.intro" if case.spec_is_fifo else folder / "case.intro"
    if not case.spec_is_fifo:
        spec.write_text(case.spec, encoding="utf-8")
    for extra in ([], ["--allow-outside"]):
        code, stderr, cpu = run_cli("check", *extra, str(spec))
        assert_well_behaved(code, stderr, cpu)
        if code == 0:
            code, stderr, cpu = run_cli("compile", *extra, str(spec), "-o", str(folder / "plan.json"))
            assert_well_behaved(code, stderr, cpu)


@settings(
    max_examples=max(EXAMPLES // 4, 10),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_mutated_data_and_templates_give_diagnostics_never_tracebacks(
    datadir: Path, data: st.DataObject
) -> None:
    run_data_case(datadir, data_case(data))


@pytest.mark.parametrize("name", [*SPECIAL_PATHS, "data/../special/zero.jsonl"])
def test_every_odd_data_path_is_refused_unread(datadir: Path, name: str) -> None:
    spec = DATA_SPEC.replace("DATA", json.dumps(name)).replace("PROMPT", '"{{ sequence }}"')
    run_data_case(datadir, DataCase(spec.replace("IDLINE", ""), name, None, False))


def test_a_fifo_spec_is_refused_unread(datadir: Path) -> None:
    run_data_case(datadir, DataCase("", "data/case.jsonl", _jsonl(_DATA_ROWS), True))
