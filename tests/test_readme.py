"""The README's commands and the walkthrough that runs them (bench/readme_walkthrough.py) cannot drift apart."""

from pathlib import Path

from conftest import bench_module

REPO = Path(__file__).resolve().parent.parent


def walkthrough():
    return bench_module("readme_walkthrough")


def test_every_walkthrough_command_is_in_the_readme_word_for_word():
    readme = (REPO / "README.md").read_text()
    missing = [command for command, _, _ in walkthrough().COMMANDS
               if command not in readme and command.replace(".venv/bin/", "") not in readme]
    assert not missing


def test_the_readme_opens_with_the_two_set_up_commands():
    first = (REPO / "README.md").read_text().split("```")[1]
    test_command = "./setup.sh && .venv/bin/ruff check src tests bench && .venv/bin/python -m pytest -q"
    assert "./setup.sh && .venv/bin/forgetkit demo" in first and test_command in first
    assert test_command in (REPO / ".ci" / "run").read_text()     # CI runs the README's test command
