"""The language server's answers, as plain values: where a name is defined, what it is, what may come next.

Each function takes an `Outline` of the open buffer and a character offset into it. Names resolve the way
the compiler resolves them: the innermost block's locals, the file's declarations, its imports, builtins.
"""

from __future__ import annotations

import re
from pathlib import Path

from attrs import frozen

from intro.compiler.builtins import FUNCTIONS
from intro.compiler.types import REQUIRED, Function, Param

from .analysis import (
    Definition,
    Outline,
    Place,
    module_definition,
    module_members,
    module_path,
    modules_in,
    stdlib_directory,
)
from .vocabulary import Token, vocabulary

_USE_PATH = re.compile(r"^\s*use\s+([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]*)*)?$")
_USE_NAMES = re.compile(r"^\s*use\s+([A-Za-z_][A-Za-z0-9_.]*)\s*:\s*[A-Za-z0-9_,\s]*$")
_MEMBER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z0-9_]*)$")


@frozen
class Completion:
    label: str
    kind: str  # function | module | keyword | parameter | field | a declaring keyword | loop variable
    detail: str = ""
    documentation: str = ""
    insert_text: str | None = None


# ---------------------------------------------------------------- resolving names
def resolve(outline: Outline, name: str, offset: int) -> Definition | None:
    """What `name` means at `offset`: a block local, a declaration of the file, or an imported name."""
    for local in outline.visible_locals(offset):
        if local.name == name:
            return local
    if name in outline.definitions:
        return outline.definitions[name]
    for use in outline.imports:
        if use.bound_name == name:
            return module_definition(use, outline.directory)
        if any(token.text == name for token in use.names):
            return module_members(use, outline.directory).get(name)
    return None


def builtin(outline: Outline, name: str, offset: int) -> Function | None:
    """The builtin function `name` means at `offset`, unless something in scope shadows it."""
    if name in FUNCTIONS and resolve(outline, name, offset) is None:
        return FUNCTIONS[name]
    return None


def _member(outline: Outline, index: int) -> Definition | None:
    """`base.name` where base is a module: the module's definition of `name`."""
    code = outline.code
    if index < 2 or code[index - 1].text != "." or code[index - 2].kind != "name":
        return None
    base = resolve(outline, code[index - 2].text, code[index - 2].offset)
    if base is None or base.kind != "module":
        return None
    use = next(u for u in outline.imports if u.bound_name == base.name)
    return module_members(use, outline.directory).get(code[index].text)


def _in_use(outline: Outline, offset: int) -> Definition | None:
    """A name inside a `use` statement: the module it names, or the module's definition of an imported name."""
    for use in outline.imports:
        if not use.start <= offset <= use.end:
            continue
        for token in use.names:
            if token.offset <= offset <= token.end:
                return module_members(use, outline.directory).get(token.text)
        return module_definition(use, outline.directory)
    return None


def _defined_here(outline: Outline, token: Token) -> Definition | None:
    """The definition whose name is `token` itself (a declaration's or a loop variable's name)."""
    candidates = [*outline.definitions.values(), *(local.definition for local in outline.locals)]
    place = Place.of(outline.path, token)
    return next((d for d in candidates if d.place == place), None)


def definition(outline: Outline, offset: int) -> Definition | None:
    """Where the name under `offset` is defined (in this file, or in the module it was imported from)."""
    index = outline.code_index_at(offset)
    if index is None or outline.code[index].kind != "name":
        return None
    token = outline.code[index]
    found = _in_use(outline, offset) or _defined_here(outline, token)
    if found is not None:
        return found
    if index >= 1 and outline.code[index - 1].text == ".":
        return _member(outline, index)
    return resolve(outline, token.text, token.offset)


# ---------------------------------------------------------------- hover
def hover(outline: Outline, offset: int) -> str | None:
    """Markdown describing the name under `offset`: a builtin's reference, a parameter or a declaration."""
    index = outline.code_index_at(offset)
    if index is None or outline.code[index].kind != "name":
        return None
    token = outline.code[index]
    after = outline.code[index + 1] if index + 1 < len(outline.code) else None
    function = _enclosing_call(outline, index)
    if after is not None and after.text == ":" and function is not None:
        param = next((p for p in function.params if p.name == token.text), None)
        if param is not None:
            return f"```intro\n{_param(param)}\n```\n\nparameter of `{function.name}`: {function.doc}"
    is_member = index >= 1 and outline.code[index - 1].text == "."
    if not is_member and (found := builtin(outline, token.text, token.offset)) is not None:
        return function_reference(found)
    found_definition = definition(outline, offset)
    return describe(found_definition) if found_definition is not None else None


def function_reference(function: Function) -> str:
    """A builtin's signature and what it gives."""
    signature = f"{function.name}({', '.join(_param(p) for p in function.params)})"
    return f"```intro\n{signature}\n```\n\n(builtin) {function.doc}"


def _param(param: Param) -> str:
    if param.default is REQUIRED:
        return f"{param.name}: {param.type}"
    default = param.default
    if isinstance(default, str):
        shown = '"' + default.replace("\n", "\\n").replace('"', '\\"') + '"'
    elif isinstance(default, bool):
        shown = str(default).lower()
    elif isinstance(default, int | float):
        shown = repr(default)
    else:
        shown = "..."  # a sampling, a grader or none: see the function's doc
    if len(shown) > 40:
        shown = shown[:37] + '..."'
    return f"{param.name}: {param.type} = {shown}"


def describe(found: Definition) -> str:
    if found.kind == "module":
        head = f"module `{found.module}`"
        return head + (f"\n\n{found.doc}" if found.doc else "")
    parts = [f"```intro\n{found.summary}\n```"]
    if found.doc:
        parts.append(found.doc)
    where = f"from `{found.module}`" if found.module else f"{found.place.path.name}:{found.place.line}"
    parts.append(f"*{found.kind} `{found.name}`, {where}*")
    return "\n\n".join(parts)


def _enclosing_call(outline: Outline, index: int) -> Function | None:
    """The builtin whose argument list holds the token at `index`, if any."""
    depth = 0
    for back in range(index - 1, -1, -1):
        text = outline.code[back].text
        if text in (")", "]", "}"):
            depth += 1
        elif text in ("(", "[", "{"):
            if depth == 0:
                callee = outline.code[back - 1] if back >= 1 else None
                if text != "(" or callee is None or callee.kind != "name":
                    return None
                return builtin(outline, callee.text, callee.offset)
            depth -= 1
    return None


# ---------------------------------------------------------------- completion
def completions(outline: Outline, offset: int) -> list[Completion]:
    """What may be typed at `offset`: module paths after `use`, a module's names after `m.`, else names."""
    line = outline.text[outline.text.rfind("\n", 0, offset) + 1 : offset]
    if (match := _USE_PATH.match(line)) is not None:
        return _module_paths(outline, (match.group(1) or "").split("."))
    if (match := _USE_NAMES.match(line)) is not None:
        path = module_path(tuple(match.group(1).split(".")), outline.directory)
        return _members_of_file(outline, path)
    if (match := _MEMBER.search(line)) is not None:
        return _members(outline, match.group(1), offset)
    return _in_scope(outline, offset)


def _module_paths(outline: Outline, typed: list[str]) -> list[Completion]:
    """`use |` offers stdlib and the spec's sibling modules; `use stdlib.|` the standard library's modules."""
    parents = typed[:-1]
    if not parents:
        names = ["stdlib", *modules_in(outline.directory, exclude=outline.path)]
    else:
        base = stdlib_directory() if parents[0] == "stdlib" else outline.directory / parents[0]
        names = modules_in(base.joinpath(*parents[1:]))
    return [Completion(n, "module", "module " + ".".join([*parents, n])) for n in names]


def _members_of_file(outline: Outline, path: Path | None) -> list[Completion]:
    from .analysis import file_outline

    found = file_outline(path) if path else None
    if found is None:
        return []
    return [_completion(d) for d in found.definitions.values() if d.kind != "study"]


def _members(outline: Outline, base: str, offset: int) -> list[Completion]:
    found = resolve(outline, base, offset)
    if found is None:
        return []
    if found.kind == "module":
        use = next(u for u in outline.imports if u.bound_name == found.name)
        return [_completion(d) for d in module_members(use, outline.directory).values()]
    if found.kind == "split":
        return [Completion(n, "field", f"the split's {n} tasks") for n in ("train", "test")]
    return []


def _in_scope(outline: Outline, offset: int) -> list[Completion]:
    items: dict[str, Completion] = {}
    index = _index_before(outline, offset)
    function = _enclosing_call(outline, index + 1) if index is not None else None
    previous = outline.code[index].text if index is not None else None
    if function is not None and previous in ("(", ","):
        for param in function.params:
            items[param.name + ":"] = Completion(
                param.name, "parameter", _param(param), f"parameter of `{function.name}`", param.name + ": "
            )
    for local in outline.visible_locals(offset):
        items.setdefault(local.name, _completion(local))
    for found in outline.definitions.values():
        if found.kind != "study":
            items.setdefault(found.name, _completion(found))
    for use in outline.imports:
        names = [use.bound_name] if use.bound_name else [t.text for t in use.names]
        for name in names:
            if (found_import := resolve(outline, name, offset)) is not None:
                items.setdefault(name, _completion(found_import))
    for name, fn in FUNCTIONS.items():
        items.setdefault(name, Completion(name, "function", "builtin", function_reference(fn)))
    vocab = vocabulary()
    inside = _inside_brackets(outline, index)
    for word in vocab.keywords:
        if not inside or vocab.keyword_kind(word) == "constant":  # in an expression only true and false fit
            items.setdefault(word, Completion(word, "keyword"))
    return list(items.values())


def _inside_brackets(outline: Outline, index: int | None) -> bool:
    """Whether the token after `index` sits inside parentheses, brackets or a record (an expression)."""
    depth = 0
    for back in range(index if index is not None else -1, -1, -1):
        text = outline.code[back].text
        if text in (")", "]", "}"):
            depth += 1
        elif text in ("(", "["):
            if depth == 0:
                return True
            depth -= 1
        elif text == "{":
            if depth == 0:
                return not _opens_block(outline, back)
            depth -= 1
    return False


def _opens_block(outline: Outline, index: int) -> bool:
    """Whether the brace at `index` opens a study or `for` body (statements) rather than a record."""
    return outline.code[index].offset in outline.block_starts


def _index_before(outline: Outline, offset: int) -> int | None:
    """The last significant token ending at or before `offset`, skipping a name being typed at it."""
    before = [i for i, t in enumerate(outline.code) if t.end <= offset]
    if not before:
        return None
    last = before[-1]
    if outline.code[last].end == offset and outline.code[last].kind == "name":
        return last - 1 if last >= 1 else None
    return last


def _completion(found: Definition) -> Completion:
    detail = f"{found.kind} {found.name}" + (f" (from {found.module})" if found.module else "")
    return Completion(found.name, found.kind, detail, describe(found))


__all__ = ["Completion", "Place", "completions", "definition", "describe", "hover", "resolve"]
