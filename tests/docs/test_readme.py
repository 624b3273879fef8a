"""The README stays true: every command it shows exists with every flag it shows, and the quickstart runs."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SHELL_LANGS = {"bash", "sh", "shell", "console"}


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(m.group(1).strip().lower(), m.group(2)) for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, re.M | re.S)]


def shell_commands(text: str) -> list[list[str]]:
    """Each command of the shell blocks as tokens: continuations joined, comments dropped, `&&` split."""
    commands = []
    for lang, body in code_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens:
                cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                commands.append(tokens[:cut])
                tokens = tokens[cut + 1:]
    return commands


def retinadet_invocation(tokens: list[str]) -> list[str] | None:
    """The arguments given to the retinadet CLI, whether called directly, with python -m, or under torchrun."""
    if tokens and tokens[0] == "retinadet":
        return tokens[1:]
    if "-m" in tokens:
        i = tokens.index("-m")
        if i + 1 < len(tokens) and tokens[i + 1] == "retinadet":
            return tokens[i + 2:]
    return None


def flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if re.match(r"^--?[A-Za-z]", a)]


def command_path(args: list[str]):
    """(click command, its subcommand path) for the leading non-option words of ``args``."""
    import click

    from retinadet.cli import main

    cmd, path = main, []
    for word in args:
        if not isinstance(cmd, click.Group) or word not in cmd.list_commands(click.Context(cmd)):
            break
        cmd, path = cmd.get_command(click.Context(cmd), word), path + [word]
    return cmd, path


def help_text(path: list[str]) -> str:
    from click.testing import CliRunner

    from retinadet.cli import main

    res = CliRunner().invoke(main, [*path, "--help"], terminal_width=200)
    assert res.exit_code == 0, f"`retinadet {' '.join(path)} --help` failed: {res.output}"
    return res.output


TEXT = README.read_text(encoding="utf-8")
COMMANDS = shell_commands(TEXT)
CLI_CALLS = [args for args in map(retinadet_invocation, COMMANDS) if args is not None]


def test_readme_shows_every_subcommand():
    import click

    from retinadet.cli import main

    shown = {command_path(args)[1][0] for args in CLI_CALLS if command_path(args)[1]}
    every = set(main.list_commands(click.Context(main)))
    assert every <= shown, f"not in the README: {sorted(every - shown)}"


@pytest.mark.parametrize("args", CLI_CALLS, ids=[" ".join(a)[:60] for a in CLI_CALLS])
def test_readme_command_and_flags_exist(args):
    cmd, path = command_path(args)
    assert path, f"`retinadet {' '.join(args)}`: no such command"
    if isinstance(cmd, __import__("click").Group):
        pytest.fail(f"`retinadet {' '.join(args)}`: '{' '.join(path)}' needs a subcommand")
    text = help_text(path)
    for flag in flags(args[len(path):]):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"`retinadet {' '.join(path)}` has no {flag}"


def test_readme_other_tools_are_valid():
    """pip extras exist in pyproject; torchrun and python -m entry points accept the flags shown."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    checked = 0
    for tokens in COMMANDS:
        if tokens[:2] == ["pip", "install"]:
            for spec in tokens[2:]:
                for extra in re.findall(r"\[([^\]]+)\]", spec):
                    assert set(extra.split(",")) <= extras, f"`{' '.join(tokens)}`: no extra [{extra}] in pyproject.toml"
                    checked += 1
        elif tokens[0] == "torchrun":
            i = tokens.index("-m")
            out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"], capture_output=True, text=True)
            for flag in flags(tokens[1:i]):
                assert flag in out.stdout.replace("_", "-") or flag in out.stdout, f"torchrun has no {flag}"
            checked += 1
        elif tokens[:2] == ["python", "-m"] and tokens[2] != "retinadet":
            out = subprocess.run([sys.executable, "-m", tokens[2], "--help"], capture_output=True, text=True, cwd=ROOT)
            assert out.returncode == 0, out.stderr
            for flag in flags(tokens[3:]):
                assert flag in out.stdout, f"python -m {tokens[2]} has no {flag}"
            checked += 1
    assert checked >= 3


def test_readme_python_snippets_parse():
    blocks = [body for lang, body in code_blocks(TEXT) if lang == "python"]
    for body in blocks:
        ast.parse(body)


def test_quickstart_runs_with_tiny_settings(tmp_path):
    """The quickstart's `retinadet train` through the installed entry point, on tiny data and settings."""
    from retinadet.data.synthetic import ShapesConfig, write_shapes_dataset

    quick = [t for t in COMMANDS if t[:2] == ["retinadet", "train"] and len(t) == 2]
    assert quick, "the quickstart's plain `retinadet train` is gone from the README"
    data = tmp_path / "shapes"
    write_shapes_dataset(data, ShapesConfig(num_train=8, num_val=4, num_test=4, size=96, seed=5), workers=1)
    tiny = ["--data", str(data), "--epochs", "1", "--batch", "4", "--imgsz", "64", "--workers", "0", "--no-plots",
            "--project", str(tmp_path / "runs")]
    env = {**os.environ, "RETINADET_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([*quick[0], *tiny], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    run = tmp_path / "runs" / "train" / "exp"
    assert (run / "weights" / "best.pt").is_file() and (run / "results.csv").is_file()
