import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.envs import init_stats, make_env, update_stats


def rollout(env, actions, key=0, norm=None):
    """Step an env through a fixed action sequence inside one jitted scan."""
    def run(key):
        state, obs = env.reset(key, norm)

        def step(state, action):
            state, obs, reward, term, trunc, final_obs, ep = env.step(state, action)
            return state, (obs, reward, term, trunc, final_obs, ep)

        state, out = jax.lax.scan(step, state, actions)
        return obs, state, out
    return jax.jit(run)(jax.random.PRNGKey(key))


def hand_rolled(env_id, seed, actions, max_steps=None):
    """The same episode(s) with a plain Gymnasium env: observations, rewards and episode ends."""
    env = gym.make(env_id, max_episode_steps=max_steps)
    obs, _ = env.reset(seed=seed)
    first, rows = obs, []
    for a in actions:
        nxt, r, term, trunc, _ = env.step(a)
        rows.append((nxt, r, term, trunc))
        if term or trunc:
            nxt, _ = env.reset()
        obs = nxt
    return first, rows


def host_seed(key):
    return int(jax.random.randint(jax.random.PRNGKey(key), (), 0, 2**30))


def test_gym_truncation_final_obs_and_episode_stats():
    env = make_env("Pendulum-v1", 1, max_episode_steps=5)
    actions = jnp.linspace(-2, 2, 12).reshape(12, 1, 1)
    obs0, _, (obs, reward, term, trunc, final_obs, ep) = rollout(env, actions)
    first, rows = hand_rolled("Pendulum-v1", host_seed(0), np.asarray(actions[:, 0]), max_steps=5)
    np.testing.assert_allclose(obs0[0], first, rtol=1e-6)
    assert list(np.flatnonzero(trunc[:, 0])) == [4, 9] and not term.any()
    for t, (true_obs, r, _, _) in enumerate(rows):
        np.testing.assert_allclose(final_obs[t, 0], true_obs, rtol=1e-5)  # the real last observation
        np.testing.assert_allclose(reward[t, 0], r, rtol=1e-5)
    # auto-reset: the step that ends an episode returns the next episode's first observation
    assert not np.allclose(obs[4, 0], final_obs[4, 0])
    np.testing.assert_allclose(obs[3, 0], final_obs[3, 0])
    assert list(np.flatnonzero(ep.done[:, 0])) == [4, 9]
    np.testing.assert_allclose(ep.episode_return[4, 0], sum(r for _, r, _, _ in rows[:5]), rtol=1e-5)
    np.testing.assert_allclose(ep.episode_return[9, 0], sum(r for _, r, _, _ in rows[5:10]), rtol=1e-5)
    assert ep.episode_length[4, 0] == 5 and ep.episode_length[9, 0] == 5


def test_gym_termination_is_not_truncation():
    env = make_env("Hopper-v4", 2)
    actions = jnp.ones((150, 2, 3)) * jnp.array([1.0, -1.0, 1.0])
    _, _, (obs, reward, term, trunc, final_obs, ep) = rollout(env, actions)
    _, rows = hand_rolled("Hopper-v4", host_seed(0), np.asarray(actions[:, 0]))
    end = next(t for t, row in enumerate(rows) if row[2])
    assert term[end, 0] and not trunc.any() and not term[:end, 0].any()
    np.testing.assert_allclose(final_obs[end, 0], rows[end][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ep.episode_return[end, 0], sum(r for _, r, _, _ in rows[:end + 1]), rtol=1e-4)
    assert ep.episode_length[end, 0] == end + 1


def test_gym_seeds_share_one_host_env_under_vmap():
    def run(env, key):
        state, obs = env.reset(key)
        state, obs, reward, *_ = env.step(state, jnp.full((2, 1), 0.5))
        return obs, reward

    env = make_env("Pendulum-v1", 2, num_copies=3, max_episode_steps=4)
    obs, reward = jax.jit(jax.vmap(lambda k: run(env, k)))(jax.vmap(jax.random.PRNGKey)(jnp.arange(3)))
    assert obs.shape == (3, 2, 3) and reward.shape == (3, 2)
    single = make_env("Pendulum-v1", 2, max_episode_steps=4)
    for i in range(3):  # each seed copy behaves as a lone env given that seed's key
        obs_i, reward_i = jax.jit(lambda k: run(single, k))(jax.random.PRNGKey(i))
        np.testing.assert_allclose(obs[i], obs_i, rtol=1e-6)
        np.testing.assert_allclose(reward[i], reward_i, rtol=1e-6)
    assert not np.allclose(obs[0], obs[1])


def brax_raw_episode(name, key, action, steps, backend):
    from brax import envs
    env = envs.get_environment(name, backend=backend)
    state = jax.jit(env.reset)(key)
    step = jax.jit(env.step)
    out = []
    for _ in range(steps):
        state = step(state, action)
        out.append((np.asarray(state.obs), float(state.reward), float(state.done)))
    return out


@pytest.mark.parametrize("true_reset", [True, False])
def test_brax_truncation_termination_and_final_obs(true_reset):
    env = make_env("brax/inverted_pendulum", 1, max_episode_steps=20, brax_backend="positional",
                   brax_true_reset=true_reset)
    # a constant push topples the pole (termination); doing nothing keeps it up until the time limit
    push = jnp.full((30, 1, 1), 0.4)
    _, _, (obs, reward, term, trunc, final_obs, ep) = rollout(env, push)
    key = jax.random.split(jax.random.PRNGKey(0), 1)[0]  # what the adapter hands env 0
    raw = brax_raw_episode("inverted_pendulum", key, jnp.full((1,), 0.4), 30, "positional")
    end = next(t for t, (_, _, d) in enumerate(raw) if d)
    assert end < 20 and term[end, 0] and not trunc[end, 0] and not term[:end, 0].any()
    np.testing.assert_allclose(final_obs[end, 0], raw[end][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ep.episode_return[end, 0], sum(r for _, r, _ in raw[:end + 1]), rtol=1e-5)
    assert not np.allclose(obs[end, 0], final_obs[end, 0])

    _, _, (obs, reward, term, trunc, final_obs, ep) = rollout(env, jnp.zeros((45, 1, 1)))
    assert list(np.flatnonzero(trunc[:, 0])) == [19, 39] and not term.any()
    assert ep.episode_length[19, 0] == 20 and ep.episode_return[19, 0] == pytest.approx(20.0)
    first_obs = obs[19, 0], obs[39, 0]  # start states of episodes 2 and 3
    assert np.allclose(*first_obs) != true_reset  # true resets draw new start states


def test_running_stats_match_numpy():
    rng = np.random.default_rng(1)
    batches = [rng.normal(3.0, 2.0, size=(64, 4)).astype(np.float32) for _ in range(10)]
    stats = init_stats((4,))
    for b in batches:
        stats = update_stats(stats, jnp.asarray(b))
    data = np.concatenate(batches)
    np.testing.assert_allclose(stats.mean, data.mean(0), rtol=1e-4)
    np.testing.assert_allclose(stats.var, data.var(0), rtol=1e-3)
    assert stats.count == pytest.approx(640, rel=1e-5)


def test_normalisation_updates_in_training_and_stays_frozen_in_evaluation():
    train = make_env("Pendulum-v1", 4, normalize_obs=True, normalize_reward=True)
    frozen = make_env("Pendulum-v1", 4, normalize_obs=True, normalize_reward=True, freeze_stats=True)
    _, state, (obs, reward, *_rest) = rollout(train, jnp.ones((50, 4, 1)))
    assert state.norm.obs.count == pytest.approx(51 * 4, rel=1e-4)
    assert np.abs(np.asarray(obs)).max() <= 10.0 and np.abs(np.asarray(reward)).max() <= 10.0
    _, eval_state, (eval_obs, *_rest) = rollout(frozen, jnp.ones((5, 4, 1)), key=3, norm=state.norm)
    for a, b in zip(jax.tree.leaves(eval_state.norm), jax.tree.leaves(state.norm)):
        np.testing.assert_array_equal(a, b)
    raw = make_env("Pendulum-v1", 4)
    _, _, (raw_obs, *_rest) = rollout(raw, jnp.ones((5, 4, 1)), key=3)
    expected = (raw_obs - state.norm.obs.mean) / np.sqrt(state.norm.obs.var + 1e-8)
    np.testing.assert_allclose(eval_obs, np.clip(expected, -10, 10), rtol=1e-4, atol=1e-5)


def test_actions_are_clipped_to_bounds():
    env = make_env("Pendulum-v1", 1, max_episode_steps=3)
    _, _, (_, big, *_rest) = rollout(env, jnp.full((3, 1, 1), 50.0))
    _, _, (_, edge, *_rest) = rollout(env, jnp.full((3, 1, 1), 2.0))
    np.testing.assert_allclose(big, edge)


def test_gymnax_truncation_termination_and_final_obs():
    import gymnax
    # pushing left every step topples the pole long before a 50-step time limit: a termination
    env = make_env("gymnax/CartPole-v1", 1, max_episode_steps=50)
    _, _, (obs, reward, term, trunc, final_obs, ep) = rollout(env, jnp.zeros((60, 1), jnp.int32))
    # the same episode with gymnax itself (the adapter's env 0 starts from split(key, 1)[0]; CartPole's step
    # draws no randomness), without a time limit, so its `done` is the pole falling
    genv, params = gymnax.make("CartPole-v1")
    params = params.replace(max_steps_in_episode=10**6)
    key = jax.random.PRNGKey(0)
    _, s = genv.reset(jax.random.split(key, 1)[0], params)
    rows = []
    for t in range(50):
        o, s, r, d, _ = genv.step_env(key, s, 0, params)
        rows.append((np.asarray(o), float(r), bool(d)))
        if d:
            break
    assert rows[-1][2], "the pole did not fall within 50 steps"
    end = len(rows) - 1
    assert end < 49  # strictly inside the time limit
    assert term[end, 0] and not trunc[:end + 1, 0].any() and not term[:end, 0].any()
    np.testing.assert_allclose(final_obs[end, 0], rows[end][0], rtol=1e-5)  # the true last observation
    for t in range(end):  # before the end the next observation is the final one
        np.testing.assert_allclose(obs[t, 0], rows[t][0], rtol=1e-5)
        np.testing.assert_allclose(final_obs[t, 0], rows[t][0], rtol=1e-5)
    assert not np.allclose(obs[end, 0], final_obs[end, 0])  # auto-reset: the next episode's first observation
    assert list(np.flatnonzero(ep.done[:end + 1, 0])) == [end]
    assert ep.episode_length[end, 0] == end + 1
    np.testing.assert_allclose(ep.episode_return[end, 0], sum(r for _, r, _ in rows), rtol=1e-6)
    np.testing.assert_allclose(reward[:end + 1, 0], [r for _, r, _ in rows], rtol=1e-6)

    # the time limit: an env that is not pushed over ends by truncation at step 8
    env = make_env("gymnax/CartPole-v1", 1, max_episode_steps=8)
    actions = jnp.tile(jnp.array([0, 1], jnp.int32), 10).reshape(20, 1)
    _, _, (obs, reward, term, trunc, final_obs, ep) = rollout(env, actions)
    assert list(np.flatnonzero(trunc[:, 0])) == [7, 15] and not term.any()
    assert ep.episode_length[7, 0] == 8 and ep.episode_return[7, 0] == 8
    assert not np.allclose(obs[7, 0], final_obs[7, 0]) and np.allclose(obs[6, 0], final_obs[6, 0])


def test_gymnax_minatar_grids_arrive_flat():
    import gymnax
    env = make_env("gymnax/Breakout-MinAtar", 2)
    assert env.spec.obs_shape == (400,) and env.spec.discrete and env.spec.action_dim == 3
    state, obs = env.reset(jax.random.PRNGKey(0))
    genv, params = gymnax.make("Breakout-MinAtar")
    grids, _ = jax.vmap(genv.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), 2), params)
    assert grids.shape == (2, 10, 10, 4)
    np.testing.assert_array_equal(obs, grids.reshape(2, 400))
    _, next_obs, _, _, _, final_obs, _ = env.step(state, jnp.zeros(2, jnp.int32))
    assert next_obs.shape == final_obs.shape == (2, 400)


def test_raw_obs_keeps_the_statistics_and_observe_normalises_on_use():
    # a replay buffer stores raw observations; the statistics must still follow them, and env.observe must give
    # what a normalising env hands the agent
    kw = dict(normalize_obs=True, normalize_reward=True)
    normed, raw = make_env("gymnax/Pendulum-v1", 4, **kw), make_env("gymnax/Pendulum-v1", 4, raw_obs=True, **kw)
    plain = make_env("gymnax/Pendulum-v1", 4)
    actions = jnp.linspace(-2, 2, 40).reshape(10, 4, 1)
    first_n, state_n, (obs_n, reward_n, _, _, final_n, _) = rollout(normed, actions)
    first_r, state_r, (obs_r, reward_r, _, _, final_r, _) = rollout(raw, actions)
    first_p, _, (obs_p, _, _, _, final_p, _) = rollout(plain, actions)
    for a, b in zip(jax.tree.leaves(state_n.norm), jax.tree.leaves(state_r.norm)):  # same statistics
        np.testing.assert_array_equal(a, b)
    assert state_r.norm.obs.count == pytest.approx(11 * 4, rel=1e-4)
    np.testing.assert_array_equal(first_r, first_p)  # observations raw...
    np.testing.assert_array_equal(obs_r, obs_p)
    np.testing.assert_array_equal(final_r, final_p)
    np.testing.assert_array_equal(reward_r, reward_n)  # ...rewards still normalised
    assert not np.allclose(obs_n, obs_r)
    # what the normalising env returned at the last step, from the raw one with the same statistics
    np.testing.assert_allclose(raw.observe(state_r.norm, obs_r[-1]), obs_n[-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normed.observe(state_n.norm, obs_r[-1]), obs_n[-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(plain.observe(state_r.norm, obs_r[-1]), obs_r[-1])  # off: unchanged


def cleanrl_wrapped(env_id, seed, actions, gamma, max_steps=None):
    """CleanRL's wrapper stack around one Gymnasium env, stepped by hand (reset at every episode end, as a
    vector env does): the observations and rewards the agent gets, and the wrappers' statistics."""
    env = gym.make(env_id, max_episode_steps=max_steps)
    env = gym.wrappers.NormalizeObservation(env)
    norm_obs = env
    env = gym.wrappers.TransformObservation(env, lambda o: np.clip(o, -10, 10), env.observation_space)
    env = gym.wrappers.NormalizeReward(env, gamma=gamma)
    norm_reward = env
    env = gym.wrappers.TransformReward(env, lambda r: np.clip(r, -10, 10))
    env.reset(seed=seed)
    seen, rewards, terminations = [], [], 0
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        terminations += term
        if term or trunc:
            obs, _ = env.reset()
        seen.append(obs)
        rewards.append(r)
    return np.array(seen), np.array(rewards), norm_obs.obs_rms, norm_reward.return_rms, terminations


@pytest.mark.parametrize("env_id, max_steps, discrete", [("CartPole-v1", None, True), ("Pendulum-v1", 7, False)])
def test_gymnasium_stats_reproduce_cleanrls_wrappers(env_id, max_steps, discrete):
    # CartPole terminates, Pendulum (7-step limit) is truncated: both episode ends, several times
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, 150) if discrete else rng.uniform(-2, 2, (60, 1)).astype(np.float32)
    env = make_env(env_id, 1, max_episode_steps=max_steps, normalize_obs=True, normalize_reward=True, gamma=0.9,
                   gymnasium_stats=True)
    _, state, (obs, reward, term, trunc, _, _) = rollout(env, jnp.asarray(actions)[:, None])
    seen, rewards, obs_rms, return_rms, terminations = cleanrl_wrapped(env_id, host_seed(0), actions, 0.9,
                                                                      max_steps)
    assert (terminations > 1) == discrete and (int(np.asarray(trunc).sum()) > 1) != discrete
    np.testing.assert_allclose(np.asarray(obs)[:, 0], seen, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(reward)[:, 0], rewards, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state.norm.obs.mean, obs_rms.mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state.norm.obs.var, obs_rms.var, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state.norm.ret.var, return_rms.var, rtol=1e-4)
    np.testing.assert_allclose(state.norm.obs.count, obs_rms.count, rtol=1e-6)
    # the project's default differs: the return restarts at every episode end and terminal observations
    # are not in the statistics
    own = make_env(env_id, 1, max_episode_steps=max_steps, normalize_obs=True, normalize_reward=True, gamma=0.9)
    _, own_state, _ = rollout(own, jnp.asarray(actions)[:, None])
    assert own_state.norm.obs.count < state.norm.obs.count
    assert not np.allclose(own_state.norm.ret.var, state.norm.ret.var)


def test_masked_stats_update_merges_only_the_masked_rows():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    mask = np.array([True, False, True, True, False, False, True, False, True])
    batch = np.concatenate([a, b])
    stats = update_stats(update_stats(init_stats((3,)), jnp.asarray(a, jnp.float32)), jnp.asarray(batch, jnp.float32),
                         jnp.asarray(mask))
    rows = np.concatenate([a, batch[mask]])
    np.testing.assert_allclose(stats.mean, rows.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats.var, rows.var(0), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(stats.count, 5 + mask.sum() + 1e-4, rtol=1e-6)
    unchanged = update_stats(stats, jnp.asarray(batch, jnp.float32), jnp.zeros(9, bool))
    np.testing.assert_allclose(unchanged.mean, stats.mean)
    np.testing.assert_allclose(unchanged.count, stats.count)
