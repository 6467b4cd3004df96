"""The `intro` command. Each verb imports what it needs when it runs, so `check` and `plan` start fast.

Exit codes: 0 success; 1 a runtime failure (model, backend, store); 2 the input is wrong (spec
diagnostics, bad flag, unreadable plan); 3 `fmt --check` found a file to reformat, or `plan
--detailed-exitcode` found steps that would run; 4 another run holds the study's lock.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from intro import executors  # standard library only: the --executor options

OK, FAILED, BAD_INPUT, CHANGES, LOCKED = 0, 1, 2, 3, 4


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"intro: error: {message}", file=sys.stderr)
        raise SystemExit(BAD_INPUT)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return BAD_INPUT
    try:
        return int(args.handler(args))
    except BrokenPipeError:
        # The reader went away (`intro plan --json | head`): not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter shutdown from failing too
        return OK
    except KeyboardInterrupt:
        print("intro: interrupted; finished work is kept and the next run resumes from it", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="intro",
        description="Compile, plan, run, report and diff introspection studies.",
        epilog="start here:\n  intro new first    write first.intro, a commented study to run and edit\n\n"
        "`intro COMMAND --help` explains a command's options, with examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(metavar="COMMAND", parser_class=_Parser)

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=_examples(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(handler=handler)
        if name in _SPEC_COMMANDS:
            p.add_argument(
                "--allow-outside",
                action="store_true",
                help="let the spec read data files and modules outside its folder (and the stdlib)",
            )
        return p

    p = command("new", _new, "write a commented starter study NAME.intro to edit and run")
    p.add_argument("name", type=Path, help="the study's name, optionally with a folder (studies/first)")

    p = command("check", _check, "check a spec and report every problem found")
    p.add_argument("spec", type=Path, help="the .intro file")
    p.add_argument("--json", action="store_true", help="print diagnostics as JSON")

    p = command("compile", _compile, "check a spec and write its execution plan")
    p.add_argument("spec", type=Path, help="the .intro file")
    p.add_argument("-o", "--output", type=Path, help="where to write plan.json (default: standard output)")
    p.add_argument("--study", help="the study to compile when the file declares several")

    p = command("plan", _plan, "show what running a spec would do (a dry run)")
    p.add_argument("spec", type=Path, help="the .intro file")
    p.add_argument("--study", help="only this study, when the file declares several")
    p.add_argument(
        "--runs", type=Path, default=Path("runs"), help="directory holding study runs (default: runs)"
    )
    p.add_argument("--cache", type=Path, help="request cache (default: the per-user cache)")
    p.add_argument("--json", action="store_true", help="print the plan summary as JSON")
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 3 when any step would run")
    executors.add_executor_options(p)

    p = command("fmt", _fmt, "rewrite specs in canonical form")
    p.add_argument("specs", type=Path, nargs="+", help="the .intro files to format")
    p.add_argument("--check", action="store_true", help="change nothing; exit 3 if a file is not formatted")

    p = command("run", _run, "compile and execute a spec into runs/<study>/")
    p.add_argument("spec", type=Path, help="the .intro file")
    p.add_argument("--study", help="only this study, when the file declares several")
    p.add_argument(
        "--runs", type=Path, default=Path("runs"), help="directory holding study runs (default: runs)"
    )
    p.add_argument("--cache", type=Path, help="request cache (default: the per-user cache)")
    p.add_argument(
        "--serve",
        action="append",
        default=[],
        metavar="MODEL=URL",
        help="serve MODEL from an OpenAI-compatible URL",
    )
    executors.add_executor_options(p)
    p.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="memory budget for in-process models, like 4G or 512M (default: what the machine has "
        "available); models are released or refused to stay within it",
    )
    output = p.add_mutually_exclusive_group()
    output.add_argument(
        "--quiet",
        action="store_true",
        help="print only errors and the final summary line (no progress, no tables)",
    )
    output.add_argument(
        "--json-progress",
        action="store_true",
        help="one JSON event per line on stdout instead of progress lines and tables "
        "(run_started, model_loading, step_started, step_finished, run_finished, ...; see the README)",
    )

    p = command("show", _show, "print a summary table of a run's results")
    p.add_argument("run", type=Path, help="a run directory (runs/<study>)")

    p = command("report", _report, "draw a run's figures as PNGs and one HTML page")
    p.add_argument("run", type=Path, help="a run directory (runs/<study>)")
    p.add_argument("-o", "--output", type=Path, help="folder for the report (default: <run>/report)")

    p = command("export", _export, "write a run's results as tidy tables for pandas (parquet or csv)")
    p.add_argument("run", type=Path, help="a run directory (runs/<study>)")
    p.add_argument("--format", default="parquet", help="parquet (default) or csv")
    p.add_argument("--out", type=Path, help="folder for the tables (default: <run>/export)")

    p = command("diff", _diff, "compare two studies (specs) or two runs (run directories)")
    p.add_argument("a", type=Path, help="a spec, or a run directory")
    p.add_argument("b", type=Path, help="the spec or run directory to compare it with")
    p.add_argument(
        "--cache", type=Path, help="request cache to count reusable work in (default: the per-user cache)"
    )
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")

    p = command("cache", _cache, "check the request cache (verify) or clean it (gc)")
    p.add_argument("action", choices=["verify", "gc"], help="verify: check every entry; gc: remove leftovers")
    p.add_argument("--cache", type=Path, help="the cache to check (default: the per-user cache)")
    p.add_argument(
        "--min-age",
        type=float,
        default=3600.0,
        help="gc: seconds since a temporary file was last written before it counts as left over (default 3600)",
    )

    p = command("serve", _serve, "serve a model over an OpenAI-compatible HTTP API")
    p.add_argument("model", help="embedded:<name> or a directory of weights")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument(
        "--state",
        type=Path,
        help="where uploaded files and fine-tuning jobs live (default: a temporary folder)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("INTRO_SERVE_API_KEY") or None,
        help="require this bearer token on every endpoint but /health (default: $INTRO_SERVE_API_KEY); "
        "needed for any --host but loopback",
    )
    p.add_argument(
        "--name",
        action="append",
        default=[],
        help="another model name to answer to, e.g. the spec's model name (repeatable); "
        "requests naming a model the server does not serve get 404",
    )
    p.add_argument(
        "--turn-tokens",
        type=int,
        default=256,
        help="the most tokens one request generates before waiting requests get a turn (default: 256); "
        "0: every request whole, exact but a long reply holds the model",
    )

    command("lsp", _lsp, "run the language server on stdin/stdout (for editors)")

    p = command("doc", _doc, "print one entry of the language reference (docs/language.md)")
    p.add_argument("name", nargs="?", help="the entry to print (none: list every name)")
    return parser


# ---------------------------------------------------------------- helpers
# The commands that compile specs; they take --allow-outside.
_SPEC_COMMANDS = ("check", "compile", "plan", "run", "diff")

# Shown under each command's --help: the commands people type most, with what they do.
_EXAMPLES = {
    "new": [
        ("intro new first", "write first.intro (refuses to overwrite an existing file)"),
        ("intro new studies/pilot", "write studies/pilot.intro with a study named pilot"),
    ],
    "check": [
        ("intro check specs/looking_inward_mini.intro", "report every problem, or ok"),
        ("intro check study.intro --json", "the diagnostics as data, for editors and scripts"),
    ],
    "compile": [
        ("intro compile study.intro -o plan.json", "write the plan with its step hashes"),
        ("intro compile specs/all.intro --study pilot", "one study of a file that declares several"),
    ],
    "plan": [
        ("intro plan study.intro", "each step: will run, cached, or from another study; calls and cost"),
        ("intro plan study.intro --detailed-exitcode", "exit 3 when anything would run (for scripts)"),
    ],
    "fmt": [
        ("intro fmt study.intro", "rewrite in canonical form, comments kept"),
        ("intro fmt --check specs/*.intro", "change nothing; exit 3 if a file would change (CI)"),
    ],
    "run": [
        ("intro run study.intro", "run into runs/<study>/; a re-run reuses every cached call"),
        ("intro run study.intro --quiet", "only errors and the final summary line"),
        ("intro run study.intro --json-progress | jq .event", "progress as JSON events, one per line"),
        ("intro run study.intro --serve qwen=http://gpu:8000/v1", "send qwen's calls to a served model"),
    ],
    "show": [("intro show runs/looking_inward_mini", "the result tables of a finished (or partial) run")],
    "report": [
        ("intro report runs/looking_inward_mini", "figures and report.html in runs/<study>/report/"),
        ("intro report runs/pilot -o /tmp/pilot-report", "write them elsewhere"),
    ],
    "export": [
        ("intro export runs/pilot", "parquet tables in runs/pilot/export/, for pandas"),
        ("intro export runs/pilot --format csv --out tables", "csv files in tables/"),
    ],
    "diff": [
        ("intro diff a.intro b.intro", "what changed in meaning and which steps must rerun"),
        ("intro diff runs/a runs/b", "paired comparison of two runs' results"),
    ],
    "cache": [
        ("intro cache verify", "check every entry of the per-user cache; exit 1 if one is damaged"),
        ("intro cache gc --cache .cache", "remove leftovers of killed writes from a project cache"),
    ],
    "serve": [
        ("intro serve embedded:qwen2.5-coder-0.5b-instruct --port 8000", "an OpenAI-compatible server"),
        ("intro serve path/to/weights --name qwen --state serve-state", "answer as qwen, keep jobs"),
    ],
    "lsp": [("intro lsp", "started by an editor: diagnostics, hovers and completion over stdin/stdout")],
    "doc": [
        ("intro doc", "list the functions, declaration kinds and stdlib modules"),
        ("intro doc generate", "its parameters with types and defaults, what it returns, an example"),
    ],
}


def _examples(command: str) -> str:
    rows = _EXAMPLES.get(command, [])
    return "examples:\n" + "\n".join(f"  # {meaning}\n  {example}" for example, meaning in rows)


def _compile_or_report(args: argparse.Namespace, as_json: bool = False) -> list | int:  # type: ignore[type-arg]
    from intro.compiler import CompileError, compile_spec

    try:
        return compile_spec(args.spec, args.study, allow_outside=args.allow_outside)
    except CompileError as error:
        _print_diagnostics(error, as_json)
        return BAD_INPUT


def _print_diagnostics(error: Exception, as_json: bool) -> None:
    from intro.compiler.diagnostics import render_all

    diagnostics = error.diagnostics  # type: ignore[attr-defined]
    if as_json:
        print(json.dumps([d.to_dict() for d in diagnostics], indent=1))
    else:
        print(render_all(error, getattr(error, "sources", {})), file=sys.stderr)  # type: ignore[arg-type]


# ---------------------------------------------------------------- verbs
def _new(args: argparse.Namespace) -> int:
    """Write the starter template as NAME.intro; never over an existing file."""
    name = args.name.name.removesuffix(".intro")
    if not name.isidentifier():
        print(
            f"intro: error: a study name is letters, digits and _ (not starting with a digit), got {name!r}",
            file=sys.stderr,
        )
        return BAD_INPUT
    target = args.name.with_name(name + ".intro")
    if target.exists():
        print(f"intro: error: {target} already exists; choose another name or remove it", file=sys.stderr)
        return BAD_INPUT
    from intro.stdlib.starter import starter_spec

    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("x", encoding="utf-8") as out:  # "x": a file created meanwhile is not overwritten
        out.write(starter_spec(name))
    print(f"wrote {target}; next: intro check {target} && intro run {target}")
    return OK


def _check(args: argparse.Namespace) -> int:
    from intro.compiler import CompileError, check

    try:
        checked = check(args.spec, allow_outside=args.allow_outside)
    except CompileError as error:
        _print_diagnostics(error, args.json)
        return BAD_INPUT
    if args.json:
        print("[]")
    else:
        points = sum(len(s.points) for s in checked.studies)
        names = ", ".join(s.name for s in checked.studies)
        print(f"{args.spec}: ok ({names}: {points} measurement points)")
    return OK


def _compile(args: argparse.Namespace) -> int:
    plans = _compile_or_report(args)
    if isinstance(plans, int):
        return plans
    if len(plans) > 1:
        print("intro: this file declares several studies; choose one with --study", file=sys.stderr)
        return BAD_INPUT
    text = plans[0].dumps()
    if args.output is None:
        print(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"wrote {args.output} ({len(plans[0].steps)} steps, plan {plans[0].hash[:12]})")
    return OK


def _plan(args: argparse.Namespace) -> int:
    from intro.runtime.engine.planview import plan_summary, render_summary

    plans = _compile_or_report(args)
    if isinstance(plans, int):
        return plans
    if executors.misused(args) or not _numerics_usable():
        return BAD_INPUT
    pending = 0
    for plan in plans:
        summary = plan_summary(plan, cache_dir=args.cache, runs_dir=args.runs)
        if args.executor == "ray" and (failed := executors.add_placement(args, plan, summary)):
            return failed
        text = render_summary(summary) + executors.rendered(summary)
        print(json.dumps(summary, indent=1) if args.json else text)
        pending += summary["totals"]["steps_to_run"]
    return CHANGES if (args.detailed_exitcode and pending) else OK


def _fmt(args: argparse.Namespace) -> int:
    from intro.compiler import CompileError
    from intro.compiler.evaluate import read_source
    from intro.compiler.format import format_source

    status = OK
    for spec in args.specs:
        try:
            source = read_source(spec)  # as `intro check` reads it: a regular UTF-8 file within the limit
        except CompileError as error:
            _print_diagnostics(error, False)
            return BAD_INPUT
        try:
            formatted = format_source(source, str(spec))
        except CompileError as error:
            error.sources = {str(spec): source}  # type: ignore[attr-defined]
            _print_diagnostics(error, False)
            return BAD_INPUT
        if formatted == source:
            continue
        if args.check:
            print(f"{spec}: not formatted")
            status = CHANGES
        else:
            spec.write_text(formatted, encoding="utf-8")
            print(f"{spec}: formatted")
    return status


def _run(args: argparse.Namespace) -> int:
    _prefer_huge_pages()
    plans = _compile_or_report(args)
    if isinstance(plans, int):
        return plans
    if executors.misused(args) or not _numerics_usable():
        return BAD_INPUT
    serving = {}
    for item in args.serve:
        name, sep, url = item.partition("=")
        if not sep or not url:
            print(f"intro: error: --serve takes MODEL=URL, got {item!r}", file=sys.stderr)
            return BAD_INPUT
        serving[name] = url
    mode = "json" if args.json_progress else "quiet" if args.quiet else "text"
    options: dict[str, int] = {}
    if args.max_memory is not None:
        budget = _memory_budget(args)
        if budget is None:
            return BAD_INPUT
        options["max_memory"] = budget
    return executors.run(
        args, plans, runs_dir=args.runs, cache_dir=args.cache, serving=serving, mode=mode, **options
    )


def _prefer_huge_pages() -> None:
    """Torch's large CPU buffers on huge pages (runtime/backends/memory.py), set before torch is imported."""
    from intro.runtime.backends.memory import prefer_huge_pages

    prefer_huge_pages()


def _numerics_usable() -> bool:
    """Whether `INTRO_DTYPE` and `INTRO_CPU_MATMUL` (how in-process models compute, runtime/backends/
    precision.py) name a dtype and kernels; if not, says why in one line."""
    from intro.runtime.backends import precision

    for name, check in (
        (precision.DTYPE_ENV, precision.dtype_override),
        (precision.MATMUL_ENV, precision.matmul_choice),
    ):
        try:
            check()
        except ValueError as error:
            print(f"intro: error: {name}: {error}", file=sys.stderr)
            return False
    return True


def _memory_budget(args: argparse.Namespace) -> int | None:
    """`--max-memory` in bytes, or None after printing why it is not usable."""
    from intro.runtime.backends.memory import parse_size

    if args.executor == "ray":
        print("intro: error: --max-memory applies to the local executor, not --executor ray", file=sys.stderr)
        return None
    try:
        return parse_size(args.max_memory)
    except ValueError as error:
        print(f"intro: error: --max-memory: {error}", file=sys.stderr)
        return None


def _show(args: argparse.Namespace) -> int:
    from intro.runtime.engine.run import show_run

    return show_run(args.run)


def _report(args: argparse.Namespace) -> int:
    if not (args.run / "plan.json").is_file():
        print(f"intro: {args.run} is not a run directory (no plan.json)", file=sys.stderr)
        return BAD_INPUT
    from intro.compiler.plan import PlanError
    from intro.runtime.analysis.report import write_report
    from intro.runtime.store.cube import DamagedCubeError, rebuild_advice

    try:
        page = write_report(args.run, args.output)
    except DamagedCubeError as error:
        print(rebuild_advice(args.run, error), file=sys.stderr)
        return FAILED
    except PlanError as error:
        print(f"intro: cannot read {args.run / 'plan.json'}: {error}", file=sys.stderr)
        return BAD_INPUT
    print(f"wrote {page}")
    return OK


def _export(args: argparse.Namespace) -> int:
    from intro.runtime.store.export import RunError, export_run

    try:
        written = export_run(args.run, args.out, args.format)
    except RunError as error:
        print(f"intro: {error}", file=sys.stderr)
        return BAD_INPUT
    for path, rows in written.items():
        print(f"wrote {path} ({rows} rows)")
    return OK


def _diff(args: argparse.Namespace) -> int:
    """Exit 0: the same meaning; 2: differences; 1: an error (like `terraform plan -detailed-exitcode`)."""
    if args.a.is_dir() and args.b.is_dir():
        from intro.runtime.analysis.resultdiff import compare_runs, render_comparison, runs_differ

        for run in (args.a, args.b):
            if not (run / "plan.json").is_file():
                print(f"intro: {run} is not a run directory (no plan.json)", file=sys.stderr)
                return FAILED
        from intro.compiler.plan import PlanError
        from intro.runtime.store.cube import DamagedCubeError, rebuild_advice

        try:
            report = compare_runs(args.a, args.b)
        except DamagedCubeError as error:
            print(rebuild_advice(error.store.parent, error), file=sys.stderr)
            return FAILED
        except PlanError as error:  # the diff's exit codes: 1 is an error
            print(f"intro: cannot read a run's plan.json: {error}", file=sys.stderr)
            return FAILED
        print(json.dumps(report, indent=1) if args.json else render_comparison(report))
        return 2 if runs_differ(report) else OK
    if args.a.is_dir() or args.b.is_dir():
        print("intro: diff takes two specs or two run directories", file=sys.stderr)
        return FAILED
    from intro.spec_diff import diff_specs

    return diff_specs(args.a, args.b, args.allow_outside, args.cache, args.json)


def _cache(args: argparse.Namespace) -> int:
    """`verify`: exit 1 when a file is damaged; `gc`: remove leftovers of killed writes and the quarantine."""
    from intro.runtime.store import storecheck
    from intro.runtime.store.cache import default_cache_dir

    root = args.cache or default_cache_dir()
    if not (root / "requests").is_dir():
        print(f"intro: {root} is not an intro cache (no requests/ folder)", file=sys.stderr)
        return BAD_INPUT
    if args.action == "gc":
        print(storecheck.collect_garbage(root, args.min_age))
        return OK
    text, status = storecheck.render_verify(root, list(storecheck.verify(root)))
    print(text)
    return status


def _serve(args: argparse.Namespace) -> int:
    _prefer_huge_pages()
    from intro.runtime.serve.command import main_serve

    if args.turn_tokens < 0:
        print(f"intro: error: --turn-tokens must be 0 or more, not {args.turn_tokens}", file=sys.stderr)
        return BAD_INPUT
    return main_serve(
        args.model,
        args.host,
        args.port,
        args.state,
        api_key=args.api_key,
        names=args.name,
        turn_tokens=args.turn_tokens or None,
    )


def _doc(args: argparse.Namespace) -> int:
    """One entry of the generated reference (docs/language.md), or the list of entries."""
    from intro.compiler import reference

    if args.name is None:
        print(reference.index_text())
        return OK
    text = reference.entry_text(args.name)
    if text is None:
        print(f"intro: error: {reference.unknown_entry(args.name)}", file=sys.stderr)
        return BAD_INPUT
    print(text)
    return OK


def _lsp(args: argparse.Namespace) -> int:
    from intro.editor.server import serve

    return serve()


if __name__ == "__main__":
    sys.exit(main())
