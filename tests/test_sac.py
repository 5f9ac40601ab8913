import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppo_continuous
import sac
from common.envs import Env, EnvSpec, EpisodeStats, make_env
from common.logger import load_checkpoint, restore
from conftest import ROOT, cli, list_runs, logged_rows, read_metrics, run_script, scan_iterations


def test_soft_q_target_matches_hand_computation():
    reward, terminal = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 0.0])
    next_q = np.array([[3.0, 5.0, -1.0], [4.0, 2.0, -2.0]])  # two target networks
    next_log_prob = np.array([-1.0, 0.3, 2.0])
    alpha, gamma = 0.2, 0.9
    got = sac.soft_q_target(jnp.asarray(reward), jnp.asarray(terminal), jnp.asarray(next_q),
                            jnp.asarray(next_log_prob), alpha, gamma)
    # min Q: 3, 2, -2; soft value subtracts alpha * log pi; a termination keeps the reward only
    expected = [1.0 + 0.9 * (3.0 + 0.2), -2.0, 0.5 + 0.9 * (-2.0 - 0.4)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    plain = sac.soft_q_target(jnp.asarray(reward), jnp.asarray(terminal), jnp.asarray(next_q),
                              jnp.asarray(next_log_prob), alpha, gamma, backup_entropy=False)
    np.testing.assert_allclose(plain, [1.0 + 0.9 * 3.0, -2.0, 0.5 + 0.9 * -2.0], rtol=1e-6)


def test_alpha_loss_value_and_gradient():
    log_prob, log_alpha, target = np.array([-1.0, 0.5, 2.5]), np.log(0.5), -3.0
    loss, grad = jax.value_and_grad(sac.alpha_loss)(jnp.float32(log_alpha), jnp.asarray(log_prob), target)
    np.testing.assert_allclose(loss, np.mean(-0.5 * (log_prob + target)), rtol=1e-6)
    np.testing.assert_allclose(grad, loss, rtol=1e-6)  # d/d log_alpha of -exp(log_alpha) * c is the loss
    # the entropy estimate -mean(log pi) = -0.67 is above the target -3: a gradient step lowers alpha
    assert grad > 0
    low_entropy = jax.grad(sac.alpha_loss)(jnp.float32(log_alpha), jnp.array([4.0, 5.0, 6.0]), target)
    assert low_entropy < 0  # entropy -5 is below the target: alpha rises


def test_buffer_wraps_around_and_samples_uniformly_from_filled_rows():
    capacity, num_envs = 6, 2
    buffer = sac.Transitions(*(jnp.zeros((capacity,) + s) for s in [(1,), (1,), (), (1,), ()]))
    for step in range(5):  # 10 rows into 6: steps 3 and 4 overwrite rows 0-3
        value = jnp.float32(step) * 10 + jnp.arange(num_envs)
        new = sac.Transitions(value[:, None], value[:, None], value, value[:, None], value)
        buffer = sac.insert(buffer, new, (step * num_envs) % capacity)
    np.testing.assert_array_equal(buffer.reward, [30, 31, 40, 41, 20, 21])

    counts = np.zeros(capacity)
    for i in range(20):
        batch = sac.sample(buffer, jax.random.PRNGKey(i), 4, 1000)  # only 4 rows filled
        rows = np.searchsorted(np.asarray(buffer.reward), np.asarray(batch.reward), sorter=np.argsort(buffer.reward))
        counts += np.bincount(np.argsort(buffer.reward)[rows], minlength=capacity)
    assert counts[4:].sum() == 0  # never beyond the filled rows
    assert np.all(np.abs(counts[:4] / counts.sum() - 0.25) < 0.02), counts


def scripted_env(num_envs=2):
    """Observation = step count; env 0 terminates every 4th step, env 1 is truncated every 3rd; the final
    observation is marked by +0.5 so it can't be confused with the reset observation that replaces it."""
    spec = EnvSpec("scripted", (1,), False, 1, -np.ones(1, np.float32), np.ones(1, np.float32), 3)
    period = jnp.array([4, 3])

    def step(state, action):
        t = state + 1
        terminated = jnp.array([True, False]) & (t % period == 0)
        truncated = jnp.array([False, True]) & (t % period == 0)
        done = terminated | truncated
        final = jnp.where(done, t + 0.5, t).astype(jnp.float32)[:, None]
        obs = jnp.where(done, 0, t).astype(jnp.float32)[:, None]
        zeros = jnp.zeros(num_envs)
        return (jnp.where(done, 0, t), obs, t.astype(jnp.float32), terminated, truncated, final,
                EpisodeStats(done, zeros, t))

    def reset(key, norm=None):
        from common.envs import EnvState, NormStats, init_stats
        state = EnvState(jnp.zeros(num_envs, jnp.int32), jnp.zeros(num_envs), jnp.zeros(num_envs, jnp.int32),
                         jnp.zeros(num_envs), NormStats(init_stats((1,)), init_stats(())))
        return state, jnp.zeros((num_envs, 1))

    def wrapped_step(state, action):
        inner, obs, reward, term, trunc, final, ep = step(state.inner, action)
        return state._replace(inner=inner), obs, reward, term, trunc, final, ep

    return Env(reset, wrapped_step, spec, num_envs, lambda: None, lambda norm, obs: obs)


@pytest.mark.parametrize("bootstrap", [True, False])
def test_buffer_stores_final_obs_and_terminations_not_truncations(bootstrap):
    env = scripted_env()
    args = sac.Args(env_id="scripted", num_envs=2, total_timesteps=24, buffer_size=24, learning_starts=10**6,
                    bootstrap_truncation=bootstrap, actor_hidden=(8,), critic_hidden=(8,))
    init, train_iteration, _ = sac.make_train(args, env, env)
    state, _ = jax.jit(scan_iterations(train_iteration, 12))(init(jax.random.PRNGKey(0)))
    b = jax.tree.map(np.asarray, state.buffer)
    obs, next_obs, terminal = b.obs.reshape(12, 2), b.next_obs.reshape(12, 2), b.terminal.reshape(12, 2)
    t = np.arange(1, 13)[:, None]
    episode_step = (t - 1) % np.array([4, 3]) + 1  # env 0 ends every 4th step, env 1 every 3rd
    ended = episode_step == np.array([4, 3])
    np.testing.assert_array_equal(obs, episode_step - 1)  # what the policy saw, reset obs included
    np.testing.assert_array_equal(next_obs, np.where(ended, episode_step + 0.5, episode_step))
    np.testing.assert_array_equal(terminal[:, 0], ended[:, 0])  # terminations always stop the bootstrap
    np.testing.assert_array_equal(terminal[:, 1], ended[:, 1] & (not bootstrap))  # time limits only if asked
    assert np.all(np.abs(b.action) <= 1)


def test_pendulum_learns():
    args = sac.Args(env_id="Pendulum-v1", total_timesteps=8000, learning_starts=1000)
    env = make_env(args.env_id, args.num_envs)
    eval_env = make_env(args.env_id, 5, freeze_stats=True)
    init, train_iteration, evaluate = sac.make_train(args, env, eval_env)
    state, metrics = jax.jit(logged_rows(train_iteration, 1000, 8))(init(jax.random.PRNGKey(1)))  # 8 rows
    returns = jax.jit(evaluate)(state.params, state.env_state.norm, jax.random.PRNGKey(2))
    env.close()
    eval_env.close()
    assert returns.mean() > -400, returns  # random actions score about -1,200
    assert np.isnan(metrics["losses/qf_loss"][0]) and np.isfinite(metrics["losses/qf_loss"][1:]).all()
    assert metrics["losses/alpha"][-1] < 0.2  # autotuned down from 1.0


@pytest.mark.parametrize("argv, message", [
    (["--env-id", "Hoper-v4"], "unknown env id 'Hoper-v4' (did you mean Hopper-v4"),
    (["--env-id", "CartPole-v1"], "'CartPole-v1' has discrete actions; this script needs a continuous (Box) action "
                                  "space: use ppo_discrete.py"),
    (["--env-id", "gymnax/CartPole-v1"], "has discrete actions"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--tau", "1.5"], "--tau must be in (0, 1], got 1.5; pass a value in (0, 1]"),
    (["--tau", "0"], "--tau must be in (0, 1], got 0.0"),
    (["--gamma", "2"], "--gamma must be in [0, 1], got 2.0"),
    (["--alpha", "-0.1"], "--alpha must be in [0, inf)"),
    (["--policy-lr", "0"], "--policy-lr must be positive"),
    (["--learning-starts", "-1"], "--learning-starts must be in [0, inf), got -1"),
    (["--num-envs", "4", "--buffer-size", "3"], "--buffer-size 3 holds less than one step"),
    (["--config", "missing.yaml"], "config file 'missing.yaml' not found"),
    (["--eval-only"], "--eval-only needs --load-model"),
    (["--total-timesteps", str(10**13), "--buffer-size", str(10**13)], "lower --buffer-size or --num-seeds"),
])
def test_bad_input_exits_2_with_one_line(monkeypatch, capsys, tmp_path, argv, message):
    monkeypatch.chdir(tmp_path)
    code, err = cli(monkeypatch, capsys, sac, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not os.path.exists(tmp_path / "runs")


def test_cli_gymnasium_logs_cleanrl_metrics_saves_and_evaluates(monkeypatch, capsys, tmp_path):
    out = run_script(tmp_path, "sac.py", "--env-id", "Pendulum-v1", "--total-timesteps", "1200", "--learning-starts",
                     "300", "--log-every", "200", "--eval-every", "600", "--num-eval-envs", "2", "--batch-size", "64",
                     "--save-model", "--exp-name", "smoke", "--num-seeds", "2", "--critic-layer-norm")
    assert out.returncode == 0, out.stderr
    assert "replay buffer: 1,200 transitions x 2 seed(s)" in out.stdout
    run_dirs = list_runs(tmp_path)
    assert [d.name.split("__")[2] for d in run_dirs] == ["1", "2"]
    rows = read_metrics(run_dirs[0])
    names = {r["metric"] for r in rows}
    for name in ["losses/qf1_values", "losses/qf2_values", "losses/qf1_loss", "losses/qf2_loss", "losses/qf_loss",
                 "losses/actor_loss", "losses/alpha", "losses/alpha_loss", "charts/episodic_return",
                 "charts/episodic_length", "charts/SPS", "eval/episodic_return"]:
        assert name in names, name
    # global_step = env steps; nothing is learnt (or logged as a loss) before step 300
    assert sorted({int(r["global_step"]) for r in rows if r["metric"] == "losses/qf_loss"}) == [400, 600, 800,
                                                                                               1000, 1200]
    assert {float(r["value"]) for r in rows if r["metric"] == "charts/episodic_length"} == {200.0}
    assert [int(r["global_step"]) for r in rows if r["metric"] == "eval/episodic_return"] == [600, 1200]

    out = run_script(tmp_path, "sac.py", "--load-model", str(run_dirs[1] / "model.ckpt"), "--eval-only",
                     "--num-eval-envs", "2")
    assert out.returncode == 0, out.stderr
    assert "eval/episodic_return" in out.stdout and "replay buffer: 1 transitions" in out.stdout

    # the checkpoint holds SAC's networks as state dicts, and restores into sac's own (vmapped) structure
    args = sac.Args()
    blob = load_checkpoint(str(run_dirs[1] / "model.ckpt"), args)
    assert args.env_id == "Pendulum-v1" and blob["config"]["seed"] == 2
    assert args.critic_layer_norm  # a network flag: taken from the checkpoint, as the hidden sizes
    assert set(blob["params"]["qf"]["0"]) == {"w", "b", "scale", "offset"} and set(blob["params"]["qf"]["2"]) == \
        {"w", "b"}
    assert set(blob["params"]) == {"actor", "qf", "qf_target", "log_alpha"} and set(blob["params"]["actor"]) == \
        {"0", "1", "2"}
    env = make_env(args.env_id, 1, raw_obs=True)
    init, train_iteration, _ = sac.make_train(args, env, env)
    vmapped_init = sac.vmap_runs(init, train_iteration)[0]
    shapes = jax.eval_shape(vmapped_init, jax.random.split(jax.random.PRNGKey(0), 2), None, None)
    params, norm = restore(blob, shapes.params, shapes.env_state.norm)
    env.close()
    np.testing.assert_array_equal(params["qf"][1]["w"], blob["params"]["qf"]["1"]["w"])
    assert all(np.isfinite(x).all() for x in jax.tree.leaves((params, norm)))

    # a SAC checkpoint is not a PPO model: one error line, no traceback
    monkeypatch.chdir(tmp_path)
    for extra in (["--eval-only"], []):
        code, err = cli(monkeypatch, capsys, ppo_continuous, "--load-model", str(run_dirs[1] / "model.ckpt"),
                        "--num-eval-envs", "2", "--exp-name", "cross", *extra)
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith("error: the model file does not fit this script's network"), err
    assert not list((tmp_path / "runs").glob("*cross*"))  # nothing ran: no empty run directories left behind


def test_cli_brax_smoke_with_preset(tmp_path):
    out = run_script(tmp_path, "sac.py", "--config", os.path.join(ROOT, "configs", "sac_brax_hopper.yaml"),
                     "--env-id", "brax/inverted_pendulum", "--brax-backend", "positional", "--num-envs", "8",
                     "--total-timesteps", "1024", "--learning-starts", "256", "--batch-size", "32",
                     "--grad-updates-per-step", "2", "--actor-hidden", "16", "--critic-hidden", "16",
                     "--log-every", "128", "--eval-every", "512", "--num-eval-envs", "2",
                     "--eval-max-episode-steps", "50", "--exp-name", "smoke")
    assert out.returncode == 0, out.stderr
    (run_dir,) = list_runs(tmp_path)
    rows = read_metrics(run_dir)
    evals = [float(r["value"]) for r in rows if r["metric"] == "eval/episodic_return"]
    assert len(evals) == 2 and all(0 < v <= 50 for v in evals)
    assert np.isfinite([float(r["value"]) for r in rows if r["metric"].startswith("losses/")]).all()


def cleanrl_schedule(args, iterations):
    """Q and actor update counts of CleanRL's loop, step by step: at env step `global_step` (counted before the
    step), update once global_step > learning_starts; the actor (policy_frequency times) and the target when
    the update's index (= global_step with one update per step) divides by their frequencies."""
    q_updates = actor_updates = 0
    for iteration in range(iterations):
        global_step = iteration * args.num_envs
        if global_step > args.learning_starts:
            for j in range(args.grad_updates_per_step):
                q_updates += 1
                if (iteration * args.grad_updates_per_step + j) % args.policy_frequency == 0:
                    actor_updates += args.policy_frequency
    return q_updates, actor_updates


@pytest.mark.parametrize("num_envs, updates_per_step, learning_starts", [(1, 1, 10), (1, 1, 11), (3, 2, 7)])
def test_update_schedule_is_cleanrls(num_envs, updates_per_step, learning_starts):
    env = make_env("gymnax/Pendulum-v1", num_envs)
    args = sac.Args(env_id="gymnax/Pendulum-v1", num_envs=num_envs, total_timesteps=30 * num_envs, batch_size=4,
                    learning_starts=learning_starts, grad_updates_per_step=updates_per_step, policy_frequency=2,
                    actor_hidden=(8,), critic_hidden=(8,))
    init, train_iteration, _ = sac.make_train(args, env, env)
    state, metrics = jax.jit(scan_iterations(train_iteration, 30))(init(jax.random.PRNGKey(0)))
    assert (int(state.opt_state["qf"][0].count), int(state.opt_state["actor"][0].count)) == \
        cleanrl_schedule(args, 30)
    learnt = np.isfinite(metrics["losses/qf_loss"])  # per iteration: NaN where nothing was learnt
    np.testing.assert_array_equal(learnt, np.arange(30) * num_envs > learning_starts)


def test_same_seed_same_run_and_updates_follow_the_schedule():
    env = scripted_env()
    args = sac.Args(env_id="scripted", num_envs=2, total_timesteps=40, learning_starts=10, batch_size=4,
                    grad_updates_per_step=3, policy_frequency=2, actor_hidden=(8,), critic_hidden=(8,))
    init, train_iteration, _ = sac.make_train(args, env, env)
    train_chunk = jax.jit(logged_rows(train_iteration, 5, 4))  # 4 logged rows of 5 vector steps
    (a, ma), (b, mb), (c, _) = (train_chunk(init(jax.random.PRNGKey(k))) for k in (0, 0, 1))
    for x, y in zip(jax.tree.leaves((a.params, ma)), jax.tree.leaves((b.params, mb))):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a.params["actor"][0]["w"], c.params["actor"][0]["w"])
    q_updates, actor_updates = cleanrl_schedule(args, 20)
    assert int(a.iteration) == 20 and int(a.opt_state["qf"][0].count) == q_updates == 42
    assert int(a.opt_state["actor"][0].count) == actor_updates == 21 * 2
    assert np.isnan(ma["losses/qf_loss"][0]) and np.isfinite(ma["losses/qf_loss"][1:]).all()
    np.testing.assert_array_equal(a.params["qf"][0]["w"].shape, (2, 2, 8))  # twin Q: obs 1 + action 1


@pytest.mark.parametrize("alpha_lr, moved", [(None, 0.02), (0.05, 0.05)])
def test_alpha_learns_at_its_own_rate_or_the_q_rate(alpha_lr, moved):
    env = make_env("gymnax/Pendulum-v1", 1)
    args = sac.Args(env_id="gymnax/Pendulum-v1", total_timesteps=2, batch_size=1, learning_starts=0,
                    policy_frequency=1, q_lr=0.02, alpha_lr=alpha_lr, actor_hidden=(8,), critic_hidden=(8,))
    init, train_iteration, _ = sac.make_train(args, env, env)
    state, _ = jax.jit(scan_iterations(train_iteration, 2))(init(jax.random.PRNGKey(0)))
    assert int(state.opt_state["log_alpha"][0].count) == 1  # one update, at global_step 1 > learning_starts
    # Adam's first step moves a scalar by its learning rate (the gradient's sign times lr)
    assert abs(float(state.params["log_alpha"])) == pytest.approx(moved, rel=1e-3)
