import csv
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppo_discrete
from common.config import run_main, setup_jax
from common.envs import make_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gymnax_cartpole_learns_to_475():
    args = ppo_discrete.Args(env_id="gymnax/CartPole-v1", total_timesteps=4 * 128 * 640)
    env = make_env(args.env_id, args.num_envs)
    eval_env = make_env(args.env_id, 16, freeze_stats=True)
    init, train_chunk, evaluate = ppo_discrete.make_train(args, env, eval_env, 640)
    hp = {k: jnp.float32(getattr(args, k)) for k in ppo_discrete.SWEEPABLE}
    state, metrics = jax.jit(train_chunk)(jax.jit(init)(jax.random.PRNGKey(0), hp))
    returns = evaluate(state.params, state.env_state.norm, jax.random.PRNGKey(1))
    assert returns.mean() >= 475, returns
    assert metrics["episodes"][-10:].sum() > 0


def test_seed_in_a_batch_repeats_the_seed_alone():
    # --num-seeds 2 --seed 1 trains seeds 1 and 2 in one vmapped program; seed 2 must match a lone --seed 2
    setup_jax()  # the scripts' PRNG settings
    args = ppo_discrete.Args(env_id="gymnax/CartPole-v1", total_timesteps=2 * 512)
    env = make_env(args.env_id, args.num_envs)
    init, train_chunk, _ = ppo_discrete.make_train(args, env, make_env(args.env_id, 2, freeze_stats=True), 2)

    def train(seeds):
        hp = {k: jnp.full(len(seeds), getattr(args, k), jnp.float32) for k in ppo_discrete.SWEEPABLE}
        state = jax.vmap(init)(jax.vmap(jax.random.PRNGKey)(jnp.array(seeds)), hp)
        return jax.jit(jax.vmap(train_chunk))(state)[0].params

    both, alone = train([1, 2]), train([2])
    for a, b in zip(jax.tree.leaves(both), jax.tree.leaves(alone)):
        np.testing.assert_allclose(a[1], b[0], rtol=1e-5, atol=1e-6)


def cli(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, "argv", ["ppo_discrete.py", *argv])
    code = 0
    try:
        run_main(ppo_discrete.main)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--env-id", "Pendulum-v1"], "has continuous actions"),
    (["--env-id", "brax/ant"], "use ppo_continuous.py"),
    (["--env-id", "gymnax/CartPol-v1"], "unknown gymnax env 'CartPol-v1' (did you mean CartPole-v1"),
    (["--num-minibatches", "3"], "is not divisible by --num-minibatches 3"),
    (["--num-seeds", "0"], "--num-seeds must be positive"),
    (["--sweep", "learning-rat=1e-3"], "--sweep 'learning-rat=1e-3': use NAME=V1,V2"),
    (["--sweep", "gamma=0.9,high"], "values must be numbers"),
])
def test_bad_input_exits_2_with_one_line(monkeypatch, capsys, tmp_path, argv, message):
    monkeypatch.chdir(tmp_path)
    code, err = cli(monkeypatch, capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not os.path.exists(tmp_path / "runs")


def run_script(tmp_path, *argv):
    return subprocess.run([sys.executable, os.path.join(ROOT, "ppo_discrete.py"), *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def test_cli_gymnasium_cartpole_smoke(tmp_path):
    out = run_script(tmp_path, "--env-id", "CartPole-v1", "--total-timesteps", "2048", "--eval-every", "1024",
                     "--num-eval-envs", "2", "--save-model")
    assert out.returncode == 0, out.stderr
    (run_dir,) = [d for d in (tmp_path / "runs").iterdir() if d.is_dir()]
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"charts/episodic_return", "losses/entropy", "eval/episodic_return"} <= {r["metric"] for r in rows}
    assert (run_dir / "model.ckpt").exists()


def test_cli_gymnax_minatar_smoke(tmp_path):
    out = run_script(tmp_path, "--env-id", "gymnax/Breakout-MinAtar", "--total-timesteps", "2048",
                     "--num-eval-envs", "2")
    assert out.returncode == 0, out.stderr
    (run_dir,) = [d for d in (tmp_path / "runs").iterdir() if d.is_dir()]
    with open(run_dir / "metrics.csv") as f:
        assert "eval/episodic_return" in {r["metric"] for r in csv.DictReader(f)}


def test_sweep_reports_per_setting(tmp_path):
    out = run_script(tmp_path, "--env-id", "gymnax/CartPole-v1", "--total-timesteps", "4096", "--num-seeds", "2",
                     "--sweep", "learning-rate=1e-5,1e-2", "--eval-every", "4096", "--exp-name", "sw")
    assert out.returncode == 0, out.stderr
    run_dirs = sorted(d for d in (tmp_path / "runs").iterdir() if d.is_dir())
    assert len(run_dirs) == 4  # 2 settings x 2 seeds
    (summary,) = (tmp_path / "runs").glob("*_summary.csv")
    with open(summary) as f:
        table = list(csv.DictReader(f))
    assert [row["learning-rate"] for row in table] == ["1e-05", "0.01"]
    assert all(row["seeds"] == "2" for row in table)

    def last(run_dir, metric):
        with open(run_dir / "metrics.csv") as f:
            return [float(r["value"]) for r in csv.DictReader(f) if r["metric"] == metric][-1]

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
        out = run_script(tmp_path, "--env-id", "gymnax/CartPole-v1", "--total-timesteps", "8192",
                         "--eval-every", "4096", "--exp-name", exp, *argv)
        assert out.returncode == 0, out.stderr
        runs = {}
        for run_dir in (d for d in (tmp_path / "runs").glob(f"*__{exp}__*") if d.is_dir()):
            with open(run_dir / "metrics.csv") as f:
                runs[run_dir.name.split("__")[2]] = [(r["global_step"], r["metric"], float(r["value"]))
                                                     for r in csv.DictReader(f) if r["metric"] != "charts/SPS"]
        return runs

    first, second = metrics("a", "--seed", "5", "--num-seeds", "2"), metrics("b", "--seed", "5", "--num-seeds", "2")
    assert sorted(first) == ["5", "6"] and len(first["6"]) > 100 and first == second
    alone = metrics("c", "--seed", "6")["6"]
    assert [row[:2] for row in alone] == [row[:2] for row in first["6"]]
    np.testing.assert_allclose([row[2] for row in alone], [row[2] for row in first["6"]], rtol=1e-3, atol=1e-6)
