"""Soft Actor-Critic: CleanRL's sac_continuous_action.py with every env step (act, env step, replay insert,
sample, update) inside one jitted `jax.lax.scan`, on Gymnasium or Brax envs, replay buffer on the device.

    python sac.py --env-id Hopper-v4
    python sac.py --config configs/sac_brax_hopper.yaml
"""
import os
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Optional

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from common.cli import UsageError, check_ranges, parse_args, run_main
from common.logger import load_checkpoint
from common.networks import mlp_apply, mlp_init_torch
from common.runner import make_evaluate, open_experiment, train_or_evaluate

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # the name of this experiment (part of the run name)
    seed: int = 1  # seed of the first run; seed i of --num-seeds uses seed + i
    num_seeds: int = 1  # independent seeds trained at once (vmapped)
    config: Optional[str] = None  # YAML preset whose values become the defaults; flags override it
    track: bool = False  # log to Weights & Biases
    wandb_project_name: str = "cleanRL"  # the wandb project
    wandb_entity: Optional[str] = None  # the wandb entity (team)
    capture_video: bool = False  # record evaluation episodes to runs/{run_name}/videos (Gymnasium and Brax envs)
    save_model: bool = False  # save params, normalisation statistics and config to runs/{run_name}/model.ckpt
    load_model: Optional[str] = None  # start from (or, with --eval-only, evaluate) a saved model (empty replay)
    eval_only: bool = False  # only evaluate --load-model, no training
    clear_out: bool = False  # replace an existing run directory of the same name

    env_id: str = "Hopper-v4"  # Gymnasium id (Hopper-v4) or brax/NAME (brax/hopper)
    total_timesteps: int = 1000000  # total env steps per seed
    num_envs: int = 1  # parallel envs per seed
    max_episode_steps: Optional[int] = None  # time limit of the training envs (default: the env's own; Brax 1000)
    eval_max_episode_steps: Optional[int] = None  # time limit of the evaluation envs (default: as training)
    async_envs: bool = False  # Gymnasium AsyncVectorEnv (one process per env) instead of SyncVectorEnv
    brax_backend: str = "generalized"  # Brax physics backend: generalized, positional, spring or mjx
    brax_true_reset: bool = True  # Brax: reset finished episodes to fresh random states (else to each env's first)
    normalize_obs: bool = False  # running observation normalisation (the buffer keeps raw obs; frozen at evaluation)
    reward_scale: float = 1.0  # multiply rewards by this

    buffer_size: int = 1000000  # replay buffer capacity in transitions per seed (capped at --total-timesteps)
    gamma: float = 0.99  # discount factor
    tau: float = 0.005  # target network smoothing coefficient
    batch_size: int = 256  # transitions per gradient update
    learning_starts: int = 5000  # env steps of uniform random actions before the first update
    policy_lr: float = 3e-4  # actor learning rate
    q_lr: float = 1e-3  # Q-network learning rate
    alpha_lr: Optional[float] = None  # temperature (alpha) learning rate (default: --q-lr, as CleanRL; Brax: 3e-4)
    grad_updates_per_step: int = 1  # Q updates per vector-env step (num_envs transitions)
    policy_frequency: int = 2  # every this many Q updates, update the actor (and alpha) this many times (as TD3)
    target_network_frequency: int = 1  # soft-update the target Q networks every this many Q updates
    alpha: float = 0.2  # entropy coefficient when not autotuned
    autotune: bool = True  # learn the entropy coefficient toward --target-entropy
    init_alpha: float = 1.0  # starting entropy coefficient when autotuned (CleanRL and Brax: log alpha = 0)
    target_entropy: Optional[float] = None  # target policy entropy when autotuned (default: -action_dim)
    backup_entropy: bool = True  # subtract alpha * log pi of the next action in the Q target (soft backup)
    bootstrap_truncation: bool = True  # bootstrap at time limits (as CleanRL's SAC; off: a time limit ends the return)
    actor_hidden: tuple[int, ...] = (256, 256)  # actor hidden layer sizes (ReLU)
    critic_hidden: tuple[int, ...] = (256, 256)  # Q-network hidden layer sizes (ReLU)
    critic_layer_norm: bool = False  # LayerNorm before each hidden ReLU of the Q networks (bounds their growth)

    log_every: int = 1000  # log losses and episode statistics every this many env steps
    eval_every: int = 100000  # evaluate every this many env steps (and at the end)
    num_eval_envs: int = 10  # evaluation episodes, one per eval env, deterministic (mean) actions


class Transitions(NamedTuple):
    """Replay storage (capacity rows) or a sampled batch; observations raw, before normalisation."""
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array  # the observation after the step in the same episode (the true last one at its end)
    terminal: jax.Array  # 1.0 where the target must not bootstrap


class TrainState(NamedTuple):
    params: dict  # actor, qf (twin Q networks stacked), qf_target, log_alpha
    opt_state: dict
    env_state: object
    obs: jax.Array  # raw
    buffer: Transitions
    key: jax.Array
    iteration: jax.Array  # vector-env steps taken; equal for all seeds, so it stays unbatched under vmap


def soft_q_target(reward, terminal, next_q, next_log_prob, alpha, gamma, backup_entropy=True):
    """r + gamma * (min of the target Qs at the next state - alpha * log pi(next action)), no bootstrap
    past a termination. `next_q` is (2, batch): both target networks."""
    next_value = next_q.min(0) - (alpha * next_log_prob if backup_entropy else 0.0)
    return reward + gamma * (1.0 - terminal) * next_value


def alpha_loss(log_alpha, log_prob, target_entropy):
    """Gradient raises alpha while the policy's entropy (-log pi) is below the target, lowers it above."""
    return (-jnp.exp(log_alpha) * (log_prob + target_entropy)).mean()


def insert(buffer: Transitions, new: Transitions, row) -> Transitions:
    """Write one vector step (num_envs rows) at `row`; capacity is a multiple of num_envs, so no wrap inside."""
    return jax.tree.map(lambda b, x: jax.lax.dynamic_update_slice_in_dim(b, x, row, 0), buffer, new)


def sample(buffer: Transitions, key, size, batch_size: int) -> Transitions:
    """Uniform with replacement over the `size` rows filled so far, as CleanRL's (SB3) buffer."""
    return jax.tree.map(lambda x: x[jax.random.randint(key, (batch_size,), 0, size)], buffer)


def buffer_capacity(args) -> int:
    """Rows per seed: no more than the run will fill, a multiple of num_envs so inserts never wrap."""
    capacity = min(args.buffer_size, args.total_timesteps)
    return capacity - capacity % args.num_envs


def make_train(args, env, eval_env):
    """Returns pure functions `init(key, params, norm) -> TrainState`, `train_iteration(state) -> (state,
    metrics)` (one vector-env step and its updates; losses NaN before learning starts) and
    `evaluate(params, norm, key) -> returns`."""
    spec = env.spec
    obs_size, action_dim = int(np.prod(spec.obs_shape)), spec.action_dim
    capacity = buffer_capacity(args)
    scale = jnp.asarray((spec.action_high - spec.action_low) / 2.0)
    bias = jnp.asarray((spec.action_high + spec.action_low) / 2.0)
    target_entropy = -float(action_dim) if args.target_entropy is None else args.target_entropy
    actor_tx, q_tx, alpha_tx = optax.adam(args.policy_lr), optax.adam(args.q_lr), optax.adam(args.alpha_lr or args.q_lr)

    def actor_head(actor, obs):
        mean, log_std = jnp.split(mlp_apply(actor, obs, "relu"), 2, axis=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(log_std) + 1)
        return mean, log_std

    def sample_action(actor, obs, key):
        """Tanh-squashed Gaussian scaled to the bounds, with the log-density of the squashed action."""
        mean, log_std = actor_head(actor, obs)
        dist = distrax.MultivariateNormalDiag(mean, jnp.exp(log_std))
        x = dist.sample(seed=key)
        y = jnp.tanh(x)
        log_prob = dist.log_prob(x) - jnp.log(scale * (1 - y**2) + 1e-6).sum(-1)  # CleanRL's epsilon
        return y * scale + bias, log_prob

    def mean_action(actor, obs):
        return jnp.tanh(actor_head(actor, obs)[0]) * scale + bias

    def q_values(qf, obs, action):
        x = jnp.concatenate([obs, action], -1)
        return jax.vmap(lambda p: mlp_apply(p, x, "relu")[..., 0])(qf)  # (2, batch)

    def init(key, params=None, norm=None):
        key, k_actor, k_q, k_env = jax.random.split(key, 4)
        if params is None:
            qf = jax.vmap(lambda k: mlp_init_torch(k, (obs_size + action_dim, *args.critic_hidden, 1),
                                                       args.critic_layer_norm))(
                jax.random.split(k_q))
            params = {"actor": mlp_init_torch(k_actor, (obs_size, *args.actor_hidden, 2 * action_dim)),
                      "qf": qf, "qf_target": qf, "log_alpha": jnp.log(jnp.float32(args.init_alpha))}
        opt_state = {"actor": actor_tx.init(params["actor"]), "qf": q_tx.init(params["qf"]),
                     "log_alpha": alpha_tx.init(params["log_alpha"])}
        env_state, obs = env.reset(k_env, norm)  # raw observations; the env keeps their statistics
        empty = lambda *shape: jnp.zeros((capacity, *shape), jnp.float32)
        buffer = Transitions(empty(obs_size), empty(action_dim), empty(), empty(obs_size), empty())
        return TrainState(params, opt_state, env_state, obs, buffer, key, jnp.int32(0))

    def critic_loss(qf, params, batch, key):
        alpha = jnp.exp(params["log_alpha"]) if args.autotune else args.alpha
        next_action, next_log_prob = sample_action(params["actor"], batch.next_obs, key)
        next_q = q_values(params["qf_target"], batch.next_obs, next_action)
        target = soft_q_target(batch.reward, batch.terminal, next_q, next_log_prob, alpha, args.gamma,
                               args.backup_entropy)
        q = q_values(qf, batch.obs, batch.action)
        qf1_loss, qf2_loss = ((q - target) ** 2).mean(1)
        return qf1_loss + qf2_loss, {"losses/qf1_values": q[0].mean(), "losses/qf2_values": q[1].mean(),
                                     "losses/qf1_loss": qf1_loss, "losses/qf2_loss": qf2_loss,
                                     "losses/qf_loss": (qf1_loss + qf2_loss) / 2.0}

    def unchanged(params, opt_state, update_fn):
        """The other branch of a cond around `update_fn`: no update, NaN metrics (not logged)."""
        shapes = jax.eval_shape(update_fn)[2]
        return params, opt_state, jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)

    def actor_loss(actor, params, obs, key):
        alpha = jnp.exp(params["log_alpha"]) if args.autotune else args.alpha
        action, log_prob = sample_action(actor, obs, key)
        return (alpha * log_prob - q_values(params["qf"], obs, action).min(0)).mean()

    def update_actor_and_alpha(carry, key):
        params, opt_state, obs = carry
        k_actor, k_alpha = jax.random.split(key)
        loss, grads = jax.value_and_grad(actor_loss)(params["actor"], params, obs, k_actor)
        updates, actor_opt = actor_tx.update(grads, opt_state["actor"])
        params = {**params, "actor": optax.apply_updates(params["actor"], updates)}
        opt_state = {**opt_state, "actor": actor_opt}
        metrics = {"losses/actor_loss": loss}
        if args.autotune:  # as CleanRL: with log pi of the just-updated actor
            _, log_prob = sample_action(params["actor"], obs, k_alpha)
            a_loss, grad = jax.value_and_grad(alpha_loss)(params["log_alpha"], log_prob, target_entropy)
            updates, alpha_opt = alpha_tx.update(grad, opt_state["log_alpha"])
            params = {**params, "log_alpha": optax.apply_updates(params["log_alpha"], updates)}
            opt_state = {**opt_state, "log_alpha": alpha_opt}
            metrics["losses/alpha_loss"] = a_loss
        metrics["losses/alpha"] = jnp.exp(params["log_alpha"]) if args.autotune else jnp.float32(args.alpha)
        return (params, opt_state, obs), metrics

    def update(carry, n):
        """One Q update on a fresh batch; `n` counts Q updates (unbatched, so the conds stay conds)."""
        params, opt_state, buffer, norm, size, key = carry
        key, k_idx, k_q, k_actor = jax.random.split(key, 4)
        batch = sample(buffer, k_idx, size, args.batch_size)
        batch = batch._replace(obs=env.observe(norm, batch.obs), next_obs=env.observe(norm, batch.next_obs))
        (_, metrics), grads = jax.value_and_grad(critic_loss, has_aux=True)(params["qf"], params, batch, k_q)
        updates, q_opt = q_tx.update(grads, opt_state["qf"])
        params = {**params, "qf": optax.apply_updates(params["qf"], updates)}
        opt_state = {**opt_state, "qf": q_opt}

        def actor_steps():
            keys = jax.random.split(k_actor, args.policy_frequency)
            (p, o, _), m = jax.lax.scan(update_actor_and_alpha, (params, opt_state, batch.obs), keys)
            return p, o, jax.tree.map(jnp.mean, m)

        params, opt_state, actor_metrics = jax.lax.cond(n % args.policy_frequency == 0, actor_steps,
                                                        partial(unchanged, params, opt_state, actor_steps))
        tau = jnp.where(n % args.target_network_frequency == 0, args.tau, 0.0)
        target = jax.tree.map(lambda t, q: tau * q + (1 - tau) * t, params["qf_target"], params["qf"])
        params = {**params, "qf_target": target}
        return (params, opt_state, buffer, norm, size, key), {**metrics, **actor_metrics}

    def train_iteration(state):
        """One vector-env step, then grad_updates_per_step Q updates once learning has started."""
        params, opt_state, env_state, obs, buffer, key, iteration = state
        key, k_random, k_policy, k_update = jax.random.split(key, 4)

        # --- act: uniform random actions until learning starts, then the policy's samples ---
        random_action = jax.random.uniform(k_random, (args.num_envs, action_dim), minval=spec.action_low,
                                           maxval=spec.action_high)
        policy_action, _ = sample_action(params["actor"], env.observe(env_state.norm, obs), k_policy)
        global_step = iteration * args.num_envs  # env steps taken before this one, as CleanRL counts them
        action = jnp.where(global_step < args.learning_starts, random_action, policy_action)

        # --- step and store: the true final observation at an episode's end, termination as terminal ---
        env_state, next_obs, reward, terminated, truncated, final_obs, episode = env.step(env_state, action)
        terminal = terminated if args.bootstrap_truncation else terminated | truncated
        row = (iteration * args.num_envs) % capacity
        new = Transitions(obs, action, reward, final_obs, terminal.astype(jnp.float32))
        buffer = insert(buffer, new, row)
        norm = env_state.norm  # updated with the new observations, as Brax updates its normaliser
        size = jnp.minimum((iteration + 1) * args.num_envs, capacity)

        # --- learn: Q updates on fresh batches, the actor and alpha on the delayed schedule ---
        def learn():
            first = iteration * args.grad_updates_per_step  # Q update index: CleanRL's global_step when 1 per step
            carry, m = jax.lax.scan(update, (params, opt_state, buffer, norm, size, k_update),
                                    first + jnp.arange(args.grad_updates_per_step))
            return carry[0], carry[1], jax.tree.map(jnp.nanmean, m)

        params, opt_state, metrics = jax.lax.cond(global_step > args.learning_starts, learn,
                                                  partial(unchanged, params, opt_state, learn))
        return TrainState(params, opt_state, env_state, next_obs, buffer, key, iteration + 1), {**metrics,
                                                                                               **episode.sums()}

    return init, train_iteration, make_evaluate(eval_env, lambda params, obs: mean_action(params["actor"], obs))


def check_args(args):
    check_ranges(args, {**dict.fromkeys(["total_timesteps", "num_envs", "num_seeds", "buffer_size", "batch_size",
                                         "policy_lr", "q_lr", "alpha_lr", "grad_updates_per_step", "policy_frequency",
                                         "target_network_frequency", "init_alpha", "log_every", "eval_every",
                                         "num_eval_envs", "max_episode_steps", "eval_max_episode_steps",
                                         "reward_scale"], "(0, inf)"),
                        "learning_starts": "[0, inf)", "gamma": "[0, 1]", "tau": "(0, 1]", "alpha": "[0, inf)"})
    if buffer_capacity(args) == 0:
        raise UsageError(f"--buffer-size {args.buffer_size} holds less than one step of --num-envs "
                         f"{args.num_envs}; raise it")
    if args.total_timesteps < max(args.log_every, args.num_envs):
        raise UsageError(f"--total-timesteps {args.total_timesteps} is less than one log interval "
                         f"(--log-every {args.log_every}); raise it or log more often")


def available_memory(device) -> int | None:
    """Bytes free for the buffer: device memory on accelerators, MemAvailable on a Linux host, else None."""
    stats = (device.memory_stats() if device.platform != "cpu" else None) or {}
    if "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


def check_buffer_memory(args, spec) -> None:
    """Say what the replay buffer takes, and refuse one that cannot fit instead of running out mid-compile."""
    obs_size = int(np.prod(spec.obs_shape))
    row = 4 * (2 * obs_size + spec.action_dim + 2)  # float32 obs, action, reward, next obs, terminal
    need, device = row * buffer_capacity(args) * args.num_seeds, jax.devices()[0]
    free = available_memory(device)
    print(f"replay buffer: {buffer_capacity(args):,} transitions x {args.num_seeds} seed(s) x {row} B = "
          f"{need / 2**30:.2f} GiB on {device.platform}" + (f" ({free / 2**30:.1f} GiB free)" if free else ""))
    if free is not None and need > 0.9 * free:
        raise UsageError(f"the replay buffer needs {need / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB of "
                         f"{device.platform} memory is free; lower --buffer-size or --num-seeds")


AXES = TrainState(0, 0, 0, 0, 0, 0, None)  # vmap axes: the iteration counter is shared by all seeds


def vmap_runs(init, train_iteration):
    """`init(keys, params, norm)` and `train_iteration(state)` over a leading axis of runs."""
    return (jax.vmap(init, in_axes=(0, None, None), out_axes=AXES),
            jax.vmap(train_iteration, in_axes=(AXES,), out_axes=(AXES, 0)))


def main():
    args = parse_args(Args)
    ckpt = load_checkpoint(args.load_model, args) if args.load_model else None  # also sets its network flags
    check_args(args)
    if args.eval_only:  # nothing is learnt: a replay buffer of one step instead of gigabytes
        args.buffer_size = args.num_envs
    # one logged row per --log-every env steps; the training env returns raw observations: the buffer stores
    # them, the learner normalises on use
    exp = open_experiment(args, [{}], args.num_envs, max(1, args.log_every // args.num_envs), discrete=False,
                          raw_obs=True, check_spec=partial(check_buffer_memory, args))
    init, train_iteration, evaluate = make_train(args, exp.env, exp.eval_env)
    train_or_evaluate(args, exp, ckpt, *vmap_runs(init, train_iteration), jax.vmap(evaluate), donate=True)


if __name__ == "__main__":
    run_main(main)
