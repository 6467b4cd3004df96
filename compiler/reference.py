"""The language reference, generated from the compiler's own tables.

Functions come from the builtin registry (`builtins.FUNCTIONS`: parameters, types, defaults, what a call
returns, its doc and an example), declaration fields from `declarations.FIELDS`, property extractors from
the stdlib's registry, and the stdlib modules' names from their `.intro` files. `docs/language.md` is this
module's output (`python -m intro.compiler.reference > docs/language.md`); `intro doc NAME` prints one
entry. Every example is real: together they form one spec (`example_spec`), and a test checks it.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from typing import Any

from attrs import frozen

from intro.stdlib.extractors import EXTRACTORS

from . import ast, ir
from .builtins import FUNCTIONS
from .declarations import ANSWER_KINDS, FIELDS, REDUCERS
from .diagnostics import did_you_mean
from .models import EMBEDDED
from .parser import parse
from .types import CHECKS, REQUIRED, Function, describe_type

REGENERATE = "python -m intro.compiler.reference > docs/language.md"


@frozen
class Construct:
    """A declaration, statement or the expression syntax: how it is written, what it means, an example."""

    name: str
    syntax: tuple[str, ...]
    doc: str
    example: str
    in_study: bool = False  # the example is a statement inside a study block


CONSTRUCTS: tuple[Construct, ...] = (
    Construct(
        "use",
        ("use MODULE [as ALIAS]", "use MODULE: NAME, NAME, ..."),
        "Imports a module. `stdlib.NAME` is a module of the standard library (see below); any other dotted "
        "name is a `.intro` file next to the importing file (`use lib.words` reads `lib/words.intro`). The "
        "first form binds the module to its last name or ALIAS, and its names are read as `li.animals`; the "
        "second binds the listed names themselves. A module is a file of declarations; only the spec's own "
        "studies run.",
        "use stdlib.looking_inward as li\nuse stdlib.introspection as intro",
    ),
    Construct(
        "model",
        ('model NAME = BACKEND "LOCATOR" [{ OPTIONS }]',),
        f"Declares a model. Backends: `embedded` (a model shipped as a Python package: "
        f"{', '.join(f'`{name}`' for name in EMBEDDED)}), `local` (a folder of transformers weights, "
        "relative to the spec) and `litellm` (a provider's model id; it generates, and gives logprobs or "
        "finetunes only where the options say so). Embedded and local models run in-process and can do "
        "everything, activation steering included. intro never downloads weights. The serving options "
        "(`api_base`, `api_key_env`, `concurrency`, `timeout`, `device`, `batch_size`) say where and how a "
        "model runs and are not part of its identity, so they change no hash.",
        'model qwen = embedded "qwen2.5-coder-0.5b-instruct"\nmodel gemma = embedded "gemma-3-270m"\n'
        'model gpt = litellm "openai/gpt-4o-2024-08-06" { logprobs: true, finetune: true }',
    ),
    Construct(
        "task",
        ("task NAME { FIELDS }",),
        "A dataset and the prompt asked about each of its rows. `data` is a JSONL or CSV file next to the "
        "spec whose `id` column (or the column `id` names) keys each row; a row's `split` field (`train` or "
        "`val`) puts it in a split's train or test part (without one, about 1 id in 5 is held out). "
        "`prompt` is a jinja2 template over a row, rendered in a sandbox; `intro check` renders it against "
        f"every row. Answer kinds: {', '.join(f'`{kind}`' for kind in ANSWER_KINDS)}.",
        'task capitals {\n  data: "data/capitals.jsonl"\n'
        '  prompt: "What is the capital of {{ country }}? Answer with the city only."\n}',
    ),
    Construct(
        "property",
        ("property NAME { extract: EXTRACTOR, question: TEMPLATE }",),
        "A property of a response, and the hypothetical question that asks a model to predict it. "
        "`extract` names one of the extractors below; a property applies to the tasks whose answer kind it "
        "reads, whose rows carry the fields it needs (`ethical_stance`: `matching`) and, for a choice task, "
        "that offer the options it is about (`among_a_or_c`: A to D). The question is a template over the "
        "task's row.",
        'property first_word {\n  extract: "first_word"\n'
        '  question: "What is the first word of the response you gave? Respond only with that word."\n}',
    ),
    Construct(
        "split",
        ("split NAME { train: [TASK, ...], test: [TASK, ...], items: N, seed: N }",),
        "Which tasks are trained on and which are held out. `NAME.train` and `NAME.test` are task "
        "selections: `items` rows of each task from that part, drawn with `seed`. A task cannot be in both "
        "parts, and each needs rows in every part it is in.",
        "split mini {\n  train: [li.countries, li.colors]\n  test: [li.animals, capitals]\n"
        "  items: 12\n  seed: 7\n}",
    ),
    Construct(
        "sampling",
        ("sampling NAME { FIELDS }",),
        "How replies are sampled. The seed and sample index are part of every request's key, so sampled "
        f"results are reproducible and cached. Reducers: {', '.join(f'`{r}`' for r in REDUCERS)}.",
        'sampling creative {\n  temperature: 1\n  samples: 5\n  max_tokens: 24\n  reduce: "mode"\n}',
    ),
    Construct(
        "let",
        ("let NAME = EXPR",),
        "Names a value. At the top of a file it is a constant (evaluated when first used, importable from a "
        "module); inside a study block it is local to the block and evaluated at each loop point. A model "
        "derived by `finetune` or `steer` takes the let's name in step ids.",
        "let props = [li.first_character, first_word]\nlet baseline = take(intro.baseline, 20)\n"
        'let dog = concept(qwen, "dog", 16, baseline)',
    ),
    Construct(
        "fn",
        ("fn NAME(PARAM, PARAM: TYPE, PARAM: TYPE = DEFAULT, ...) { let ... return EXPR }",),
        "Declares a function: `let`s, then one `return`. A parameter's type is one of "
        f"{', '.join(f'`{name}`' for name in CHECKS)} (`any` when left out); a default is an expression, "
        "evaluated in the function's own module. A call binds its arguments as a builtin's are bound "
        "(in order, then by name) and checks their types. The body sees its parameters and its module's "
        "names, never the caller's; a function cannot call itself, directly or through others. Functions "
        "are values, imported with `use` like any declaration. One that returns a record of measurements "
        "(`{ a: ..., b: ... }`) gives a `measure g = f(...)` one measure per field: `g.a`, `g.b`.",
        "fn self_prediction(model: model, tasks: selection, about: property = first_word) {\n"
        "  let own = li.predict_property(model, model, tasks, about)\n"
        "  return { own: own.accuracy, cross: li.predict_property(gemma, model, tasks, about).accuracy }\n}",
    ),
    Construct(
        "return",
        ("return EXPR",),
        "Ends a function: the value of a call. It is the last statement of the function's body.",
        "fn doubled(vector: vector) {\n  return 2 * vector\n}\nlet stronger = doubled(dog)",
    ),
    Construct(
        "study",
        ("study NAME { for ... | let ... | measure ... }",),
        "What to run: a block of `for`, `let` and `measure` statements. `intro run` writes a study's results "
        "to `runs/NAME/`, one cube per measure. A spec needs at least one study; `intro compile` and "
        "`intro run` take `--study NAME` when a file declares several.",
        "study pilot {\n  for subject in [qwen, gemma], predictor in [qwen, gemma] {\n"
        "    measure untrained = li.predict_property(predictor, subject, mini.test, first_word)\n  }\n}",
    ),
    Construct(
        "measure",
        ("measure NAME = EXPR",),
        "Inside a study: a measurement (texts, values, an estimate or a comparison: `generate`, `extract`, "
        "`rate`, `accuracy`, ...) "
        "to compute at this point of the sweep, or a record of measurements (a function's results), "
        "measured as one measure per field, `NAME.FIELD`. The loop variables around it are the dimensions "
        "of its cube; a measure is declared once, at one place in the study.",
        "measure answers = generate(qwen, prompts(mini.test), creative)\n"
        "measure selves = self_prediction(qwen, mini.test)",
        in_study=True,
    ),
    Construct(
        "for",
        ("for NAME in LIST, NAME in LIST { ... }", "for (NAME, NAME) in LIST { ... }"),
        "Inside a study: sweeps an axis. Several bindings are a cross product; a tuple target unpacks "
        "tuples (`pairs`, `product`, or arms written out). Each binding becomes a dimension of the cubes "
        "measured inside, with models named by their declared name. A tuple binding is one dimension, named "
        "after its first name and labelled by each tuple's first value (by all its values, joined with `/`, "
        'where the first ones repeat): arms like `("concept", v), ("random", r)` give one `arm` axis. A '
        "loop over an empty list is an error.",
        "for (subject, other) in pairs([qwen, gemma]) {\n"
        "  let tuned = finetune(subject, li.hypothetical_examples(subject, mini.train, props))\n"
        "  measure cross = li.predict_property(other, tuned, mini.test, first_word)\n}\n"
        'for (arm, predictor) in [("self", qwen), ("cross", gemma)] {\n'
        "  measure arms = li.predict_property(predictor, qwen, mini.test, first_word)\n}",
        in_study=True,
    ),
    Construct(
        "expressions",
        (
            "NAME  NAME.FIELD  F(ARG, NAME: ARG)  [A, B]  (A, B)  { key: value }",
            '"text"  """long text"""  1  2.5e-4',
        ),
        'Literals: strings (`\\n`, `\\t`, `\\"` and `\\\\` escapes; triple quotes span lines), numbers, '
        "`true` and `false`, lists and records (a record is a chat turn of `conversation`). "
        "`(A, B)` and `(A,)` are lists too (a pair to unpack in a `for`); `(A)` is A. `NAME.FIELD` reads a "
        "record's field, a module's name or a declaration's field (`mini.train`, `creative.temperature`, "
        "`first_word.question`, `qwen.name`). "
        "Positional arguments bind a function's parameters in order, named ones (`name: value`) by name. `+ - * /` work on numbers; `number * vector`, "
        "`vector * number`, `vector / number` and `-vector` scale a steering vector. `< <= > >=` compare "
        "numbers and `== !=` also strings, booleans and lists, giving `true` or `false` (a function states "
        "what it asks of its arguments with `require`); comparisons do not chain. `#` starts a comment.",
        'let strong = 2 * dog\nlet opposite = -dog\nlet question = [{ user: "Do you detect a thought?" }]\n'
        'let long = """two\nlines"""\nlet pair = (qwen, gemma)\nlet hot = creative.temperature\n'
        "let warm = hot > 0",
    ),
)

# What each declaration field means; a test keeps this in step with `declarations.FIELDS`.
FIELD_DOCS: dict[str, dict[str, str]] = {
    "model": {
        "logprobs": "litellm: the provider returns logprobs",
        "finetune": "litellm: the provider can finetune the model",
        "api_base": "litellm: the provider's URL",
        "api_key_env": "litellm: the environment variable holding the API key",
        "concurrency": "litellm: requests in flight at once",
        "timeout": "litellm: seconds per request",
        "device": "in-process: the torch device (`cpu`, `cuda`, ...)",
        "batch_size": "in-process: prompts per forward pass",
    },
    "task": {
        "data": "a JSONL or CSV file next to the spec, one row per item",
        "prompt": "a jinja2 template over a row (`{{ field }}`)",
        "answer": "the kind of answer the prompt asks for",
        "choices": "the options of a `choice` task",
        "system": "a system message before every prompt",
        "id": "the column that keys each row",
    },
    "property": {
        "extract": "the extractor that reads the property off a response",
        "question": "the hypothetical question about it (a jinja2 template)",
    },
    "split": {
        "train": "the tasks trained on",
        "test": "the held-out tasks",
        "items": "rows drawn from each task's part (1 to 1,000,000)",
        "seed": "the seed of the draw",
    },
    "sampling": {
        "temperature": "the sampling temperature, 0 to 5",
        "samples": "samples per prompt (1 to 10,000)",
        "max_tokens": "the most tokens of a reply (1 to 100,000)",
        "seed": "the sampling seed",
        "stop": "strings that end a reply",
        "reduce": "how several samples become one behaviour: the most common (`mode`) or the `first`",
    },
}

# Files the example spec reads, next to it: what they hold (the test writes them).
EXAMPLE_FILES = {
    "data/capitals.jsonl": "rows with `id`, `country` and `split` (`train` or `val`)",
    "vectors/dog.safetensors": "a safetensors file with one tensor named `vector`",
}


# ---------------------------------------------------------------- the example spec
def example_name(function: Function) -> str:
    """The top-level name the example spec binds `function`'s example to."""
    return f"example_{function.name}"


def example_spec() -> str:
    """One spec holding every example: the constructs' in order, then each function's as a `let`."""
    parts = [c.example for c in CONSTRUCTS if not c.in_study]
    parts += [f"let {example_name(f)} = {f.example}" for f in FUNCTIONS.values()]
    statements = "\n".join(_indent(c.example, 1) for c in CONSTRUCTS if c.in_study)
    parts.append(f"study statements {{\n{statements}\n}}")
    return "\n\n".join(parts) + "\n"


def _indent(text: str, levels: int) -> str:
    return "\n".join("  " * levels + line if line else line for line in text.splitlines())


# ---------------------------------------------------------------- values as written in a spec
def show_value(value: Any) -> str:
    """A default value the way a spec would write it."""
    match value:
        case None:
            return "none"
        case bool():
            return str(value).lower()
        case int() | float():
            return _number(value)
        case str():
            return json.dumps(value, ensure_ascii=False)
        case tuple():
            return "[" + ", ".join(show_value(v) for v in value) + "]"
        case ir.Sampling():
            return _sampling(value)
    return repr(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def _sampling(value: ir.Sampling) -> str:
    usual = ir.Sampling()
    shown = ["temperature", "samples", "max_tokens"]
    shown += [f for f in ("seed", "stop", "reduce") if getattr(value, f) != getattr(usual, f)]
    return "{ " + ", ".join(f"{f}: {show_value(getattr(value, f))}" for f in shown) + " }"


def typed(type_: str, default: Any) -> str:
    """A parameter or field's type, and its default unless it is required: `sampling = { ... }`."""
    shown = describe_type(type_)
    return f"{shown} (required)" if default is REQUIRED else f"{shown} = {show_value(default)}"


# ---------------------------------------------------------------- the stdlib
@frozen
class StdlibModule:
    name: str  # as `use` names it: stdlib.looking_inward
    doc: str  # its leading comment
    exports: tuple[tuple[str, tuple[str, ...]], ...]  # (kind, names) in file order of first appearance


def stdlib_modules() -> tuple[StdlibModule, ...]:
    """Each `.intro` module of the standard library, with its top-level names by kind."""
    folder = resources.files("intro.stdlib")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".intro")), key=lambda f: f.name)
    return tuple(_stdlib_module(f.name.removesuffix(".intro"), f.read_text("utf-8")) for f in files)


def _stdlib_module(stem: str, source: str) -> StdlibModule:
    exports: dict[str, list[str]] = {}
    for kind, name in _top_level(parse(source, f"stdlib/{stem}.intro")):
        exports.setdefault(kind, []).append(name)
    doc = " ".join(line.lstrip("#").strip() for line in _leading_comment(source))
    return StdlibModule(f"stdlib.{stem}", doc, tuple((k, tuple(v)) for k, v in exports.items()))


def _top_level(module: ast.Module) -> Iterator[tuple[str, str]]:
    for item in module.items:
        match item:
            case ast.ModelDecl():
                yield "model", item.name
            case ast.Decl():
                yield item.kind, item.name
            case ast.Let():
                yield "let", item.name
            case ast.FnDecl():
                yield "fn", item.name


def _leading_comment(source: str) -> list[str]:
    lines = []
    for line in source.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


# ---------------------------------------------------------------- lookup
def names() -> dict[str, tuple[str, ...]]:
    """Every entry `intro doc` knows, by group."""
    return {
        "language": tuple(c.name for c in CONSTRUCTS),
        "functions": tuple(FUNCTIONS),
        "stdlib modules": tuple(m.name for m in stdlib_modules()),
    }


def entry_text(name: str) -> str | None:
    """One entry for the terminal: a function, a construct or a stdlib module; None when there is none."""
    if name in FUNCTIONS:
        return _function_text(FUNCTIONS[name])
    construct = next((c for c in CONSTRUCTS if c.name == name), None)
    if construct is not None:
        return _construct_text(construct)
    module = next((m for m in stdlib_modules() if m.name == name), None)
    return _module_text(module) if module is not None else None


def unknown_entry(name: str) -> str:
    """The one line `intro doc` prints for a name it does not know."""
    every = [n for group in names().values() for n in group]
    hint = did_you_mean(name, every)
    return f"no reference entry '{name}'" + (f"; {hint[0]}" if hint else "") + " (`intro doc` lists them)"


def index_text() -> str:
    lines = [f"{group}: {', '.join(entries)}" for group, entries in names().items()]
    lines.append("`intro doc NAME` prints one entry; docs/language.md has them all.")
    return "\n".join(lines)


# ---------------------------------------------------------------- terminal text
def signature(function: Function) -> str:
    return f"{function.name}({', '.join(p.name for p in function.params)}) -> {function.returns}"


def _function_text(function: Function) -> str:
    lines = [signature(function), "", _wrap(function.doc)]
    if function.params:
        lines += ["", "parameters:", *_columns((p.name, typed(p.type, p.default)) for p in function.params)]
    lines += ["", "example (the names are those of the language examples, e.g. `intro doc let`):"]
    lines.append(_indent(function.example, 1))
    return "\n".join(lines)


def _construct_text(construct: Construct) -> str:
    lines = [*construct.syntax, "", _wrap(construct.doc)]
    table = FIELDS.get(construct.name)
    if table is not None:
        rows = [(field, typed(t, d), FIELD_DOCS[construct.name][field]) for field, (t, d) in table.items()]
        lines += ["", "fields:", *_columns(rows)]
    if construct.name == "property":
        lines += ["", "extractors (the answer kinds each reads, what it gives):", *_columns(_extractors())]
    lines += ["", "example:", _indent(construct.example, 1)]
    return "\n".join(lines)


def _module_text(module: StdlibModule) -> str:
    lines = [f"use {module.name}", "", _wrap(module.doc), ""]
    lines += [f"{kind}: {', '.join(members)}" for kind, members in module.exports]
    return "\n".join(lines)


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=100, break_on_hyphens=False)


def _columns(rows: Iterable[tuple[str, ...]]) -> list[str]:
    """Rows as indented, aligned columns (the last one is not padded)."""
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  " + "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows
    ]


def _extractors() -> Iterator[tuple[str, str, str]]:
    """Each property extractor: its name, the answer kinds it reads, what it gives."""
    for name, extractor in EXTRACTORS.items():
        yield name, ", ".join(sorted(extractor.reads)), extractor.description


# ---------------------------------------------------------------- markdown
def markdown() -> str:
    """docs/language.md."""
    sections = [_md_head(), "## The language", *(_md_construct(c) for c in CONSTRUCTS)]
    sections += ["## Functions", _md_functions_intro(), *(_md_function(f) for f in FUNCTIONS.values())]
    sections += ["## The standard library", *(_md_module(m) for m in stdlib_modules())]
    return "\n\n".join(sections) + "\n"


def _md_head() -> str:
    groups = names()
    contents = "\n".join(
        f"- {group}: {', '.join(_link(n) for n in entries)}" for group, entries in groups.items()
    )
    return (
        "# The intro language\n\n"
        f"Generated from the compiler's tables by `{REGENERATE}`; do not edit it by hand. "
        "`intro doc NAME` prints one entry in the terminal.\n\n"
        "Every example here is checked by the test suite: the language examples, in order, form one spec, "
        "and each function's example is evaluated in it, so its names (`qwen`, `li`, `mini`, `props`, "
        "`dog`, ...) are the ones declared there. The spec's folder holds:\n\n"
        + "\n".join(f"- `{path}`: {what}" for path, what in EXAMPLE_FILES.items())
        + "\n\n"
        + contents
    )


def _link(name: str) -> str:
    return f"[`{name}`](#{name.replace('.', '')})"


def _md_construct(construct: Construct) -> str:
    parts = [f"### {construct.name}", _code("\n".join(construct.syntax), ""), construct.doc]
    table = FIELDS.get(construct.name)
    if table is not None:
        rows = [
            (f"`{f}`", describe_type(t), _md_default(d), FIELD_DOCS[construct.name][f])
            for f, (t, d) in table.items()
        ]
        parts.append(_md_table(("field", "type", "default", "meaning"), rows))
    if construct.name == "property":
        extractors = [(f"`{name}`", reads, doc) for name, reads, doc in _extractors()]
        parts.append(_md_table(("extractor", "reads answers", "gives"), extractors))
    parts.append(_code(construct.example))
    return "\n\n".join(parts)


def _md_functions_intro() -> str:
    return (
        "Positional arguments bind parameters in order and named ones by name "
        "(`generate(qwen, prompts(mini.test), sampling: creative)`); a parameter with a default may be "
        "left out. A builtin's name cannot be declared again."
    )


def _md_function(function: Function) -> str:
    rows = [(f"`{p.name}`", describe_type(p.type), _md_default(p.default)) for p in function.params]
    parts = [f"### {function.name}", f"`{signature(function)}`", function.doc]
    if rows:
        parts.append(_md_table(("parameter", "type", "default"), rows))
    parts.append(_code(function.example))
    return "\n\n".join(parts)


def _md_module(module: StdlibModule) -> str:
    members = [f"- {kind}: {', '.join(f'`{m}`' for m in names)}" for kind, names in module.exports]
    return "\n\n".join([f"### {module.name}", _code(f"use {module.name}"), module.doc, "\n".join(members)])


def _md_default(default: Any) -> str:
    return "required" if default is REQUIRED else f"`{show_value(default)}`"


def _md_table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _code(text: str, language: str = "intro") -> str:
    return f"```{language}\n{text}\n```"


if __name__ == "__main__":
    sys.stdout.write(markdown())
