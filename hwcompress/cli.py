"""Command-line interface: parsing, calling into the library, printing. No logic lives here.

Adding a command group: write a `typer.Typer()` (in this file or next to the code it drives)
and register it below with `app.add_typer(my_app, name="my-command")`; a single command is
`@app.command()`. Raise HwcError (or a subclass) for user mistakes: main() turns it into one
`error: ...` line and exit code 2. Commands print and return None.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from hwcompress.errors import HwcError

try:
    # recent typer ships its own copy of click; its usage errors are not click's classes
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # older typer on top of click, where typer.Abort is click's Abort
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from hwcompress.targets import Target, list_targets, load_target

PROG = "hwcompress"

app = typer.Typer(
    name=PROG,
    help="Hardware-aware compression of speech-enhancement models.",
    no_args_is_help=True,
    add_completion=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _console() -> Console:
    # built per call so tests that swap sys.stdout (CliRunner, capsys) see the output
    return Console(file=sys.stdout, highlight=False)


def _print_json(obj: Any) -> None:
    # plain echo, not rich: JSON must stay byte-exact for pipes and tests
    typer.echo(json.dumps(obj, indent=2))


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n:g} B"


# ---------------------------------------------------------------- targets

targets_app = typer.Typer(help="List and inspect hardware targets (targets/*.toml).", add_completion=False)
app.add_typer(targets_app, name="targets")


def _targets_table(targets: list[Target]) -> Table:
    # borderless so the whole table fits 80 columns (rich's width when piped)
    t = Table(title="targets", caption="budgets: latency in ms per 10 ms hop, runtime memory, model storage",
              box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, pad_edge=False)
    # short headers and no wrapping: names are copied into `targets show`, sizes read at a glance
    for col in ("name", "arch", "runtime"):
        t.add_column(col, no_wrap=True)
    for col in ("threads", "latency", "memory", "storage"):
        t.add_column(col, justify="right", no_wrap=True)
    for tg in targets:
        t.add_row(
            tg.name, tg.arch, tg.runtime, str(tg.threads), f"{tg.latency_budget_ms:g}",
            fmt_bytes(tg.memory_budget_bytes), fmt_bytes(tg.storage_budget_bytes),
        )
    return t


@targets_app.callback(invoke_without_command=True)
def targets_list(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List registered targets with their budgets."""
    if ctx.invoked_subcommand is not None:
        return
    targets = list_targets()
    if json_:
        _print_json([tg.to_dict() for tg in targets])
    else:
        _console().print(_targets_table(targets))


@targets_app.command("show")
def targets_show(
    name: Annotated[str, typer.Argument(help="Registered target name or path to a target .toml file.")],
    json_: JsonOpt = False,
) -> None:
    """Show one target with every performance parameter and its provenance."""
    tg = load_target(name)
    if json_:
        _print_json(tg.to_dict())
        return
    con = _console()
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    rows = [
        ("name", tg.name), ("description", tg.description), ("arch", tg.arch), ("cpu", tg.cpu),
        ("runtime", f"{tg.runtime} {tg.runtime_version or ''}".strip()), ("threads", str(tg.threads)),
        ("latency budget", f"{tg.latency_budget_ms:g} ms per 10 ms hop"),
        ("memory budget", f"{fmt_bytes(tg.memory_budget_bytes)} ({tg.memory_budget_bytes} B)"),
        ("storage budget", f"{fmt_bytes(tg.storage_budget_bytes)} ({tg.storage_budget_bytes} B)"),
        ("budget provenance", tg.budget_provenance),
        ("emulation", tg.emulation or "-"), ("source", str(tg.source)),
    ]
    for k, v in rows:
        head.add_row(k, v)
    con.print(head)
    perf = Table(title="perf parameters")
    perf.add_column("parameter")
    perf.add_column("value", justify="right")
    perf.add_column("unit")
    perf.add_column("provenance")
    for key, p in tg.perf.items():
        # byte counts are ints and must print exactly; :g would show 1.04858e+06
        value = str(p.value) if isinstance(p.value, int) else f"{p.value:g}"
        perf.add_row(key, value, p.unit, p.provenance)
    con.print(perf)


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: every user error is one `error: ...` line on stderr, exit 2."""
    try:
        # standalone_mode=False hands errors to us instead of click/typer printing a panel
        # (usage errors) or a traceback (HwcError raised inside a command)
        rv = app(args=argv, prog_name=PROG, standalone_mode=False)
    except HwcError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except NoArgsIsHelpError as e:
        # bare `hwcompress` or `hwcompress targets-group`: help is what the user needs, not an error line
        help_text = e.ctx.get_help()  # typer's rich help prints itself and returns ""
        if help_text:
            typer.echo(help_text, err=True)
        sys.exit(2)
    except UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        print(f"error: {e.format_message()}{hint}", file=sys.stderr)
        sys.exit(2)
    except ClickException as e:
        print(f"error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    # in non-standalone mode click returns the exit code of ctx.exit()/--help as an int
    sys.exit(rv if isinstance(rv, int) else 0)
