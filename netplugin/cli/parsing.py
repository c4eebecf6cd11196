"""The command-line set-up netctl and drctl share: a parser whose usage
errors exit 2 and say where to look, the output options, and the context's
view of them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..errors import NetpluginError

USAGE_ERROR = 2


class Parser(argparse.ArgumentParser):
    def error(self, message):   # exit 2 with a message, as argparse does, but say where to look
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def options_parser() -> Parser:
    """A parent parser for options accepted before or after the subcommand."""
    return Parser(add_help=False)


def add_output_options(p: argparse.ArgumentParser, quiet_help: str) -> None:
    o = p.add_argument_group("output")
    o.add_argument("--json", "-j", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    o.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=quiet_help)
    o.add_argument("--format", dest="format", default=argparse.SUPPRESS, metavar="FORMAT",
                   help="json, table, or a template: '{{.Name}}', '{{json .}}', 'table {{.Name}}\\t{{.VLAN}}'")


class OutputFlags:
    """--json, --quiet and --format of the parsed args (self.args), as a context
    reads them: ``--format json`` is --json; ``--format table`` the default."""

    args: argparse.Namespace

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False)) or self.template == "json"

    @property
    def template(self) -> str | None:
        """--format as given (None: not given, or 'table')."""
        fmt = getattr(self.args, "format", None)
        return None if fmt in (None, "", "table") else fmt

    @property
    def table(self) -> bool:
        """--format table: what inspect prints for people instead of JSON."""
        return getattr(self.args, "format", None) == "table"

    @property
    def custom(self) -> str | None:
        """A --format template other than json and table."""
        return None if self.template in (None, "json") else self.template

    @property
    def quiet(self) -> bool:
        return bool(getattr(self.args, "quiet", False))


def subcommands(parser: argparse.ArgumentParser, dest: str, metavar: str):
    """The required subcommands of parser, parsed by parsers of its own class."""
    sub = parser.add_subparsers(dest=dest, metavar=metavar, parser_class=type(parser))
    sub.required = True
    return sub


def command_group(sub, name: str, help: str, common: argparse.ArgumentParser, aliases: list[str] | None = None):
    """A command whose action is required (``netctl network ls``); returns its
    actions. aliases: other names for it (Contiv's ``net``, ``ep``)."""
    return subcommands(sub.add_parser(name, aliases=aliases or [], help=help, parents=[common]), "action", "ACTION")


def run_command(prog: str, args: argparse.Namespace, ctx,
                interrupted: Callable[[], str] = lambda: "interrupted") -> int:
    """Run the parsed command (args.run); a NetpluginError or ^C is said on
    stderr as 'prog: ...' with exit code 1."""
    try:
        return int(args.run(args, ctx) or 0)
    except NetpluginError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted()}", file=sys.stderr)
        return 1
