"""PPO for continuous actions: CleanRL's ppo_continuous_action.py with the whole update (rollout, GAE,
epochs x minibatches) compiled into one jitted `jax.lax.scan`, on Gymnasium or Brax envs.

    python ppo_continuous.py --env-id Hopper-v4
    python ppo_continuous.py --config configs/ppo_continuous_brax_ant.yaml
"""
import dataclasses
import os
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Optional

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from common.config import UsageError, check_positive, parse_args, run_main, setup_jax
from common.envs import EpisodeStats, make_env
from common.logger import load_checkpoint
from common.networks import ACTIVATIONS, mlp_apply, mlp_init
from common.runner import (chunk_length, evaluate_runs, jit, jit_chunk, make_evaluate, open_runs,
                           spread_runs, train_loop)


@dataclass
class Args:
    exp_name: str = "ppo_continuous"
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the first run; seed i of --num-seeds uses seed + i"""
    num_seeds: int = 1
    """independent seeds trained at once (vmapped)"""
    config: Optional[str] = None
    """YAML preset whose values become the defaults; flags override it"""
    track: bool = False
    """log to Weights & Biases"""
    wandb_project_name: str = "cleanRL"
    """the wandb project"""
    wandb_entity: Optional[str] = None
    """the wandb entity (team)"""
    capture_video: bool = False
    """record evaluation episodes to runs/{run_name}/videos (Gymnasium and Brax envs)"""
    save_model: bool = False
    """save params, normalisation statistics and config to runs/{run_name}/model.ckpt"""
    load_model: Optional[str] = None
    """start from (or, with --eval-only, evaluate) a saved model"""
    eval_only: bool = False
    """only evaluate --load-model, no training"""
    clear_out: bool = False
    """replace an existing run directory of the same name"""

    env_id: str = "Hopper-v4"
    """Gymnasium id (Hopper-v4) or brax/NAME (brax/ant)"""
    total_timesteps: int = 1000000
    """total env steps per seed"""
    num_envs: int = 1
    """parallel envs per seed"""
    max_episode_steps: Optional[int] = None
    """time limit of the training envs (default: the env's own; 1000 for Brax)"""
    eval_max_episode_steps: Optional[int] = None
    """time limit of the evaluation envs (default: as training)"""
    async_envs: bool = False
    """Gymnasium AsyncVectorEnv (one process per env) instead of SyncVectorEnv"""
    brax_backend: str = "generalized"
    """Brax physics backend: generalized, positional, spring or mjx"""
    brax_true_reset: bool = True
    """Brax: reset finished episodes to fresh random states (else to each env's first state)"""
    normalize_obs: bool = True
    """running observation normalisation (frozen at evaluation)"""
    normalize_reward: bool = True
    """scale rewards by the std of the discounted return"""
    reward_scale: float = 1.0
    """multiply rewards by this (after normalisation)"""

    learning_rate: float = 3e-4
    """Adam learning rate"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0"""
    num_steps: int = 2048
    """steps per env per rollout"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    num_minibatches: int = 32
    """minibatches per epoch"""
    update_epochs: int = 10
    """epochs over each rollout"""
    norm_adv: bool = True
    """normalise advantages per minibatch"""
    clip_coef: float = 0.2
    """surrogate clipping coefficient"""
    clip_vloss: bool = True
    """clip the value loss as CleanRL does"""
    ent_coef: float = 0.0
    """entropy coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: Optional[float] = 0.5
    """global gradient-norm clip (none: no clipping)"""
    target_kl: Optional[float] = None
    """stop the epochs of an update early once approx KL exceeds this"""
    bootstrap_truncation: bool = True
    """bootstrap from the final observation at time limits (off: CleanRL, truncation ends the return)"""
    reset_env: bool = False
    """reset every env at the start of each rollout (off: carry episodes across rollouts, as CleanRL)"""
    actor_hidden: tuple[int, ...] = (64, 64)
    """actor hidden layer sizes"""
    critic_hidden: tuple[int, ...] = (64, 64)
    """critic hidden layer sizes"""
    activation: str = "tanh"
    """hidden activation: tanh, relu, swish or elu"""

    eval_every: int = 100000
    """evaluate every this many env steps (and at the end)"""
    num_eval_envs: int = 10
    """evaluation episodes, one per eval env, deterministic (mean) actions"""


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    env_state: object
    obs: jax.Array
    key: jax.Array
    update: jax.Array  # updates done so far


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    final_obs: jax.Array  # the observation after this step in the same episode (the true last one at its end)
    episode: EpisodeStats


class Batch(NamedTuple):
    obs: jax.Array
    action: jax.Array
    logprob: jax.Array
    value: jax.Array
    advantages: jax.Array
    returns: jax.Array


def compute_gae(values, rewards, terminated, done, next_values, gamma, gae_lambda):
    """GAE over time-major arrays. `next_values[t]` is V of the observation after step t in the same
    episode; `terminated` stops the bootstrap, `done` (terminated or truncated) stops the trace."""
    def backward(next_adv, t):
        value, reward, term, d, next_value = t
        delta = reward + gamma * next_value * (1.0 - term) - value
        adv = delta + gamma * gae_lambda * (1.0 - d) * next_adv
        return adv, adv

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(values[0]),
                                 (values, rewards, terminated, done, next_values), reverse=True)
    return advantages, advantages + values


def init_params(key, obs_size, action_dim, args):
    k_actor, k_critic = jax.random.split(key)
    return {"actor": mlp_init(k_actor, (obs_size, *args.actor_hidden, action_dim), 0.01),
            "critic": mlp_init(k_critic, (obs_size, *args.critic_hidden, 1), 1.0),
            "log_std": jnp.zeros(action_dim, jnp.float32)}


def make_train(args, env, eval_env, updates_per_chunk):
    """Returns pure functions `init(key) -> TrainState`, `train_chunk(state) -> (state, metrics)` (that many
    updates, metrics per update) and `evaluate(params, norm, key) -> returns`."""
    batch_size = args.num_envs * args.num_steps
    num_updates = args.total_timesteps // batch_size
    obs_size = int(np.prod(env.spec.obs_shape))

    def policy(params, obs):
        mean = mlp_apply(params["actor"], obs, args.activation)
        return distrax.MultivariateNormalDiag(mean, jnp.exp(params["log_std"]) * jnp.ones_like(mean))

    def value(params, obs):
        return mlp_apply(params["critic"], obs, args.activation)[..., 0]

    def adam(learning_rate):
        return optax.adam(learning_rate, eps=1e-5)

    clip = [optax.clip_by_global_norm(args.max_grad_norm)] if args.max_grad_norm else []
    # Adam on one flat vector: a small network's dozen leaves each cost their own kernels otherwise
    tx = optax.flatten(optax.chain(*clip, optax.inject_hyperparams(adam)(learning_rate=args.learning_rate)))

    def init(key, params=None, norm=None):
        key, k_params, k_env = jax.random.split(key, 3)
        if params is None:
            params = init_params(k_params, obs_size, env.spec.action_dim, args)
        env_state, obs = env.reset(k_env, norm)
        return TrainState(params, tx.init(params), env_state, obs, key, jnp.int32(0))

    def env_step(carry, noise):
        # Only the acting chain runs per step: values and log-probs are computed for the whole rollout
        # afterwards. Independent work beside the host callback (sampling, the critic) made XLA run the
        # loop body on several threads and cost more than the work itself.
        params, env_state, obs = carry
        action = mlp_apply(params["actor"], obs, args.activation) + jnp.exp(params["log_std"]) * noise
        env_state, next_obs, reward, terminated, truncated, final_obs, episode = env.step(env_state, action)
        return (params, env_state, next_obs), Transition(obs, action, reward, terminated, truncated, final_obs,
                                                         episode)

    def loss_fn(params, mb):
        dist = policy(params, mb.obs)
        logratio = dist.log_prob(mb.action) - mb.logprob
        ratio = jnp.exp(logratio)
        advantages = mb.advantages
        if args.norm_adv:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        pg_loss = jnp.maximum(-advantages * ratio,
                              -advantages * jnp.clip(ratio, 1 - args.clip_coef, 1 + args.clip_coef)).mean()
        new_value = value(params, mb.obs)
        v_loss = (new_value - mb.returns) ** 2
        if args.clip_vloss:
            clipped = mb.value + jnp.clip(new_value - mb.value, -args.clip_coef, args.clip_coef)
            v_loss = jnp.maximum(v_loss, (clipped - mb.returns) ** 2)
        v_loss = 0.5 * v_loss.mean()
        entropy = dist.entropy().mean()
        loss = pg_loss - args.ent_coef * entropy + args.vf_coef * v_loss
        return loss, {"losses/policy_loss": pg_loss, "losses/value_loss": v_loss, "losses/entropy": entropy,
                      "losses/old_approx_kl": (-logratio).mean(),
                      "losses/approx_kl": ((ratio - 1) - logratio).mean(),
                      "losses/clipfrac": (jnp.abs(ratio - 1) > args.clip_coef).mean()}

    def update_minibatch(carry, minibatch):
        params, opt_state = carry
        grads, metrics = jax.grad(loss_fn, has_aux=True)(params, minibatch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), metrics

    def update_epoch(batch, carry, key):
        params, opt_state, stopped = carry
        perm = jax.random.permutation(key, batch_size)

        def run():
            minibatches = jax.tree.map(lambda x: x[perm].reshape((args.num_minibatches, -1) + x.shape[1:]), batch)
            return jax.lax.scan(update_minibatch, (params, opt_state), minibatches)

        if args.target_kl is None:
            (params, opt_state), metrics = run()
        else:  # as CleanRL: after each epoch, stop if the last minibatch's KL is above target
            skip = lambda: ((params, opt_state), jax.tree.map(jnp.zeros_like, jax.eval_shape(run)[1]))
            (params, opt_state), metrics = jax.lax.cond(stopped, skip, run)
            metrics = jax.tree.map(lambda m: jnp.where(stopped, jnp.nan, m), metrics)
            stopped = stopped | (metrics["losses/approx_kl"][-1] > args.target_kl)
        return (params, opt_state, stopped), metrics

    def update_step(state, _):
        params, opt_state, env_state, obs, key, update = state
        lr = args.learning_rate * (1.0 - update / num_updates) if args.anneal_lr else args.learning_rate
        opt_state[-1].hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        key, k_reset, k_noise, k_epochs = jax.random.split(key, 4)
        if args.reset_env:
            env_state, obs = env.reset(k_reset, env_state.norm)
        noise = jax.random.normal(k_noise, (args.num_steps, args.num_envs, env.spec.action_dim))
        (params, env_state, obs), traj = jax.lax.scan(env_step, (params, env_state, obs), noise)
        values, next_values = value(params, traj.obs), value(params, traj.final_obs)
        logprobs = policy(params, traj.obs).log_prob(traj.action)
        done = traj.terminated | traj.truncated
        # with bootstrapping off a time limit ends the return like a termination (CleanRL)
        terminal = traj.terminated if args.bootstrap_truncation else done
        advantages, returns = compute_gae(values, traj.reward, terminal.astype(jnp.float32),
                                          done.astype(jnp.float32), next_values, args.gamma, args.gae_lambda)
        batch = Batch(traj.obs, traj.action, logprobs, values, advantages, returns)
        batch = jax.tree.map(lambda x: x.reshape((batch_size,) + x.shape[2:]), batch)
        (params, opt_state, _), metrics = jax.lax.scan(partial(update_epoch, batch),
                                                       (params, opt_state, jnp.bool_(False)),
                                                       jax.random.split(k_epochs, args.update_epochs))
        metrics = jax.tree.map(jnp.nanmean, metrics)
        metrics["losses/explained_variance"] = 1.0 - jnp.var(batch.returns - batch.value) / (
            jnp.var(batch.returns) + 1e-8)
        metrics["charts/learning_rate"] = jnp.asarray(lr, jnp.float32)
        ep = traj.episode  # summed here so no per-step data leaves the device
        metrics["episodes"] = ep.done.sum()
        metrics["return_sum"] = jnp.where(ep.done, ep.episode_return, 0.0).sum()
        metrics["length_sum"] = jnp.where(ep.done, ep.episode_length, 0).sum()
        return TrainState(params, opt_state, env_state, obs, key, update + 1), metrics

    def train_chunk(state):
        return jax.lax.scan(update_step, state, None, updates_per_chunk)

    def mean_action(params, obs):  # evaluation acts deterministically
        return mlp_apply(params["actor"], obs, args.activation)

    return init, train_chunk, make_evaluate(eval_env, mean_action)



def check_args(args):
    check_positive(args, ["total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs",
                          "num_seeds", "num_eval_envs", "eval_every", "learning_rate", "max_episode_steps",
                          "eval_max_episode_steps"])
    batch_size = args.num_envs * args.num_steps
    if batch_size % args.num_minibatches:
        raise UsageError(f"batch size num_envs x num_steps = {batch_size} is not divisible by --num-minibatches "
                         f"{args.num_minibatches}; pick a divisor of {batch_size}")
    if args.total_timesteps < batch_size:
        raise UsageError(f"--total-timesteps {args.total_timesteps} is less than one rollout "
                         f"(num_envs x num_steps = {batch_size}); raise it or shorten the rollout")
    if args.activation not in ACTIVATIONS:
        raise UsageError(f"unknown --activation '{args.activation}'; choose one of {', '.join(ACTIVATIONS)}")
    if args.eval_only and not args.load_model:
        raise UsageError("--eval-only needs --load-model PATH (a model.ckpt written by --save-model)")


def main():
    args = parse_args(Args)
    ckpt = load_checkpoint(args.load_model) if args.load_model else None
    if ckpt is not None:  # the network and env must match the saved parameters
        for name in ("env_id", "actor_hidden", "critic_hidden", "activation", "normalize_obs"):
            setattr(args, name, type(getattr(args, name))(ckpt["config"][name]))
    check_args(args)
    setup_jax()

    if args.capture_video:
        os.environ.setdefault("MUJOCO_GL", "egl")  # MuJoCo renders headless through EGL
    env_kwargs = dict(normalize_obs=args.normalize_obs, normalize_reward=args.normalize_reward, gamma=args.gamma,
                      reward_scale=args.reward_scale, brax_backend=args.brax_backend,
                      brax_true_reset=args.brax_true_reset, asynchronous=args.async_envs)
    env = make_env(args.env_id, args.num_envs, num_copies=args.num_seeds,
                   max_episode_steps=args.max_episode_steps, **env_kwargs)
    if env.spec.discrete:
        env.close()
        raise UsageError(f"'{args.env_id}' has discrete actions; ppo_continuous.py needs a continuous (Box) "
                         f"action space: use ppo_discrete.py")
    seeds = [args.seed + i for i in range(args.num_seeds)]
    configs = [{**dataclasses.asdict(args), "seed": s} for s in seeds]
    exp = args.exp_name + ("-eval" if args.eval_only else "")
    run_dirs, loggers = open_runs(args, [exp] * len(seeds), seeds, configs)
    eval_env = make_env(args.env_id, args.num_eval_envs, num_copies=args.num_seeds, freeze_stats=True,
                        max_episode_steps=args.eval_max_episode_steps or args.max_episode_steps,
                        video_dir=os.path.join(run_dirs[0], "videos") if args.capture_video else None, **env_kwargs)
    if eval_env.spec.max_episode_steps is None:
        raise UsageError(f"'{args.env_id}' has no time limit; pass --eval-max-episode-steps")

    batch_size = args.num_envs * args.num_steps
    num_updates = args.total_timesteps // batch_size
    per_chunk = chunk_length(num_updates, min(max(1, args.eval_every // batch_size), -(-num_updates // 20)))
    init, train_chunk, evaluate = make_train(args, env, eval_env, per_chunk)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.array(seeds))
    params, norm = (ckpt["params"], ckpt["norm"]) if ckpt else (None, None)
    state = spread_runs(args, jit(jax.vmap(init, in_axes=(0, None, None)))(keys, params, norm), len(seeds))
    train_chunk = jit_chunk(jax.vmap(train_chunk))
    evaluate = jit(jax.vmap(evaluate))
    try:
        if args.eval_only:
            returns = evaluate_runs(evaluate, state, seeds, 0, loggers)
            print(f"eval/episodic_return {returns.mean():.2f} over {args.num_eval_envs} episodes per seed")
            for logger in loggers:
                logger.close()
        else:
            train_loop(args, state, train_chunk, evaluate, seeds=seeds, run_dirs=run_dirs, loggers=loggers,
                       configs=configs, batch_size=batch_size, num_updates=num_updates, per_chunk=per_chunk)
    finally:
        env.close()
        eval_env.close()


if __name__ == "__main__":
    run_main(main)
