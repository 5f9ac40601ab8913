import csv
import dataclasses
import os
import pickle
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppo_continuous
from common import runner
from common.envs import NormStats, init_stats, make_env
from common.logger import load_checkpoint, restore, save_checkpoint
from conftest import RunsCode, cli, list_runs, read_metrics, run_script, scan_iterations
from ppo_continuous import compute_gae


def gae_reference(values, rewards, terminated, truncated, next_values, gamma, lam):
    """Plain loop: bootstrap from the next value unless terminated; the trace stops at any episode end."""
    T, N = values.shape
    adv = np.zeros((T, N))
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            done = terminated[t, n] or truncated[t, n]
            bootstrap = 0.0 if terminated[t, n] else gamma * next_values[t, n]
            delta = rewards[t, n] + bootstrap - values[t, n]
            running = delta + (0.0 if done else gamma * lam * running)
            adv[t, n] = running
    return adv, adv + values


def test_gae_matches_numpy_loop_with_terminations_and_truncations():
    rng = np.random.default_rng(0)
    T, N = 37, 5
    values, rewards, next_values = (rng.normal(size=(T, N)) for _ in range(3))
    terminated = rng.random((T, N)) < 0.1
    truncated = (rng.random((T, N)) < 0.1) & ~terminated
    adv, ret = compute_gae(jnp.asarray(values), jnp.asarray(rewards), jnp.asarray(terminated, jnp.float32),
                           jnp.asarray(terminated | truncated, jnp.float32), jnp.asarray(next_values), 0.99, 0.95)
    ref_adv, ref_ret = gae_reference(values, rewards, terminated, truncated, next_values, 0.99, 0.95)
    assert terminated.any() and truncated.any()
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-5)


def test_gae_truncation_bootstraps_and_termination_does_not():
    # one env, two steps; step 0 ends the episode
    values, rewards, next_values = jnp.array([[1.0], [2.0]]), jnp.array([[0.5], [0.0]]), jnp.array([[10.0], [0.0]])
    trunc, _ = compute_gae(values, rewards, jnp.zeros((2, 1)), jnp.array([[1.0], [0.0]]), next_values, 0.9, 0.95)
    term, _ = compute_gae(values, rewards, jnp.array([[1.0], [0.0]]), jnp.array([[1.0], [0.0]]), next_values, 0.9, 0.95)
    assert np.isclose(trunc[0, 0], 0.5 + 0.9 * 10.0 - 1.0)
    assert np.isclose(term[0, 0], 0.5 - 1.0)




@pytest.mark.parametrize("argv, message", [
    (["--env-id", "Hoper-v4"], "unknown env id 'Hoper-v4' (did you mean Hopper-v4"),
    (["--env-id", "brax/antt"], "unknown Brax env 'antt' (did you mean ant"),
    (["--env-id", "CartPole-v1"], "'CartPole-v1' has discrete actions; this script needs a continuous (Box) action "
                                  "space: use ppo_discrete.py"),
    (["--env-id", "gymnax/CartPole-v1"], "has discrete actions"),
    (["--env-id", "gymnax/Cartpole-v1"], "unknown gymnax env 'Cartpole-v1' (did you mean CartPole-v1"),
    (["--num-steps", "100"], "is not divisible by --num-minibatches 32"),
    (["--num-envs", "0"], "--num-envs must be positive"),
    (["--total-timesteps", "-5"], "--total-timesteps must be positive"),
    (["--config", "missing.yaml"], "config file 'missing.yaml' not found"),
    (["--eval-only"], "--eval-only needs --load-model"),
    (["--load-model", "missing.ckpt"], "model file 'missing.ckpt' not found"),
    (["--activation", "sigmoid"], "unknown --activation 'sigmoid'"),
    (["--gamma", "1.5"], "--gamma must be in [0, 1], got 1.5; pass a value in [0, 1]"),
    (["--gae-lambda", "-0.1"], "--gae-lambda must be in [0, 1], got -0.1"),
    (["--clip-coef", "0"], "--clip-coef must be positive, got 0.0; pass a value > 0"),
    (["--max-grad-norm", "0"], "--max-grad-norm must be positive"),
    (["--reward-scale", "-1"], "--reward-scale must be positive"),
    (["--vf-coef", "-0.5"], "--vf-coef must be in [0, inf)"),
    (["--sweep", "gamma=0.9,1.5"], "--gamma must be in [0, 1], got 1.5"),
    (["--sweep", "gamma=0.9,0.99"], "--sweep gamma with --normalize-reward"),
    (["--sweep", "learning-rate=1e-3,0"], "--learning-rate must be positive, got 0.0"),
    (["--sweep", "num-steps=64"], "--sweep 'num-steps=64': use NAME=V1,V2 with NAME one of learning-rate"),
])
def test_bad_input_exits_2_with_one_line(monkeypatch, capsys, tmp_path, argv, message):
    monkeypatch.chdir(tmp_path)
    code, err = cli(monkeypatch, capsys, ppo_continuous, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not os.path.exists(tmp_path / "runs")  # nothing trained or logged


@pytest.mark.parametrize("env_id", ["brax/inverted_pendulum", "Hopper-v4"])
def test_a_gl_backend_that_cannot_load_is_one_error_line(tmp_path, env_id):
    # MuJoCo loads the backend MUJOCO_GL names at import, rendering or not (EGL without libEGL fails there too)
    out = run_script(tmp_path, "ppo_continuous.py", "--env-id", env_id, env={**os.environ, "MUJOCO_GL": "bogus"})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("error: ") == 1 and "MUJOCO_GL=bogus" in out.stderr and "MUJOCO_GL=disable" in out.stderr
    assert not os.path.exists(tmp_path / "runs")


def test_existing_run_dir_is_not_overwritten(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "time", lambda: 1234.0)
    os.makedirs("runs/Pendulum-v1__x__1__1234")
    code, err = cli(monkeypatch, capsys, ppo_continuous, "--env-id", "Pendulum-v1", "--exp-name", "x")
    assert code == 2 and "--clear-out" in err


def small_args(**kw):
    base = dict(env_id="brax/inverted_pendulum", brax_backend="positional", num_envs=32, num_steps=64,
                num_minibatches=4, update_epochs=4, total_timesteps=32 * 64 * 16)
    return ppo_continuous.Args(**{**base, **kw})


def hp_of(args, runs=None):
    """The SWEEPABLE knobs as init's `hp` (float32 scalars, or `runs` copies for a vmapped init)."""
    shape = () if runs is None else (runs,)
    return {k: jnp.full(shape, getattr(args, k), jnp.float32) for k in ppo_continuous.SWEEPABLE
            if getattr(args, k) is not None}


def build(args, chunk):
    kw = dict(normalize_obs=args.normalize_obs, normalize_reward=args.normalize_reward,
              brax_backend=args.brax_backend)
    env = make_env(args.env_id, args.num_envs, **kw)
    eval_env = make_env(args.env_id, 8, freeze_stats=True, **kw)
    init, train_iteration, evaluate = ppo_continuous.make_train(args, env, eval_env)
    return init, scan_iterations(train_iteration, chunk), evaluate


def test_brax_inverted_pendulum_learns_and_is_deterministic():
    args = small_args(total_timesteps=32 * 64 * 32, learning_rate=1e-3)
    init, train_chunk, evaluate = build(args, 16)
    train_chunk, evaluate = jax.jit(train_chunk), jax.jit(evaluate)
    state = jax.jit(init)(jax.random.PRNGKey(0), hp_of(args))
    first = None
    for i in range(2):  # 65k env steps
        state, metrics = train_chunk(state)
        first = metrics if first is None else first
    returns = evaluate(state.params, state.env_state.norm, jax.random.PRNGKey(1))
    assert returns.mean() >= 950, returns  # the pole stays up (max 1000) with frozen normalisation
    again = jax.jit(init)(jax.random.PRNGKey(0), hp_of(args))
    _, metrics = train_chunk(again)
    for key in first:  # same seed, same numbers
        np.testing.assert_array_equal(first[key], metrics[key], err_msg=key)


def test_cli_gymnasium_trains_logs_saves_and_evaluates(tmp_path):
    out = run_script(tmp_path, "ppo_continuous.py", "--env-id", "Pendulum-v1", "--num-envs", "2", "--num-steps", "256",
                     "--num-minibatches", "4", "--update-epochs", "2", "--total-timesteps", "4096",
                     "--eval-every", "2048", "--num-eval-envs", "2", "--save-model", "--exp-name", "smoke",
                     "--num-seeds", "2")
    assert out.returncode == 0, out.stderr
    run_dirs = list_runs(tmp_path)
    assert [d.name.split("__")[:3] for d in run_dirs] == [["Pendulum-v1", "smoke", "1"], ["Pendulum-v1", "smoke", "2"]]
    # no sweep: a one-row summary of the final evaluation over both seeds
    (summary,) = (tmp_path / "runs").glob("*_summary.csv")
    assert summary.name == run_dirs[0].name + "_summary.csv"
    header, row = summary.read_text().splitlines()
    assert header == "mean,std,seeds" and row.endswith(",2")
    rows = read_metrics(run_dirs[0])
    names = {r["metric"] for r in rows}
    for name in ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate",
                 "losses/value_loss", "losses/policy_loss", "losses/entropy", "losses/approx_kl",
                 "losses/clipfrac", "losses/explained_variance", "eval/episodic_return"]:
        assert name in names, name
    steps = sorted({int(r["global_step"]) for r in rows if r["metric"] == "losses/value_loss"})
    assert steps == [512 * k for k in range(1, 9)]  # global_step counts env steps
    lengths = [float(r["value"]) for r in rows if r["metric"] == "charts/episodic_length"]
    assert lengths and all(v == 200 for v in lengths)  # Pendulum's time limit
    evals = [r for r in rows if r["metric"] == "eval/episodic_return"]
    assert [int(r["global_step"]) for r in evals] == [2048, 4096]
    assert any(f.name.startswith("events.out.tfevents") for f in run_dirs[0].iterdir())

    ckpt = str(run_dirs[1] / "model.ckpt")
    out = run_script(tmp_path, "ppo_continuous.py", "--load-model", ckpt, "--eval-only", "--num-eval-envs", "3",
                     "--seed", "7")
    assert out.returncode == 0, out.stderr
    assert "eval/episodic_return" in out.stdout
    eval_dir = next(d for d in (tmp_path / "runs").iterdir() if "-eval" in d.name)
    assert any(r["metric"] == "eval/episodic_return" for r in read_metrics(eval_dir))


def test_cli_brax_smoke_with_video(tmp_path):
    pytest.importorskip("moviepy")  # in requirements.txt; absent where only the GPU image's packages are
    out = run_script(tmp_path, "ppo_continuous.py", "--env-id", "brax/inverted_pendulum", "--brax-backend",
                     "positional", "--num-envs", "16", "--num-steps", "32", "--num-minibatches", "4",
                     "--update-epochs", "1", "--total-timesteps", "2048", "--eval-every", "1024",
                     "--num-eval-envs", "2", "--eval-max-episode-steps", "50", "--exp-name", "smoke", "--num-seeds",
                     "2", "--capture-video")
    assert out.returncode == 0, out.stderr
    first, second = list_runs(tmp_path)
    rows = read_metrics(first)
    evals = [float(r["value"]) for r in rows if r["metric"] == "eval/episodic_return"]
    assert len(evals) == 2 and all(0 < v <= 50 for v in evals)  # eval envs use their own time limit
    # the first episode of env 0 of the first seed in each evaluation, one frame per step
    videos = sorted((first / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["rl-video-step-0.mp4", "rl-video-step-50.mp4"]
    assert not (second / "videos").exists()
    from moviepy import VideoFileClip
    with VideoFileClip(str(videos[0])) as clip:
        frames = round(clip.duration * clip.fps)
    assert 1 <= frames <= 50 and clip.size == [320, 240]


def test_cli_capture_video_and_offline_wandb(tmp_path):
    pytest.importorskip("moviepy"), pytest.importorskip("wandb")
    env = {**os.environ, "WANDB_MODE": "offline", "MUJOCO_GL": "egl"}
    out = run_script(tmp_path, "ppo_continuous.py", "--env-id", "Hopper-v4", "--num-steps", "256",
                     "--num-minibatches", "4", "--update-epochs", "1", "--total-timesteps", "512", "--eval-every",
                     "256", "--num-eval-envs", "1", "--capture-video", "--track", "--exp-name", "video", env=env)
    assert out.returncode == 0, out.stderr
    (run_dir,) = list_runs(tmp_path)
    videos = sorted(p.name for p in (run_dir / "videos").glob("*.mp4"))
    assert videos == ["rl-video-step-0.mp4", "rl-video-step-1000.mp4"]  # first episode of each evaluation
    assert (run_dir / "wandb" / "latest-run").exists()


def pendulum_train(chunk, **kw):
    args = ppo_continuous.Args(**{**dict(env_id="Pendulum-v1", num_envs=2, num_steps=64, num_minibatches=4,
                                         total_timesteps=2 * 64 * chunk), **kw})
    env = make_env(args.env_id, args.num_envs, normalize_obs=True, normalize_reward=True)
    init, train_iteration, _ = ppo_continuous.make_train(args, env, env)
    return jax.jit(scan_iterations(train_iteration, chunk))(init(jax.random.PRNGKey(3), hp_of(args)))


def test_target_kl_stops_the_epochs_early():
    one_epoch, _ = pendulum_train(1, update_epochs=1)
    stopped, metrics = pendulum_train(1, update_epochs=4, target_kl=1e-12)
    full, _ = pendulum_train(1, update_epochs=4)
    for a, b in zip(jax.tree.leaves(stopped.params), jax.tree.leaves(one_epoch.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # KL > target after epoch 1: stop there
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(one_epoch.params)))
    assert np.isfinite(metrics["losses/approx_kl"]).all()


def test_reset_env_restarts_episodes_each_rollout():
    # Pendulum episodes last 200 steps: carried over, they end within 4 rollouts of 64 steps; reset every
    # rollout, none ever reaches the limit
    _, carried = pendulum_train(4)
    _, reset = pendulum_train(4, reset_env=True)
    assert carried["episodes"].sum() == 2 and (carried["length_sum"].sum() == 400)
    assert reset["episodes"].sum() == 0


def tiny_checkpoint(path):
    """A real checkpoint of ppo_continuous's network for gymnax/Pendulum-v1, written without training."""
    args = ppo_continuous.Args(env_id="gymnax/Pendulum-v1", actor_hidden=(8,), critic_hidden=(8,))
    params = ppo_continuous.init_params(jax.random.PRNGKey(0), 3, 1, args)
    save_checkpoint(str(path), params, NormStats(init_stats((3,)), init_stats(())), dataclasses.asdict(args))


@pytest.mark.parametrize("kind", ["pickle open", "pickle os.system", "random bytes", "truncated checkpoint", "empty"])
@pytest.mark.parametrize("eval_only", [True, False])
def test_a_model_file_that_is_not_a_checkpoint_is_one_error_line_and_runs_no_code(monkeypatch, capsys, tmp_path,
                                                                                  kind, eval_only):
    monkeypatch.chdir(tmp_path)
    path, marker = tmp_path / "model.ckpt", tmp_path / "marker"
    if kind.startswith("pickle"):
        payload = RunsCode(open, str(marker), "w") if kind == "pickle open" else \
            RunsCode(os.system, f"touch {marker}")
        with open(path, "wb") as f:  # shaped like the pickled checkpoints of earlier versions
            pickle.dump({"params": payload, "norm": None, "config": {"env_id": "gymnax/Pendulum-v1"}}, f)
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(1).bytes(2000))
    elif kind == "truncated checkpoint":
        tiny_checkpoint(tmp_path / "whole.ckpt")
        data = (tmp_path / "whole.ckpt").read_bytes()
        assert load_checkpoint(str(tmp_path / "whole.ckpt"), ppo_continuous.Args())["params"]  # whole: loads
        path.write_bytes(data[: len(data) - 100])
    else:
        path.write_bytes(b"")
    code, err = cli(monkeypatch, capsys, ppo_continuous, "--load-model", str(path), "--num-eval-envs", "2",
                    *(["--eval-only"] if eval_only else []))
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"error: model file '{path}' is not a checkpoint written by "
                                                   f"--save-model"), err
    assert "Traceback" not in err
    assert not marker.exists()  # the pickle's code never ran
    assert not (tmp_path / "runs").exists()


def test_sweep_trains_every_setting_and_seed_and_writes_a_summary(tmp_path):
    out = run_script(tmp_path, "ppo_continuous.py", "--env-id", "gymnax/Pendulum-v1", "--num-envs", "4",
                     "--num-steps", "32", "--num-minibatches", "2", "--update-epochs", "1", "--total-timesteps",
                     "256", "--eval-every", "256", "--num-eval-envs", "2", "--eval-max-episode-steps", "50",
                     "--actor-hidden", "16", "--critic-hidden", "16", "--num-seeds", "2",
                     "--sweep", "learning-rate=1e-5,1e-2", "--exp-name", "sw")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "final eval/episodic_return" in out.stdout  # the summary table
    run_dirs = list_runs(tmp_path)
    names = [d.name.split("__") for d in run_dirs]
    assert sorted((n[1], n[2]) for n in names) == [("sw_learning_rate=0.01", "1"), ("sw_learning_rate=0.01", "2"),
                                                   ("sw_learning_rate=1e-05", "1"), ("sw_learning_rate=1e-05", "2")]
    (summary,) = (tmp_path / "runs").glob("*_summary.csv")
    with open(summary) as f:
        table = list(csv.DictReader(f))
    assert [row["learning-rate"] for row in table] == ["1e-05", "0.01"] and all(r["seeds"] == "2" for r in table)
    for row, lr in zip(table, ["1e-05", "0.01"]):
        finals = []
        for d in run_dirs:
            if d.name.split("__")[1] != f"sw_learning_rate={lr}":
                continue
            rows = read_metrics(d)
            # each run trained with its own setting: the first iteration's (annealed) rate is the swept value
            first_lr = next(float(r["value"]) for r in rows if r["metric"] == "charts/learning_rate")
            assert first_lr == pytest.approx(float(lr), rel=1e-6)
            finals.append([float(r["value"]) for r in rows if r["metric"] == "eval/episodic_return"][-1])
        assert float(row["mean"]) == pytest.approx(np.mean(finals), abs=0.006)
        assert float(row["std"]) == pytest.approx(np.std(finals), abs=0.006)


def test_checkpoint_round_trip_and_eval_only(monkeypatch, capsys, tmp_path):
    """What --save-model writes (runner.save_runs) loads back equal, with the network flags, and --eval-only of it
    gives the evaluation of the saved parameters."""
    monkeypatch.chdir(tmp_path)
    runner.setup_jax()  # the scripts' settings, so the in-process evaluation below matches the CLI's
    args = ppo_continuous.Args(env_id="gymnax/Pendulum-v1", num_envs=2, num_steps=64, num_minibatches=2,
                               update_epochs=1, total_timesteps=256, actor_hidden=(16,), critic_hidden=(8, 8),
                               activation="relu", seed=4)
    kw = dict(normalize_obs=True, normalize_reward=True)
    env = make_env(args.env_id, args.num_envs, **kw)
    eval_env = make_env(args.env_id, 2, freeze_stats=True, max_episode_steps=50, **kw)
    init, train_iteration, evaluate = ppo_continuous.make_train(args, env, eval_env)
    state = jax.vmap(init, in_axes=(0, 0, None, None))(jax.random.PRNGKey(4)[None], hp_of(args, 1), None, None)
    state, _ = jax.jit(jax.vmap(scan_iterations(train_iteration, 2)))(state)
    assert int(state.iteration[0]) == 2
    os.makedirs("saved")
    runner.save_runs(state.params, state.env_state.norm, ["saved"], [{**dataclasses.asdict(args), "seed": 4}])

    loaded = ppo_continuous.Args()  # defaults: env, network and normalisation flags come from the checkpoint
    blob = load_checkpoint("saved/model.ckpt", loaded)
    assert (loaded.env_id, loaded.actor_hidden, loaded.critic_hidden, loaded.activation, loaded.normalize_obs) == \
        ("gymnax/Pendulum-v1", (16,), (8, 8), "relu", True)
    assert blob["config"]["seed"] == 4 and blob["config"]["learning_rate"] == args.learning_rate
    params, norm = restore(blob, state.params, state.env_state.norm)
    assert jax.tree.structure((params, norm)) == jax.tree.structure((state.params, state.env_state.norm))
    for got, saved in zip(jax.tree.leaves((params, norm)), jax.tree.leaves((state.params, state.env_state.norm))):
        np.testing.assert_array_equal(got, saved[0])
    assert norm.obs.count > 1 and not np.allclose(params["log_std"], 0)  # trained, not fresh

    code, err = cli(monkeypatch, capsys, ppo_continuous, "--load-model", "saved/model.ckpt", "--eval-only",
                    "--num-eval-envs", "2", "--eval-max-episode-steps", "50", "--seed", "9", "--exp-name", "rt")
    assert code == 0, err
    (eval_dir,) = (tmp_path / "runs").iterdir()
    assert eval_dir.name.startswith("gymnax_Pendulum-v1__rt-eval__9__")
    (got,) = [float(r["value"]) for r in read_metrics(eval_dir) if r["metric"] == "eval/episodic_return"]
    expected = evaluate(params, norm, jax.random.PRNGKey(9 + 10_000)).mean()  # the runner's evaluation keys
    assert np.isfinite(got) and got == pytest.approx(float(expected), rel=1e-4)
