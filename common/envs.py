"""One functional env interface for Gymnasium vector envs and JAX-native (Brax, gymnax) envs, and the owner of
the observation and return statistics used for normalisation:

    state, obs = env.reset(key, norm=None)
    state, obs, reward, terminated, truncated, final_obs, episode = env.step(state, action)

Both work inside `jax.lax.scan` and `jax.vmap`. Envs reset themselves when an episode ends; `final_obs` is then
the true last observation of the finished episode (else it equals `obs`), and `episode` carries the raw return
and length of episodes that finished on this step. Ids: Gymnasium's (`Hopper-v4`), `brax/NAME`, `gymnax/NAME`.
"""
import contextlib
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from common.cli import UsageError, suggest

BRAX_BACKENDS = ("generalized", "positional", "spring", "mjx")
CLIP = 10.0  # normalised observations and rewards are clipped to +-CLIP, as in CleanRL


class EnvSpec(NamedTuple):
    env_id: str
    obs_shape: tuple
    discrete: bool
    action_dim: int  # size of the action vector, or number of actions when discrete
    action_low: np.ndarray | None
    action_high: np.ndarray | None
    max_episode_steps: int | None


class RunningStats(NamedTuple):  # count starts at 1e-4 as in Gymnasium's RunningMeanStd
    mean: jax.Array
    var: jax.Array
    count: jax.Array


class NormStats(NamedTuple):
    obs: RunningStats  # of observations
    ret: RunningStats  # of the discounted return, for reward scaling


class EpisodeStats(NamedTuple):
    done: jax.Array  # an episode ended on this step
    episode_return: jax.Array  # its raw return (valid where done)
    episode_length: jax.Array

    def sums(self) -> dict:
        """The metrics from which the runner logs the return (mean, min, max) and length of the episodes that ended."""
        return {"episodes": self.done.sum(), "return_sum": jnp.where(self.done, self.episode_return, 0.0).sum(),
                "length_sum": jnp.where(self.done, self.episode_length, 0).sum(),
                "return_min": jnp.where(self.done, self.episode_return, jnp.inf).min(),
                "return_max": jnp.where(self.done, self.episode_return, -jnp.inf).max()}


class EnvState(NamedTuple):
    inner: Any
    episode_return: jax.Array
    episode_length: jax.Array
    discounted_return: jax.Array
    norm: NormStats


class Env(NamedTuple):
    reset: Callable
    step: Callable
    spec: EnvSpec
    num_envs: int
    close: Callable
    observe: Callable  # observe(norm, raw_obs): what the agent sees (normalised with the statistics, if on)


def init_stats(shape: tuple) -> RunningStats:
    return RunningStats(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32), jnp.float32(1e-4))


def update_stats(stats: RunningStats, batch: jax.Array, mask: jax.Array | None = None) -> RunningStats:
    """Merge a batch (leading axis; only rows where `mask`, if given) into running mean/variance (Chan et al.'s
    parallel Welford)."""
    if mask is None:
        n, mean, var = batch.shape[0], batch.mean(0), batch.var(0)
    else:
        w = mask.reshape(mask.shape + (1,) * (batch.ndim - 1)).astype(batch.dtype)
        n = mask.sum().astype(batch.dtype)
        mean = (w * batch).sum(0) / jnp.maximum(n, 1)
        var = (w * (batch - mean) ** 2).sum(0) / jnp.maximum(n, 1)
    delta, total = mean - stats.mean, stats.count + n
    m2 = stats.var * stats.count + var * n + delta**2 * stats.count * n / total
    return RunningStats(stats.mean + delta * n / total, m2 / total, total)


def normalize(stats: RunningStats, x: jax.Array) -> jax.Array:
    return jnp.clip((x - stats.mean) / jnp.sqrt(stats.var + 1e-8), -CLIP, CLIP)


def _where(mask, a, b):
    """Per-env select between two pytrees whose leaves have the env axis first."""
    return jax.tree.map(lambda x, y: jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, y), a, b)


def _brax_recorder(env, video_dir: str, num_copies: int, limit: int) -> Callable:
    """Host side of --capture-video for Brax: films the first episode of env 0 of the first seed in every
    `limit` steps (one evaluation), as RecordVideo does for Gymnasium, rendered with MuJoCo at its end."""
    import types

    from brax.io import image
    from moviepy import ImageSequenceClip

    rec = {"calls": 0, "states": None}  # states: the episode being filmed, None between films

    def record(q, qd, done):
        # under vmap the callback runs once per seed, in order; only the first seed's env 0 is filmed
        step, copy = divmod(rec["calls"], num_copies)
        rec["calls"] += 1
        if copy:
            return
        if step % limit == 0:
            rec["states"] = []
        if rec["states"] is None:
            return
        rec["states"].append(types.SimpleNamespace(q=np.asarray(q), qd=np.asarray(qd)))
        if done or step % limit == limit - 1:
            frames = image.render_array(env.sys, rec["states"])
            rec["states"] = None
            os.makedirs(video_dir, exist_ok=True)
            ImageSequenceClip(frames, fps=round(1 / float(env.dt))).write_videofile(
                os.path.join(video_dir, f"rl-video-step-{step - step % limit}.mp4"), logger=None)

    return record


def _brax_env(name: str, num_envs: int, max_steps: int, backend: str, true_reset: bool,
              video_dir: str | None, num_copies: int):
    from brax import envs as brax_envs

    # Building the env runs ~190 small eager operations (the model's arrays, a reset that sizes the observation).
    # On a GPU each would compile a kernel of its own; on the host's CPU they compile in milliseconds, and the
    # arrays are constants of the compiled programs wherever they were made.
    try:
        host = jax.default_device(jax.devices("cpu")[0])
    except RuntimeError:  # JAX_PLATFORMS without cpu
        host = contextlib.nullcontext()
    with host:
        env = brax_envs.get_environment(name, backend=backend)
        obs_size, act_size = env.observation_size, env.action_size
    record = _brax_recorder(env, video_dir, num_copies, max_steps) if video_dir else None

    def reset(key):
        s = jax.vmap(env.reset)(jax.random.split(key, num_envs))
        return (s, jnp.zeros(num_envs, jnp.int32), key, None if true_reset else s), s.obs

    def step(state, action):
        s, steps, key, first = state
        s = jax.vmap(env.step)(s, action)
        steps = steps + 1
        terminated = s.done > 0
        truncated = (steps >= max_steps) & ~terminated
        done = terminated | truncated
        if true_reset:  # fresh random start states; the cond skips the reset cost on most steps
            key, sub = jax.random.split(key)
            fresh = jax.lax.cond(done.any(), lambda: jax.vmap(env.reset)(jax.random.split(sub, num_envs)),
                                 lambda: s)
        else:  # Brax's own trainers: every env restarts from its first start state
            fresh = first
        reward, final_obs = s.reward, s.obs
        if record is not None:  # a debug callback: kept although nothing depends on it
            jax.debug.callback(record, s.pipeline_state.q[0], s.pipeline_state.qd[0], done[0])
        s = _where(done, fresh, s)
        return (s, jnp.where(done, 0, steps), key, first), s.obs, reward, terminated, truncated, final_obs

    spec = EnvSpec(f"brax/{name}", (obs_size,), False, act_size, -np.ones(act_size, np.float32),
                   np.ones(act_size, np.float32), max_steps)
    return reset, step, spec, lambda: None


def _gymnax_env(name: str, num_envs: int, max_steps: int | None):
    import gymnax

    env, params = gymnax.make(name)
    if max_steps is not None:
        params = params.replace(max_steps_in_episode=max_steps)
    limit = params.max_steps_in_episode
    no_limit = params.replace(max_steps_in_episode=2**30)  # is_terminal without the time limit
    vreset = jax.vmap(env.reset, in_axes=(0, None))

    def flat(obs):  # every network here is an MLP: MinAtar's 10x10xC grids arrive as vectors
        return obs.reshape(num_envs, -1).astype(jnp.float32)

    def reset(key):
        obs, s = vreset(jax.random.split(key, num_envs), params)
        return (s, key), flat(obs)

    def step(state, action):
        s, key = state
        key, k_step, k_reset = jax.random.split(key, 3)
        # step_env does not auto-reset, so the final observation is still there
        obs, s, reward, _, _ = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))(
            jax.random.split(k_step, num_envs), s, action, params)
        terminated = jax.vmap(env.is_terminal, in_axes=(0, None))(s, no_limit)
        truncated = (s.time >= limit) & ~terminated
        done = terminated | truncated
        fresh_obs, fresh = vreset(jax.random.split(k_reset, num_envs), params)
        obs = flat(obs)
        next_obs = jnp.where(done[:, None], flat(fresh_obs), obs)
        return (_where(done, fresh, s), key), next_obs, reward.astype(jnp.float32), terminated, truncated, obs

    space = env.action_space(params)
    discrete = hasattr(space, "n")
    shape = () if discrete else space.shape
    spec = EnvSpec(f"gymnax/{name}", (int(np.prod(env.observation_space(params).shape)),), discrete,
                   int(space.n) if discrete else int(np.prod(shape)),
                   None if discrete else np.broadcast_to(space.low, shape).astype(np.float32),
                   None if discrete else np.broadcast_to(space.high, shape).astype(np.float32), int(limit))
    return reset, step, spec, lambda: None


def _gym_env(env_id: str, num_envs: int, num_copies: int, max_steps: int | None, asynchronous: bool,
             video_dir: str | None):
    import gymnasium as gym

    total = num_envs * num_copies
    limit = max_steps if max_steps is not None else gym.spec(env_id).max_episode_steps

    def make_one(i):
        record = video_dir is not None and i == 0
        e = gym.make(env_id, max_episode_steps=max_steps, render_mode="rgb_array" if record else None)
        if not record:
            return e
        # each evaluation steps every env exactly `limit` times, so this films its first episode
        return gym.wrappers.RecordVideo(e, video_dir, step_trigger=lambda t: t % limit == 0, video_length=0)

    fns = [lambda i=i: make_one(i) for i in range(total)]
    vector = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    # SAME_STEP: the step that ends an episode returns the reset observation and the true final one in
    # info, so no reset transition ever reaches the learner (Gymnasium 1.x defaults to NEXT_STEP).
    venv = vector(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    space = venv.single_action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    obs_shape = venv.single_observation_space.shape
    act_shape = () if discrete else space.shape
    act_dtype = np.int32 if discrete else np.float32

    # Callbacks see a leading axis per vmapped seed (vmap_method="broadcast_all"); all seeds step one
    # host vector env of num_copies * num_envs envs, so --num-seeds costs one callback per step.
    def host_reset(seed):
        seed = np.asarray(seed)
        if seed.size != num_copies:
            raise ValueError(f"env built for {num_copies} seed copies, got {seed.size}")
        seeds = (seed.reshape(-1, 1) + np.arange(num_envs)).reshape(-1)
        obs, _ = venv.reset(seed=[int(s) for s in seeds])
        return np.zeros(seed.shape, np.int32), obs.astype(np.float32).reshape(seed.shape + (num_envs,) + obs_shape)

    def host_step(token, action):
        token, action = np.asarray(token), np.asarray(action)  # convert once; indexing jax Arrays is slow
        lead = token.shape
        obs, reward, terminated, truncated, info = venv.step(action.reshape((total,) + act_shape))
        obs = obs.astype(np.float32)
        final_obs = obs.copy()
        if "_final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final_obs[i] = info["final_obs"][i]
        shape = lead + (num_envs,)
        return (token + 1, obs.reshape(shape + obs_shape), reward.astype(np.float32).reshape(shape),
                terminated.reshape(shape), truncated.reshape(shape), final_obs.reshape(shape + obs_shape))

    def reset(key):
        seed = jax.random.randint(key, (), 0, 2**30)  # + env index stays a valid seed
        out = (jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((num_envs,) + obs_shape, jnp.float32))
        return jax.pure_callback(host_reset, out, seed, vmap_method="broadcast_all")

    def step(token, action):
        vec, flag = (num_envs,), jax.ShapeDtypeStruct((num_envs,), jnp.bool_)
        out = (jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct(vec + obs_shape, jnp.float32),
               jax.ShapeDtypeStruct(vec, jnp.float32), flag, flag, jax.ShapeDtypeStruct(vec + obs_shape, jnp.float32))
        # The token threads host-env order through the program even when actions ignore observations.
        return jax.pure_callback(host_step, out, token, action.astype(act_dtype), vmap_method="broadcast_all")

    spec = EnvSpec(env_id, obs_shape, discrete, int(space.n) if discrete else int(np.prod(act_shape)),
                   None if discrete else space.low.astype(np.float32),
                   None if discrete else space.high.astype(np.float32), limit)
    return reset, step, spec, venv.close


def import_mujoco() -> None:
    """Import MuJoCo (Brax and Gymnasium's MuJoCo envs need it): it loads the GL backend that MUJOCO_GL names
    even when nothing renders, and one that cannot load becomes one error line."""
    try:
        import mujoco  # noqa: F401
    except (ImportError, AttributeError, OSError, RuntimeError) as err:
        if not os.environ.get("MUJOCO_GL") or getattr(err, "name", None) == "mujoco":  # not a GL problem
            raise
        raise UsageError(f"MuJoCo could not load the GL backend MUJOCO_GL={os.environ['MUJOCO_GL']} names "
                         f"({type(err).__name__}: {err}); install its libraries (for egl: libegl1) or, unless "
                         f"you capture video, set MUJOCO_GL=disable") from None


def check_env_id(env_id: str) -> None:
    """Fail fast, before anything is built, on ids no backend knows."""
    if env_id.startswith("brax/"):
        import_mujoco()
        from brax import envs as brax_envs
        name, known = env_id[5:], sorted(brax_envs._envs)
        if name not in known:
            raise UsageError(f"unknown Brax env '{name}'{suggest(name, known)}; Brax envs: {', '.join(known)}")
    elif env_id.startswith("gymnax/"):
        import gymnax
        name, known = env_id[7:], gymnax.registered_envs
        if name not in known:
            raise UsageError(f"unknown gymnax env '{name}'{suggest(name, known)}; gymnax envs: {', '.join(known)}")
    else:
        import gymnasium as gym
        if env_id not in gym.registry:
            hint = suggest(env_id, gym.registry.keys()) or " (Brax envs are named brax/NAME, e.g. brax/ant)"
            raise UsageError(f"unknown env id '{env_id}'{hint}; pick a registered Gymnasium id")
        if "mujoco" in str(gym.registry[env_id].entry_point):
            import_mujoco()


def make_env(env_id: str, num_envs: int, *, num_copies: int = 1, max_episode_steps: int | None = None,
             normalize_obs: bool = False, normalize_reward: bool = False, gamma: float = 0.99,
             reward_scale: float = 1.0, freeze_stats: bool = False,
             brax_backend: str = "generalized", brax_true_reset: bool = True, asynchronous: bool = False,
             video_dir: str | None = None, raw_obs: bool = False, gymnasium_stats: bool = False) -> Env:
    """Build an env; `num_copies` is the number of vmapped seeds that will share it (Gymnasium) or be
    stepped one after another by its video callback (Brax). With `freeze_stats=True` the statistics passed
    to `reset` stay frozen (evaluation). With `raw_obs=True` the statistics are kept but observations are
    returned raw, for `env.observe` on use (a replay buffer). With `gymnasium_stats=True` the statistics are
    updated as Gymnasium's NormalizeObservation and NormalizeReward update them (CleanRL): terminal observations
    included, and the discounted return zeroed only by a termination, before the step's reward is added, so
    that it runs on across time limits. Continuous actions are clipped to the bounds."""
    check_env_id(env_id)
    if env_id.startswith("brax/"):
        if brax_backend not in BRAX_BACKENDS:
            raise UsageError(f"unknown Brax backend '{brax_backend}'; choose one of {', '.join(BRAX_BACKENDS)}")
        base_reset, base_step, spec, close = _brax_env(env_id[5:], num_envs, max_episode_steps or 1000,
                                                       brax_backend, brax_true_reset, video_dir, num_copies)
    elif env_id.startswith("gymnax/"):
        base_reset, base_step, spec, close = _gymnax_env(env_id[7:], num_envs, max_episode_steps)
    else:
        base_reset, base_step, spec, close = _gym_env(env_id, num_envs, num_copies, max_episode_steps,
                                                      asynchronous, video_dir)

    def observe(norm, obs):
        return normalize(norm.obs, obs) if normalize_obs else obs

    out = (lambda norm, obs: obs) if raw_obs else observe

    def reset(key, norm=None):
        inner, obs = base_reset(key)
        fresh = norm is None  # given statistics (a loaded model) change only with the steps that follow
        norm = NormStats(init_stats(spec.obs_shape), init_stats(())) if fresh else norm
        if normalize_obs and not freeze_stats and fresh:
            norm = norm._replace(obs=update_stats(norm.obs, obs))
        zeros = jnp.zeros(num_envs, jnp.float32)
        return EnvState(inner, zeros, jnp.zeros(num_envs, jnp.int32), zeros, norm), out(norm, obs)

    def step(state, action):
        if not spec.discrete:
            action = jnp.clip(action, spec.action_low, spec.action_high)
        inner, obs, reward, terminated, truncated, final_obs = base_step(state.inner, action)
        done = terminated | truncated
        ep_return, ep_length = state.episode_return + reward, state.episode_length + 1
        keep = gamma * (1.0 - terminated) if gymnasium_stats else gamma  # Gymnasium: a termination ends the sum
        discounted, norm = state.discounted_return * keep + reward, state.norm
        if normalize_obs and not freeze_stats and gymnasium_stats:  # the terminal observation, then the reset one
            norm = norm._replace(obs=update_stats(norm.obs, final_obs, done))
        if normalize_obs and not freeze_stats:
            norm = norm._replace(obs=update_stats(norm.obs, obs))
        if normalize_reward and not freeze_stats:
            norm = norm._replace(ret=update_stats(norm.ret, discounted))
        if normalize_reward:  # CleanRL/Gymnasium: divide by the std of the discounted return
            reward = jnp.clip(reward / jnp.sqrt(norm.ret.var + 1e-8), -CLIP, CLIP)
        state = EnvState(inner, jnp.where(done, 0.0, ep_return), jnp.where(done, 0, ep_length),
                         discounted if gymnasium_stats else jnp.where(done, 0.0, discounted), norm)
        episode = EpisodeStats(done, ep_return, ep_length)
        return state, out(norm, obs), reward * reward_scale, terminated, truncated, out(norm, final_obs), episode

    return Env(reset, step, spec, num_envs, close, observe)
