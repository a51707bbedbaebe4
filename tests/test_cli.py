"""The clickgraph command: help a newcomer can follow, errors that name the problem."""

from __future__ import annotations

import subprocess
import sys

import pytest

from clickgraph.app.cli import SUBCOMMANDS, main


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out
    assert "--set" in out and "conf/local.yaml" in out


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_has_help_with_examples(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--set" in out and "example" in out


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_config_error_is_reported_with_key_and_exit_code_2(capsys):
    assert main(["generate", "--set", "generate.num_userz=5"]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "generate.num_userz" in err


def test_console_script_and_module_entry_points():
    out = subprocess.run([sys.executable, "-m", "clickgraph", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("clickgraph ")
