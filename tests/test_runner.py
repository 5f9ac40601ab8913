import os
import subprocess
import sys
import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppo_discrete
from common import runner
from common.cli import UsageError
from common.envs import EpisodeStats, NormStats, init_stats
from common.logger import MAX_RUN_DIRS, load_checkpoint, open_runs
from conftest import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def args(**kw):
    return types.SimpleNamespace(env_id="gymnax/CartPole-v1", clear_out=False, track=False,
                                 wandb_project_name="p", wandb_entity=None, **kw)


def rows_of(run_dir):
    return [(int(r["global_step"]), r["metric"], float(r["value"])) for r in read_metrics(run_dir)]


def test_few_runs_get_a_directory_each(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dirs, loggers = open_runs(args(), ["a", "a"], [1, 2], [{"seed": 1}, {"seed": 2}])
    assert len(set(run_dirs)) == 2 and loggers[0] is not loggers[1]
    for logger in loggers:
        logger.close()


def test_many_runs_share_one_directory_per_experiment_and_log_means(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    n = MAX_RUN_DIRS + 1
    exps, seeds = ["lr=1"] * n + ["lr=2"] * n, list(range(1, n + 1)) * 2
    run_dirs, loggers = open_runs(args(), exps, seeds, [{"seed": s} for s in seeds])
    assert len(set(run_dirs)) == 2 and run_dirs[0].split("__")[2] == f"seeds1-{n}"
    groups = runner.logger_groups(loggers)
    assert [runs for _, runs in groups] == [list(range(n)), list(range(n, 2 * n))]
    returns = np.arange(2 * n * 3, dtype=np.float32).reshape(2 * n, 3)  # 3 evaluation episodes per run
    state = types.SimpleNamespace(params=None, env_state=types.SimpleNamespace(norm=None))
    for step in (10, 20):
        only_first = np.where(np.arange(2 * n) == 0, 5.0, np.nan)  # one run ended an episode
        runner.log_row(groups, step, {"losses/x": np.arange(2 * n) % n + step, "charts/episodic_return": only_first})
        means = runner.evaluate_runs(lambda params, norm, keys: returns, state, seeds, step, groups)
    np.testing.assert_array_equal(means, returns.mean(1))
    for logger in loggers:  # every run closes its logger, shared or not
        logger.close()
    mean = np.mean(np.arange(n))
    first, second = returns[:n], returns[n:]  # per run in float32 (as evaluated), averaged over runs in float64
    assert rows_of(run_dirs[0]) == [
        (step, metric, value) for step in (10, 20) for metric, value in
        [("losses/x", mean + step), ("charts/episodic_return", 5.0),
         ("eval/episodic_return", np.mean(first.mean(1), dtype=np.float64)),
         ("eval/episodic_return_std", np.mean(first.std(1), dtype=np.float64))]]
    assert rows_of(run_dirs[-1])[1] == (10, "eval/episodic_return", np.mean(second.mean(1), dtype=np.float64))
    assert [r[1] for r in rows_of(run_dirs[-1])] == ["losses/x", "eval/episodic_return", "eval/episodic_return_std"] * 2

    norm = jax.tree.map(lambda x: jnp.broadcast_to(x, (2 * n,) + x.shape),
                        NormStats(init_stats((1,)), init_stats(())))
    runner.save_runs({"w": jnp.arange(2 * n, dtype=jnp.float32)}, norm, run_dirs, [{"seed": s} for s in seeds])
    ckpt = load_checkpoint(f"{run_dirs[-1]}/model_seed{n}.ckpt", types.SimpleNamespace())  # last seed, 2nd exp
    assert ckpt["params"]["w"] == 2 * n - 1 and ckpt["config"]["seed"] == n
    assert ckpt["norm"]["obs"]["mean"].shape == (1,)
    assert len(list((tmp_path / run_dirs[0]).glob("model_seed*.ckpt"))) == n


def log_rows_one_run_at_a_time(loggers, rows, steps):
    """The host loop as it was before rows were logged with numpy, the runs that share a logger averaged per
    metric over those that have it: the reference for log_row."""
    episodes = rows["episodes"]
    for u, step in enumerate(steps):
        shared = {}
        for i, logger in enumerate(loggers):
            values = {k: v[u, i] for k, v in rows.items() if "/" in k and not np.isnan(v[u, i])}
            if episodes[u, i] > 0:
                values["charts/episodic_return"] = rows["return_sum"][u, i] / episodes[u, i]
                values["charts/episodic_length"] = rows["length_sum"][u, i] / episodes[u, i]
                values["charts/episodes"] = episodes[u, i]
                for k in runner.EXTREMES:
                    if not np.isnan(rows[k][u, i]):
                        values[f"charts/episodic_{k}"] = rows[k][u, i]
            for k, v in values.items():
                shared.setdefault(id(logger), (logger, {}))[1].setdefault(k, []).append(float(v))
        for logger, values in shared.values():
            logger.log(step, {k: np.mean(v) for k, v in values.items()})


@pytest.mark.parametrize("num_runs", [2, MAX_RUN_DIRS + 3])  # a directory each; all sharing one
def test_rows_log_the_same_values_as_one_run_at_a_time(tmp_path, monkeypatch, num_runs):
    rng = np.random.default_rng(num_runs)
    shape = (3, num_runs)  # three rows
    episodes = rng.integers(0, 3, shape).astype(np.float32)  # some runs end no episode in a row
    loss = rng.normal(size=shape).astype(np.float32)
    loss[0, :2] = np.nan  # not measured in two runs
    low = np.where(episodes > 0, rng.normal(size=shape), np.nan).astype(np.float32)
    low[1, 0] = np.nan  # an episode ended, but no finite return
    rows = {"losses/x": loss, "charts/learning_rate": np.full(shape, 3e-4, np.float32), "episodes": episodes,
            "return_sum": rng.normal(size=shape).astype(np.float32) * 9, "length_sum": episodes * 7,
            "return_min": low, "return_max": low + 1}
    steps, logged = [100, 200, 300], []
    for way in ("reference", "log_row"):
        (tmp_path / way).mkdir()
        monkeypatch.chdir(tmp_path / way)
        seeds = list(range(num_runs))
        run_dirs, loggers = open_runs(args(), ["a"] * num_runs, seeds, [{"seed": s} for s in seeds])
        if way == "reference":
            log_rows_one_run_at_a_time(loggers, rows, steps)
        else:
            groups = runner.logger_groups(loggers)
            assert [g[1] for g in groups] == ([list(range(num_runs))] if num_runs > MAX_RUN_DIRS else
                                              [[i] for i in range(num_runs)])
            for u, step in enumerate(steps):
                runner.log_row(groups, step, runner.row_metrics(rows, u))
        for logger in loggers:
            logger.close()
        logged.append({d.split("__")[2]: sorted(rows_of(d)) for d in run_dirs})
    assert logged[0] == logged[1]  # the same values to the bit, for every run directory
    assert any(m == "charts/episodic_return_min" for d in logged[1].values() for _, m, _ in d)


def test_donated_chunk_accepts_a_state_that_shares_arrays():
    # a Brax state shares arrays (its obs is also the script's obs); XLA refuses to donate one twice
    chunk = runner.jit_chunk(lambda s: (jax.tree.map(lambda x: x + 1, s), None), donate=True)
    shared = jnp.ones(3)
    state, _ = chunk({"obs": shared, "inner": {"obs": shared}})
    np.testing.assert_array_equal(state["inner"]["obs"], [2, 2, 2])


def test_sweep_settings_are_every_combination_and_range_checked():
    args = ppo_discrete.Args(sweep=("learning-rate=1e-3,1e-2", "gamma=0.9,0.99"))
    settings = runner.parse_sweep(args, ppo_discrete.SWEEPABLE, ppo_discrete.check_args)
    assert settings == [{"learning_rate": 1e-3, "gamma": 0.9}, {"learning_rate": 1e-3, "gamma": 0.99},
                        {"learning_rate": 1e-2, "gamma": 0.9}, {"learning_rate": 1e-2, "gamma": 0.99}]
    assert runner.parse_sweep(ppo_discrete.Args(), ppo_discrete.SWEEPABLE, ppo_discrete.check_args) == [{}]
    for sweep, message in [("gamma=0.9,1.5", "--gamma must be in [0, 1], got 1.5"),
                           ("clip-coef=0.2,0", "--clip-coef must be positive, got 0.0"),
                           ("max-grad-norm=0.1", "--max-grad-norm is off"),
                           ("num-envs=2,4", "use NAME=V1,V2 with NAME one of learning-rate"),
                           ("gamma=", "use NAME=V1,V2"),
                           ("gamma=0.9;0.99", "values must be numbers")]:
        args = ppo_discrete.Args(sweep=(sweep,), max_grad_norm=None)
        with pytest.raises(UsageError, match=message.replace("[", r"\[")):
            runner.parse_sweep(args, ppo_discrete.SWEEPABLE, ppo_discrete.check_args)


def test_finite_runs_flags_each_run():
    w = np.ones((4, 2, 3), np.float32)
    w[1, 0, 2], w[3, 1, 1] = np.nan, -np.inf
    b = np.ones((4, 3), np.float32)
    b[2, 0] = np.inf
    assert list(np.asarray(runner.finite_runs({"w": w, "layers": [{"b": b}]}))) == [True, False, False, False]


def test_summary_is_one_row_per_setting(tmp_path, capsys):
    settings = [{"learning_rate": 1e-3, "gamma": 0.9}, {"learning_rate": 1e-2, "gamma": 0.9}]
    runner.summarise(settings, 2, np.array([1.0, 3.0, 10.0, 10.0]), str(tmp_path / "x_summary.csv"))
    assert (tmp_path / "x_summary.csv").read_text().splitlines() == [
        "gamma,learning-rate,mean,std,seeds", "0.9,0.001,2.00,1.00,2", "0.9,0.01,10.00,0.00,2"]
    assert "final eval/episodic_return" in capsys.readouterr().out


class Counter(NamedTuple):
    params: jax.Array  # the iteration count, standing in for parameters


def test_chunks_average_iterations_into_rows_and_carry_a_partial_row():
    def iteration(state):  # metrics of iteration s: losses/x = s, measured (not NaN) on odd s only
        s = state.params + 1
        return Counter(s), {"losses/x": jnp.where(s % 2 == 0, jnp.nan, s).astype(jnp.float32),
                            "episodes": jnp.int32(1), "return_sum": s.astype(jnp.float32), "length_sum": jnp.int32(2)}

    start = Counter(jnp.int32(0))
    chunk = jax.jit(runner.make_chunk(iteration, 3, 4))
    state, row, rows, done, diverged_at = chunk(start, runner.empty_row(iteration, start), 5)
    assert int(state.params) == 5 and int(done) == 1 and int(diverged_at) == 0  # iterations 4, 5 wait in `row`
    assert rows["losses/x"][0] == 2.0 and rows["episodes"][0] == 3 and rows["return_sum"][0] == 6
    state, row, rows, done, _ = chunk(state, row, 7)
    assert int(state.params) == 12 and int(done) == 3
    np.testing.assert_array_equal(rows["losses/x"][:3], [5.0, 8.0, 11.0])  # NaNs left out of each mean
    np.testing.assert_array_equal(rows["return_sum"][:3], [4 + 5 + 6, 7 + 8 + 9, 10 + 11 + 12])  # sums summed
    np.testing.assert_array_equal(rows["length_sum"][:3], [6, 6, 6])

    per_iteration = jax.jit(runner.make_chunk(iteration, 1, 4))
    _, _, rows, done, _ = per_iteration(start, runner.empty_row(iteration, start), 4)
    assert int(done) == 4
    np.testing.assert_array_equal(rows["losses/x"], [1.0, np.nan, 3.0, np.nan])  # nothing measured: NaN


def test_rows_keep_the_smallest_and_largest_return_of_the_episodes_that_ended():
    def iteration(state):  # iteration s ends episodes returning s and -s (not the third env), none when 3 | s
        s = state.params + 1
        done = jnp.array([True, True, False]) & (s % 3 != 0)
        episode = EpisodeStats(done, jnp.stack([s, -s, 100 * s]).astype(jnp.float32), jnp.ones(3, jnp.int32))
        return Counter(s), episode.sums()

    start = Counter(jnp.int32(0))
    _, _, rows, done, _ = jax.jit(runner.make_chunk(iteration, 2, 4))(start, runner.empty_row(iteration, start), 6)
    assert int(done) == 3  # rows of iterations (1, 2), (3, 4), (5, 6); 3 and 6 end no episode
    np.testing.assert_array_equal(rows["return_max"][:3], [2, 4, 5])
    np.testing.assert_array_equal(rows["return_min"][:3], [-2, -4, -5])
    np.testing.assert_array_equal(rows["episodes"][:3], [4, 2, 2])
    np.testing.assert_array_equal(rows["return_sum"][:3], [0, 0, 0])
    _, _, rows, _, _ = jax.jit(runner.make_chunk(iteration, 1, 4))(start, runner.empty_row(iteration, start), 4)
    np.testing.assert_array_equal(rows["return_max"], [1, 2, np.nan, 4])  # no episode ended: not measured


def test_chunk_names_the_first_iteration_whose_parameters_are_not_finite():
    def iteration(state):  # parameters become inf after iteration 6, NaN after 8
        s = state.params + 1
        params = jnp.where(s >= 8, jnp.nan, jnp.where(s >= 6, jnp.inf, s))
        return Counter(params), {"losses/x": params}

    start = Counter(jnp.float32(2))
    _, _, _, _, diverged_at = jax.jit(runner.make_chunk(iteration, 1, 10))(start, runner.empty_row(iteration, start), 9)
    assert int(diverged_at) == 4  # iterations 1-3 give 3, 4, 5; the 4th gives inf


def test_progress_line_counts_past_two_billion_percent_points(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    progress = runner.Progress(49_807_360)
    progress.update(np.int32(35_061_760), 400_000, 109.4, 5701.3)  # 100 * step overflows an int32
    assert "step 35,061,760/49,807,360 (70%)  SPS 400000" in capsys.readouterr().out


def test_compile_aside_compiles_on_its_thread_for_runs_split_over_devices():
    # as in training: parameters split over two CPU devices, evaluation keys made unplaced; the program must
    # compile ahead on the helper thread (not fall back to compiling at the first call)
    code = """
import logging, jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_log_compiles", True)
from common import runner
compiled_on = []  # for each compile of f: on the main thread?
class Spy(logging.Handler):
    def emit(self, record):
        if "Finished XLA compilation of jit(f)" in record.getMessage():
            compiled_on.append(record.threadName == "MainThread")
logging.getLogger("jax").addHandler(Spy())
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("runs",))
params = jax.device_put(jnp.arange(4.0).reshape(2, 2), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("runs")))
keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(2))
def f(p, k):
    return p.sum(1) + k[:, 0]
call = runner.compile_aside(jax.jit(f), params, keys)
out = call(params, jax.vmap(jax.random.PRNGKey)(jnp.arange(2)))
assert compiled_on == [False], compiled_on
np.testing.assert_allclose(out, [1.0, 5.0])  # PRNGKey(s)[0] is 0 for small s
on_one_device = jax.device_put(params, jax.devices()[0])  # placed otherwise: compiled again, for these
np.testing.assert_allclose(call(on_one_device, keys), [1.0, 5.0])
fallback = runner.compile_aside(lambda x: x + 1, jnp.ones(2))  # nothing to lower: called as it is
np.testing.assert_array_equal(fallback(jnp.zeros(2)), [1.0, 1.0])
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
