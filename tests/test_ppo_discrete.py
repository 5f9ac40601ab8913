import csv
import os
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppo_discrete
from common.envs import make_env
from common import runner
from common.logger import load_checkpoint
from common.runner import finite_runs, setup_jax
from conftest import cli, list_runs, read_metrics, run_script, scan_iterations


def test_gymnax_cartpole_learns_to_475():
    args = ppo_discrete.Args(env_id="gymnax/CartPole-v1", total_timesteps=4 * 128 * 640)
    env = make_env(args.env_id, args.num_envs)
    eval_env = make_env(args.env_id, 16, freeze_stats=True)
    init, train_iteration, evaluate = ppo_discrete.make_train(args, env, eval_env)
    hp = {k: jnp.float32(getattr(args, k)) for k in ppo_discrete.SWEEPABLE}
    state, metrics = jax.jit(scan_iterations(train_iteration, 640))(jax.jit(init)(jax.random.PRNGKey(0), hp))
    returns = evaluate(state.params, state.env_state.norm, jax.random.PRNGKey(1))
    assert returns.mean() >= 475, returns
    assert metrics["episodes"][-10:].sum() > 0


def test_seed_in_a_batch_repeats_the_seed_alone():
    # --num-seeds 2 --seed 1 trains seeds 1 and 2 in one vmapped program; seed 2 must match a lone --seed 2
    setup_jax()  # the scripts' PRNG settings
    args = ppo_discrete.Args(env_id="gymnax/CartPole-v1", total_timesteps=2 * 512)
    env = make_env(args.env_id, args.num_envs)
    init, train_iteration, _ = ppo_discrete.make_train(args, env, make_env(args.env_id, 2, freeze_stats=True))

    def train(seeds):
        hp = {k: jnp.full(len(seeds), getattr(args, k), jnp.float32) for k in ppo_discrete.SWEEPABLE}
        state = jax.vmap(init)(jax.vmap(jax.random.PRNGKey)(jnp.array(seeds)), hp)
        return jax.jit(jax.vmap(scan_iterations(train_iteration, 2)))(state)[0].params

    both, alone = train([1, 2]), train([2])
    for a, b in zip(jax.tree.leaves(both), jax.tree.leaves(alone)):
        np.testing.assert_allclose(a[1], b[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--env-id", "Pendulum-v1"], "'Pendulum-v1' has continuous actions; this script needs a Discrete action "
                                  "space: use ppo_continuous.py or sac.py"),
    (["--env-id", "gymnax/Pendulum-v1"], "has continuous actions"),
    (["--env-id", "brax/ant"], "'brax/ant': Brax envs have continuous actions; use ppo_continuous.py or sac.py"),
    (["--env-id", "gymnax/CartPol-v1"], "unknown gymnax env 'CartPol-v1' (did you mean CartPole-v1"),
    (["--num-minibatches", "3"], "is not divisible by --num-minibatches 3"),
    (["--num-seeds", "0"], "--num-seeds must be positive"),
    (["--sweep", "learning-rat=1e-3"], "--sweep 'learning-rat=1e-3': use NAME=V1,V2"),
    (["--sweep", "gamma=0.9,high"], "values must be numbers"),
    (["--sweep", "gamma=0.9,1.5"], "--gamma must be in [0, 1], got 1.5"),
    (["--sweep", "max-grad-norm=0.1,1", "--max-grad-norm", "None"], "--max-grad-norm is off"),
    (["--gamma", "1.5"], "--gamma must be in [0, 1], got 1.5; pass a value in [0, 1]"),
    (["--gae-lambda", "-0.1"], "--gae-lambda must be in [0, 1], got -0.1"),
    (["--clip-coef", "0"], "--clip-coef must be positive, got 0.0; pass a value > 0"),
    (["--learning-rate", "-1e-3"], "--learning-rate must be positive"),
    (["--ent-coef", "-0.01"], "--ent-coef must be in [0, inf)"),
    (["--target-kl", "0"], "--target-kl must be positive"),
    (["--eval-only"], "--eval-only needs --load-model"),
    (["--num-envs", "2.5"], "Error parsing --num-envs: invalid literal for int()"),  # tyro's message, one line
    (["--num-env", "2"], "Unrecognized options: --num-env, 2 (did you mean --num-envs?)"),
    (["--gamma"], "Missing value for argument '--gamma'"),
])
def test_bad_input_exits_2_with_one_line(monkeypatch, capsys, tmp_path, argv, message):
    monkeypatch.chdir(tmp_path)
    code, err = cli(monkeypatch, capsys, ppo_discrete, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not os.path.exists(tmp_path / "runs")


def test_cli_gymnasium_cartpole_smoke(tmp_path):
    out = run_script(tmp_path, "ppo_discrete.py", "--env-id", "CartPole-v1", "--total-timesteps", "2048",
                     "--eval-every", "1024", "--num-eval-envs", "2", "--save-model")
    assert out.returncode == 0, out.stderr
    (run_dir,) = list_runs(tmp_path)
    rows = read_metrics(run_dir)
    assert {"charts/episodic_return", "losses/entropy", "eval/episodic_return"} <= {r["metric"] for r in rows}
    assert (run_dir / "model.ckpt").exists()
    # where the time went: the whole loop, and the first iteration that also compiled the training program
    loop, first = map(float, re.search(r"done: 2048 steps per run in ([\d.]+)s \(the first iteration, with the "
                                       r"compile, ([\d.]+)s\)", out.stdout).groups())
    assert 0 < first <= loop


def test_cli_gymnax_minatar_smoke(tmp_path):
    out = run_script(tmp_path, "ppo_discrete.py", "--env-id", "gymnax/Breakout-MinAtar", "--total-timesteps", "2048",
                     "--num-eval-envs", "2")
    assert out.returncode == 0, out.stderr
    (run_dir,) = list_runs(tmp_path)
    assert "eval/episodic_return" in {r["metric"] for r in read_metrics(run_dir)}


def test_sweep_reports_per_setting(tmp_path):
    out = run_script(tmp_path, "ppo_discrete.py", "--env-id", "gymnax/CartPole-v1", "--total-timesteps", "4096",
                     "--num-seeds", "2", "--sweep", "learning-rate=1e-5,1e-2", "--eval-every", "4096",
                     "--exp-name", "sw")
    assert out.returncode == 0, out.stderr
    run_dirs = list_runs(tmp_path)
    assert len(run_dirs) == 4  # 2 settings x 2 seeds
    (summary,) = (tmp_path / "runs").glob("*_summary.csv")
    with open(summary) as f:
        table = list(csv.DictReader(f))
    assert [row["learning-rate"] for row in table] == ["1e-05", "0.01"]
    assert all(row["seeds"] == "2" for row in table)

    def last(run_dir, metric):
        return [float(r["value"]) for r in read_metrics(run_dir) if r["metric"] == metric][-1]

    by_setting = {}
    for d in run_dirs:
        by_setting.setdefault("learning_rate=0.01" in d.name, []).append(last(d, "losses/entropy"))
    # a 1000x larger step moves the policy away from uniform (entropy ln 2) much faster
    assert min(by_setting[False]) > max(by_setting[True])
    assert np.allclose(by_setting[False], np.log(2), atol=1e-2)


def test_same_seed_twice_gives_identical_metrics_and_a_batch_repeats_lone_seeds(tmp_path):
    # with 2 cores the 2 seeds of a run train on 2 XLA CPU devices (runner.spread_runs); a lone seed on one
    # device is a differently compiled program, so it matches to float rounding, not bit for bit
    def metrics(exp, *argv):
        out = run_script(tmp_path, "ppo_discrete.py", "--env-id", "gymnax/CartPole-v1", "--total-timesteps", "8192",
                         "--eval-every", "4096", "--exp-name", exp, *argv)
        assert out.returncode == 0, out.stderr
        runs = {}
        for run_dir in (d for d in (tmp_path / "runs").glob(f"*__{exp}__*") if d.is_dir()):
            runs[run_dir.name.split("__")[2]] = [(r["global_step"], r["metric"], float(r["value"]))
                                                 for r in read_metrics(run_dir) if r["metric"] != "charts/SPS"]
        return runs

    first, second = metrics("a", "--seed", "5", "--num-seeds", "2"), metrics("b", "--seed", "5", "--num-seeds", "2")
    assert sorted(first) == ["5", "6"] and len(first["6"]) > 100 and first == second
    alone = metrics("c", "--seed", "6")["6"]
    assert [row[:2] for row in alone] == [row[:2] for row in first["6"]]
    np.testing.assert_allclose([row[2] for row in alone], [row[2] for row in first["6"]], rtol=1e-3, atol=1e-6)


# Adam moves every weight by about the learning rate per update: after one update at 1e30 the weights are finite
# (about 1e30), and the next rollout's values overflow float32, so the update after that makes them NaN
DIVERGE = ["--env-id", "gymnax/CartPole-v1", "--learning-rate", "1e30", "--no-anneal-lr", "--max-grad-norm", "None",
           "--num-eval-envs", "2", "--save-model", "--exp-name", "div"]


@pytest.mark.parametrize("updates_per_iteration, diverged_at", [(1, 1024), (16, 512)])
def test_divergence_stops_with_one_line_and_keeps_logs_and_the_last_good_checkpoint(
        monkeypatch, capsys, tmp_path, updates_per_iteration, diverged_at):
    # one iteration (512 env steps) per chunk: with 1 update per iteration the first chunk is still finite and
    # its checkpoint is kept; with 16 the first chunk already diverges and there is nothing good to keep
    flags = ["--num-minibatches", "1", "--update-epochs", "1"] if updates_per_iteration == 1 else []
    out = run_script(tmp_path, "ppo_discrete.py", *DIVERGE, "--total-timesteps", "4096", "--eval-every", "512", *flags)
    assert out.returncode == 3, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: training diverged at global_step {diverged_at} "), \
        out.stderr[-3000:]
    (run_dir,) = list_runs(tmp_path)
    rows = read_metrics(run_dir)
    assert rows and max(int(r["global_step"]) for r in rows) == diverged_at  # logs up to the divergence kept
    assert {int(r["global_step"]) for r in rows if r["metric"] == "losses/value_loss"} == \
        set(range(512, diverged_at + 1, 512))
    assert not list((tmp_path / "runs").glob("*_summary.csv"))  # no summary of a failed training
    ckpt = run_dir / "model.ckpt"
    if diverged_at == 512:
        assert "checkpoint" not in lines[0] and not ckpt.exists()
        return
    assert "and the checkpoint of global_step 512;" in lines[0] and ckpt.exists()
    assert [int(r["global_step"]) for r in rows if r["metric"] == "eval/episodic_return"] == [512]
    blob = load_checkpoint(str(ckpt), types.SimpleNamespace())
    leaves = jax.tree.leaves(blob["params"])
    assert leaves and all(np.isfinite(x).all() for x in leaves)
    assert bool(finite_runs(jax.tree.map(lambda x: x[None], blob["params"]))[0])
    assert max(np.abs(x).max() for x in leaves) > 1e29  # it is the state after the first (huge) update
    assert blob["config"]["learning_rate"] == 1e30 and blob["config"]["seed"] == 1
    # the kept checkpoint is usable
    monkeypatch.chdir(tmp_path)
    code, err = cli(monkeypatch, capsys, ppo_discrete, "--load-model", str(ckpt), "--eval-only",
                    "--num-eval-envs", "2", "--exp-name", "div")
    assert code == 0, err


def test_divergence_in_the_first_row_of_a_later_chunk_names_that_row(monkeypatch, capsys, tmp_path):
    # chunks of 1, 4, 16, ... iterations whatever the timing; one update per iteration, so the first iteration
    # (chunk 1) stays finite and the second, the first row of chunk 2, has an inf value loss and NaN parameters
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "CHUNK_SECONDS", 1e9)
    code, err = cli(monkeypatch, capsys, ppo_discrete, *DIVERGE, "--num-minibatches", "1", "--update-epochs", "1",
                    "--total-timesteps", "20480", "--eval-every", "20480")
    assert code == 3, err
    assert err.count("\n") == 1 and err.startswith("error: training diverged at global_step "), err
    assert "and the checkpoint of global_step 512;" in err
    (run_dir,) = list_runs(tmp_path)
    value = {(int(r["global_step"]), r["metric"]): float(r["value"]) for r in read_metrics(run_dir)}
    assert np.isfinite(value[512, "losses/value_loss"]) and not np.isfinite(value[1024, "losses/value_loss"])
    assert (run_dir / "model.ckpt").exists()
    assert err.startswith("error: training diverged at global_step 1024 "), err
