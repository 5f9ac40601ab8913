"""PPO for discrete actions: CleanRL's ppo.py on Gymnasium or gymnax envs. Each
iteration (rollout, advantages, epochs of minibatch updates) runs inside one jitted `jax.lax.scan`; seeds and
hyperparameter sweeps train together in one vmapped program.

    python ppo_discrete.py --env-id gymnax/CartPole-v1 --num-seeds 4 --sweep learning-rate=1e-4,3e-4,1e-3
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
from common.envs import EpisodeStats
from common.logger import load_checkpoint
from common.networks import ACTIVATIONS, mlp_apply, mlp_init
from common.runner import make_evaluate, open_experiment, parse_sweep, train_or_evaluate

# float knobs that --sweep can vary inside one compiled program (traced, not baked in), as --sweep NAME=V1,V2
SWEEPABLE = ("learning_rate", "ent_coef", "clip_coef", "vf_coef", "gamma", "gae_lambda", "max_grad_norm")


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # the name of this experiment (part of the run name)
    seed: int = 1  # seed of the first run; seed i of --num-seeds uses seed + i
    num_seeds: int = 1  # independent seeds trained at once (vmapped)
    sweep: tuple[str, ...] = ()  # NAME=V1,V2,... of a SWEEPABLE knob: every value x every seed trains at once
    config: Optional[str] = None  # YAML preset whose values become the defaults; flags override it
    track: bool = False  # log to Weights & Biases
    wandb_project_name: str = "cleanRL"  # the wandb project
    wandb_entity: Optional[str] = None  # the wandb entity (team)
    capture_video: bool = False  # record evaluation episodes to runs/{run_name}/videos (Gymnasium and Brax envs)
    save_model: bool = False  # save params, normalisation statistics and config to runs/{run_name}/model.ckpt
    load_model: Optional[str] = None  # start from (or, with --eval-only, evaluate) a saved model
    eval_only: bool = False  # only evaluate --load-model, no training
    clear_out: bool = False  # replace an existing run directory of the same name

    env_id: str = "CartPole-v1"  # Gymnasium id (CartPole-v1) or gymnax/NAME (gymnax/CartPole-v1)
    total_timesteps: int = 500000  # total env steps per seed
    num_envs: int = 4  # parallel envs per seed
    max_episode_steps: Optional[int] = None  # time limit of the training envs (default: the env's own; Brax 1000)
    eval_max_episode_steps: Optional[int] = None  # time limit of the evaluation envs (default: as training)
    async_envs: bool = False  # Gymnasium AsyncVectorEnv (one process per env) instead of SyncVectorEnv
    normalize_obs: bool = False  # running observation normalisation (frozen at evaluation)
    normalize_reward: bool = False  # scale rewards by the std of the discounted return
    reward_scale: float = 1.0  # multiply rewards by this (after normalisation)
    gymnasium_norm_stats: bool = False  # update the statistics as Gymnasium's wrappers do (CleanRL): see README

    learning_rate: float = 2.5e-4  # Adam learning rate
    anneal_lr: bool = True  # anneal the learning rate linearly to 0, once per iteration
    num_steps: int = 128  # steps per env per rollout
    gamma: float = 0.99  # discount factor
    gae_lambda: float = 0.95  # GAE lambda
    num_minibatches: int = 4  # minibatches per epoch
    update_epochs: int = 4  # epochs over each rollout
    norm_adv: bool = True  # normalise advantages per minibatch
    clip_coef: float = 0.2  # surrogate clipping coefficient
    clip_vloss: bool = True  # clip the value loss as CleanRL does
    ent_coef: float = 0.01  # entropy coefficient
    vf_coef: float = 0.5  # value loss coefficient
    max_grad_norm: Optional[float] = 0.5  # global gradient-norm clip (None: no clipping)
    target_kl: Optional[float] = None  # stop the epochs of an iteration early once approx KL exceeds this
    bootstrap_truncation: bool = True  # bootstrap at time limits (off: as CleanRL, a time limit ends the return)
    reset_env: bool = False  # reset every env at the start of each rollout (off: carry episodes over, as CleanRL)
    actor_hidden: tuple[int, ...] = (64, 64)  # actor hidden layer sizes
    critic_hidden: tuple[int, ...] = (64, 64)  # critic hidden layer sizes
    activation: str = "tanh"  # hidden activation: tanh, relu, swish or elu

    eval_every: int = 100000  # evaluate every this many env steps (and at the end)
    num_eval_envs: int = 10  # evaluation episodes, one per eval env, deterministic actions


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    env_state: object
    obs: jax.Array
    key: jax.Array
    iteration: jax.Array  # iterations done so far
    hp: dict  # this run's values of the SWEEPABLE knobs


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
    params = {"actor": mlp_init(k_actor, (obs_size, *args.actor_hidden, action_dim), 0.01),
              "critic": mlp_init(k_critic, (obs_size, *args.critic_hidden, 1), 1.0)}
    return params


def make_train(args, env, eval_env):
    """Returns pure functions `init(key, hp, params=None, norm=None) -> TrainState`, `train_iteration(state) ->
    (state, metrics)` and `evaluate(params, norm, key) -> returns`. `hp` holds the SWEEPABLE knobs as arrays,
    so one compiled program serves every setting of a sweep."""
    batch_size = args.num_envs * args.num_steps
    num_iterations = args.total_timesteps // batch_size
    obs_size = int(np.prod(env.spec.obs_shape))

    def policy(params, obs):
        return distrax.Categorical(logits=mlp_apply(params["actor"], obs, args.activation))

    def value(params, obs):
        return mlp_apply(params["critic"], obs, args.activation)[..., 0]

    def optimizer(hp, learning_rate):  # Adam on one flat vector of all parameters: a few kernels, not a few per leaf
        clip = [optax.clip_by_global_norm(hp["max_grad_norm"])] if args.max_grad_norm else []
        return optax.flatten(optax.chain(*clip, optax.adam(learning_rate, eps=1e-5)))

    def learning_rate(hp, iteration):  # as CleanRL: annealed linearly to 0, once per iteration
        if not args.anneal_lr:
            return hp["learning_rate"]
        return optax.linear_schedule(hp["learning_rate"], 0.0, num_iterations)(iteration)

    def init(key, hp, params=None, norm=None):
        key, k_params, k_env = jax.random.split(key, 3)
        if params is None:
            params = init_params(k_params, obs_size, env.spec.action_dim, args)
        env_state, obs = env.reset(k_env, norm)
        opt_state = optimizer(hp, hp["learning_rate"]).init(params)
        return TrainState(params, opt_state, env_state, obs, key, jnp.int32(0), hp)

    def env_step(carry, noise):
        # Only the acting chain runs per step; values and log-probs are computed for the whole rollout after.
        params, env_state, obs = carry
        action = jnp.argmax(mlp_apply(params["actor"], obs, args.activation) + noise, axis=-1)  # Gumbel-max
        env_state, next_obs, reward, terminated, truncated, final_obs, episode = env.step(env_state, action)
        transition = Transition(obs, action, reward, terminated, truncated, final_obs, episode)
        return (params, env_state, next_obs), transition

    def loss_fn(params, mb, hp):
        dist = policy(params, mb.obs)
        logratio = dist.log_prob(mb.action) - mb.logprob
        ratio = jnp.exp(logratio)
        advantages = mb.advantages
        if args.norm_adv:
            advantages = (advantages - advantages.mean()) / (advantages.std(ddof=1) + 1e-8)  # torch's std
        clip = hp["clip_coef"]
        pg_loss = jnp.maximum(-advantages * ratio, -advantages * jnp.clip(ratio, 1 - clip, 1 + clip)).mean()
        new_value = value(params, mb.obs)
        v_loss = (new_value - mb.returns) ** 2
        if args.clip_vloss:
            clipped = mb.value + jnp.clip(new_value - mb.value, -clip, clip)
            v_loss = jnp.maximum(v_loss, (clipped - mb.returns) ** 2)
        v_loss = 0.5 * v_loss.mean()
        entropy = dist.entropy().mean()
        loss = pg_loss - hp["ent_coef"] * entropy + hp["vf_coef"] * v_loss
        return loss, {"losses/policy_loss": pg_loss, "losses/value_loss": v_loss, "losses/entropy": entropy,
                      "losses/old_approx_kl": (-logratio).mean(),
                      "losses/approx_kl": ((ratio - 1) - logratio).mean(),
                      "losses/clipfrac": (jnp.abs(ratio - 1) > clip).mean()}

    def update_minibatch(hp, lr, carry, minibatch):
        params, opt_state = carry
        grads, metrics = jax.grad(loss_fn, has_aux=True)(params, minibatch, hp)
        updates, opt_state = optimizer(hp, lr).update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), metrics

    def update_epoch(batch, hp, lr, carry, key):
        params, opt_state, stopped = carry
        perm = jax.random.permutation(key, batch_size)

        def run():
            minibatches = jax.tree.map(lambda x: x[perm].reshape((args.num_minibatches, -1) + x.shape[1:]), batch)
            return jax.lax.scan(partial(update_minibatch, hp, lr), (params, opt_state), minibatches)

        if args.target_kl is None:
            (params, opt_state), metrics = run()
        else:  # as CleanRL: after each epoch, stop if the last minibatch's KL is above target
            skip = lambda: ((params, opt_state), jax.tree.map(jnp.zeros_like, jax.eval_shape(run)[1]))
            (params, opt_state), metrics = jax.lax.cond(stopped, skip, run)
            metrics = jax.tree.map(lambda m: jnp.where(stopped, jnp.nan, m), metrics)
            stopped = stopped | (metrics["losses/approx_kl"][-1] > args.target_kl)
        return (params, opt_state, stopped), metrics

    def train_iteration(state):
        params, opt_state, env_state, obs, key, iteration, hp = state
        lr = learning_rate(hp, iteration)
        key, k_reset, k_noise, k_epochs = jax.random.split(key, 4)

        # --- rollout: num_steps steps of every env with the current policy ---
        if args.reset_env:
            env_state, obs = env.reset(k_reset, env_state.norm)
        noise = jax.random.gumbel(k_noise, (args.num_steps, args.num_envs, env.spec.action_dim))
        (params, env_state, obs), traj = jax.lax.scan(env_step, (params, env_state, obs), noise)

        # --- advantages: GAE, bootstrapping from V(final obs) unless the episode terminated ---
        values, next_values = value(params, traj.obs), value(params, traj.final_obs)
        logprobs = policy(params, traj.obs).log_prob(traj.action)
        done = traj.terminated | traj.truncated
        terminal = traj.terminated if args.bootstrap_truncation else done  # off: a time limit ends the return
        advantages, returns = compute_gae(values, traj.reward, terminal.astype(jnp.float32),
                                          done.astype(jnp.float32), next_values, hp["gamma"], hp["gae_lambda"])
        batch = Batch(traj.obs, traj.action, logprobs, values, advantages, returns)
        batch = jax.tree.map(lambda x: x.reshape((batch_size,) + x.shape[2:]), batch)

        # --- epochs: update_epochs passes over the batch, num_minibatches shuffled minibatches each ---
        (params, opt_state, _), metrics = jax.lax.scan(partial(update_epoch, batch, hp, lr),
                                                       (params, opt_state, jnp.bool_(False)),
                                                       jax.random.split(k_epochs, args.update_epochs))
        metrics = jax.tree.map(jnp.nanmean, metrics)  # one number per iteration
        metrics["losses/explained_variance"] = 1.0 - jnp.var(batch.returns - batch.value) / (
            jnp.var(batch.returns) + 1e-8)
        metrics["charts/learning_rate"] = lr
        return TrainState(params, opt_state, env_state, obs, key, iteration + 1, hp), {**metrics, **traj.episode.sums()}

    def eval_action(params, obs):  # deterministic
        return jnp.argmax(mlp_apply(params["actor"], obs, args.activation), axis=-1)  # the likeliest action

    return init, train_iteration, make_evaluate(eval_env, eval_action)


def check_args(args):
    check_ranges(args, {**dict.fromkeys(["total_timesteps", "num_envs", "num_steps", "num_minibatches",
                                         "update_epochs", "num_seeds", "num_eval_envs", "eval_every", "learning_rate",
                                         "clip_coef", "max_grad_norm", "target_kl", "max_episode_steps",
                                         "eval_max_episode_steps", "reward_scale"], "(0, inf)"),
                        "gamma": "[0, 1]", "gae_lambda": "[0, 1]", "ent_coef": "[0, inf)", "vf_coef": "[0, inf)"})
    batch_size = args.num_envs * args.num_steps
    if batch_size % args.num_minibatches:
        raise UsageError(f"batch size num_envs x num_steps = {batch_size} is not divisible by --num-minibatches "
                         f"{args.num_minibatches}; pick a divisor of {batch_size}")
    if args.norm_adv and batch_size < 2 * args.num_minibatches:
        raise UsageError(f"minibatches of {batch_size // args.num_minibatches} sample(s) cannot normalise advantages; "
                         f"use fewer --num-minibatches or --no-norm-adv")
    if args.total_timesteps < batch_size:
        raise UsageError(f"--total-timesteps {args.total_timesteps} is less than one rollout "
                         f"(num_envs x num_steps = {batch_size}); raise it or shorten the rollout")
    if args.activation not in ACTIVATIONS:
        raise UsageError(f"unknown --activation '{args.activation}'; choose one of {', '.join(ACTIVATIONS)}")


def main():
    args = parse_args(Args)
    ckpt = load_checkpoint(args.load_model, args) if args.load_model else None  # also sets its network flags
    settings = parse_sweep(args, SWEEPABLE, check_args)
    exp = open_experiment(args, settings, args.num_envs * args.num_steps, discrete=True)
    init, train_iteration, evaluate = make_train(args, exp.env, exp.eval_env)
    hp = {k: jnp.array([s.get(k, getattr(args, k)) for s in settings for _ in range(args.num_seeds)], jnp.float32)
          for k in SWEEPABLE if getattr(args, k) is not None}
    train_or_evaluate(args, exp, ckpt, jax.vmap(init, in_axes=(0, 0, None, None)), jax.vmap(train_iteration),
                      jax.vmap(evaluate), hp)


if __name__ == "__main__":
    run_main(main)
