"""`voxel-ode` console command: one subcommand per pipeline stage.

The library has no argparse: each command's module here (cli/data.py, cli/train.py, ...) fills
an argparse parser (``add_<command>_args``) and maps the parsed flags to library calls
(``run_<command>``). Only the chosen command's module is imported, so `voxel-ode --help` and
light commands stay fast (no torch import for `inspect` or `prep`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from voxel_ode import __version__
from voxel_ode.utils import UserError

# name -> (module, add-arguments function, run function, one-line help)
COMMANDS = {
    "synth": ("voxel_ode.cli.synth", "add_synth_args", "run_synth", "generate synthetic v2.4 simulations"),
    "inspect": ("voxel_ode.cli.data", "add_inspect_args", "run_inspect", "print a file's layout, ranges and problems"),
    "prep": ("voxel_ode.cli.data", "add_prep_args", "run_prep", "raw v2.4 HDF5 -> packed files, stats.json, patch index"),
    "train": ("voxel_ode.cli.train", "add_train_args", "run_train", "train VoxelAutoRegressor (one process or torchrun)"),
    "rollout": ("voxel_ode.cli.inference", "add_rollout_args", "run_rollout", "autoregressive prediction of one simulation"),
    "evaluate": ("voxel_ode.cli.inference", "add_evaluate_args", "run_evaluate", "rollouts + metrics + pictures over a split"),
    "bands": ("voxel_ode.cli.inference", "add_bands_args", "run_bands",
              "calibrate uncertainty bands on held-out runs (prep --n_calibration)"),
    "sweep": ("voxel_ode.cli.sweep", "add_sweep_args", "run_sweep_command",
              "forecasts of a plan's scenarios of one run, ranked in a table"),
    "demo": ("voxel_ode.cli.demo", "add_demo_args", "run", "synth -> prep -> train -> evaluate on this machine"),
}


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: voxel-ode COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {spec[3]}" for name, spec in COMMANDS.items()]
    lines += ["", "`voxel-ode COMMAND --help` explains each command's options."]
    return "\n".join(lines)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to an option's help unless the option is required, has no
    default (None: not given, as its text explains) or the text already says its default in
    words (e.g. "default: from the first file")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required or action.default is None or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def build_parser(command: str) -> tuple[argparse.ArgumentParser, callable]:
    module_name, add_name, run_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"voxel-ode {command}",
        description=help_text,
        formatter_class=HelpFormatter,
    )
    getattr(module, add_name)(parser)
    return parser, getattr(module, run_name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"voxel-ode: unknown command {command!r}\n\n{_top_help()}", file=sys.stderr)
        return 2
    parser, run = build_parser(command)
    args = parser.parse_args(argv[1:])
    try:
        result = run(args)
    except UserError as err:  # bad input: one clear line, no traceback
        print(f"voxel-ode {command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"voxel-ode {command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
