"""The ``retinadet`` command line: one entry point, one sub-command module per task."""

from __future__ import annotations

import importlib
import sys

import click

from retinadet.errors import RetinadetError

# Sub-command modules, each exposing a click command or group named ``command``.
# Imported lazily so that ``retinadet --help`` stays fast and one broken optional
# dependency cannot take down unrelated commands.
SUBCOMMANDS = {
    "model": "retinadet.cli.model",
    "data": "retinadet.cli.data",
    "weights": "retinadet.cli.weights",
    "train": "retinadet.cli.train",
    "val": "retinadet.cli.val",
    "predict": "retinadet.cli.predict",
    "cam": "retinadet.cli.cam",
    "export": "retinadet.cli.export",
    "serve": "retinadet.cli.serve",
    "rank": "retinadet.cli.rank",
    "benchmark": "retinadet.cli.benchmark",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        available = []
        for name, module in SUBCOMMANDS.items():
            if importlib.util.find_spec(module) is not None:
                available.append(name)
        return sorted(available)

    def get_command(self, ctx, name):
        module = SUBCOMMANDS.get(name)
        if module is None or importlib.util.find_spec(module) is None:
            return None
        return importlib.import_module(module).command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RetinadetError as exc:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="retinadet")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """retinadet: RetinaNet object detection toolkit."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
