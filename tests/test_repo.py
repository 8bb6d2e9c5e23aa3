"""The repository's standing promises: the README opens with the two commands, and CI runs the same tests."""

from conftest import REPO_ROOT


def readme_commands():
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    assert lines[0] == "```bash" and lines[3] == "```", "the README must open with a block of two commands"
    return [line.split("  #")[0].strip() for line in lines[1:3]]


def test_readme_opens_with_run_and_test_commands():
    run, test = readme_commands()
    assert run.startswith("bash setup.sh")
    assert test.startswith("bash setup.sh --dev") and "pytest" in test


def test_ci_runs_the_readme_test_command():
    _, test = readme_commands()
    ci_lines = [line.strip() for line in (REPO_ROOT / ".ci/run").read_text().splitlines()]
    assert test in ci_lines
