"""Helpers shared by the tests: `from conftest import ROOT, RunsCode, cli, list_runs, read_metrics, run_script`."""
import csv
import os
import subprocess
import sys

# Tests import the top-level algorithm files and common/ from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Test workers run side by side (pytest.ini): on a GPU none may claim most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def run_script(tmp_path, script, *argv, env=None, timeout=600):
    """Run `python ROOT/script argv...` in tmp_path (its runs/ land there); returns the CompletedProcess with
    text stdout and stderr."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, argv)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout, env=env)


def cli(monkeypatch, capsys, module, *argv):
    """Run a script module's main in-process as its command line does (`run_main(module.main)` with sys.argv
    set); returns (exit code, stderr written by this run)."""
    from common.cli import run_main
    monkeypatch.setattr(sys, "argv", [os.path.basename(module.__file__), *map(str, argv)])
    capsys.readouterr()  # drop what earlier code printed
    code = 0
    try:
        run_main(module.main)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def read_metrics(run_dir):
    """The rows of run_dir/metrics.csv as dicts (global_step, metric, value, wall_time; strings)."""
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def list_runs(tmp_path):
    """The run directories under tmp_path/runs, sorted (the scripts also write *_summary.csv files there)."""
    return sorted(d for d in (tmp_path / "runs").iterdir() if d.is_dir())


def scan_iterations(train_iteration, n):
    """`state -> (state, metrics)`: n iterations of a script's `train_iteration` in one `lax.scan`, metrics
    stacked per iteration (what the scripts' compiled programs run, without the runner's row averaging)."""
    import jax
    return lambda state: jax.lax.scan(lambda s, _: train_iteration(s), state, None, n)


def logged_rows(train_iteration, iterations_per_row, num_rows):
    """`state -> (state, rows)`: num_rows x iterations_per_row iterations through the runner's own chunk, metrics
    averaged per logged row as the CLI logs them (NaN where nothing was measured in a row)."""
    from common import runner

    def run(state):
        chunk = runner.make_chunk(train_iteration, iterations_per_row, num_rows)
        state, _, rows, *_ = chunk(state, runner.empty_row(train_iteration, state), iterations_per_row * num_rows)
        return state, rows
    return run


class RunsCode:
    """Unpickling this calls `fn(*args)`: what a malicious 'checkpoint' does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args
