"""`voxel-ode COMMAND --help` explains every option and shows its default."""

import argparse

import pytest

from voxel_ode import cli


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_option_has_help_and_its_default(command):
    parser, _ = cli.build_parser(command)
    formatter = parser._get_formatter()
    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    assert options
    for action in options:
        assert action.help and action.help.strip(), (command, action.option_strings)
        shown = formatter._get_help_string(action) % {"default": action.default}
        if action.default is not None and not action.required:
            assert "default" in shown.lower(), (command, action.option_strings, shown)
    text = parser.format_help()
    assert "(default: None)" not in text


def test_top_level_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command, spec in cli.COMMANDS.items():
        assert command in out and spec[3] in out
