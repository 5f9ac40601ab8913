"""Speed of ppo_continuous.py on Hopper-v4 next to the raw env stepping rate, in one run.

    python benchmarks/ppo_speed.py [--updates 6] [--env-id Hopper-v4]

Prints, for the CleanRL preset (1 env x 2048 steps) and for 8 envs (8 x 2048):
- raw: random actions through the same Gymnasium (vector) env in a plain Python loop, no JAX;
- rollout: the compiled rollout scan (policy + host-callback env step) with a single full-batch gradient
  step in place of the 10 x 32 minibatch updates;
- train: whole PPO updates (rollout + GAE + 10 epochs x 32 minibatches), after compilation;
- first update incl. compile: wall time of the first call.
"""
import argparse
import os
import sys
import time

import gymnasium as gym
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.cli import parse_args  # noqa: E402
from common.envs import make_env  # noqa: E402
from common.runner import empty_row, jit_chunk, make_chunk, setup_jax  # noqa: E402
from ppo_continuous import SWEEPABLE, Args, make_train  # noqa: E402

PRESET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "ppo_continuous_hopper_cleanrl.yaml")


def raw_rate(env_id, num_envs, steps):
    vec = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(num_envs)],
                                   autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    vec.reset(seed=0)
    low, high = vec.single_action_space.low, vec.single_action_space.high
    actions = np.random.default_rng(0).uniform(low, high, (steps, num_envs) + low.shape).astype(np.float32)
    start = time.perf_counter()
    for a in actions:
        vec.step(a)
    rate = steps * num_envs / (time.perf_counter() - start)
    vec.close()
    return rate


def ppo_rates(env_id, num_envs, updates):
    args = parse_args(Args, ["--config", PRESET, "--env-id", env_id, "--num-envs", str(num_envs)])
    env = make_env(args.env_id, args.num_envs, normalize_obs=True, normalize_reward=True)
    eval_env = make_env(args.env_id, 1, normalize_obs=True, freeze_stats=True)
    init, iteration, _ = make_train(args, env, eval_env)
    hp = {k: jax.numpy.full(1, getattr(args, k), jax.numpy.float32) for k in SWEEPABLE}
    state = jax.vmap(init, in_axes=(0, 0, None, None))(jax.random.PRNGKey(0)[None], hp, None, None)
    batch = args.num_envs * args.num_steps

    # nearly the rollout alone: the same scan with one full-batch gradient step instead of 320 minibatch steps
    rollout_args = parse_args(Args, ["--config", PRESET, "--env-id", env_id, "--num-envs", str(num_envs),
                                     "--update-epochs", "1", "--num-minibatches", "1"])
    _, rollout_iteration, _ = make_train(rollout_args, env, eval_env)

    def timed(iteration, state):  # the scripts' compiled loop (common.runner): one iteration, then `updates`
        chunk, row = jit_chunk(make_chunk(jax.vmap(iteration), 1, updates)), empty_row(jax.vmap(iteration), state)
        start = time.perf_counter()
        state, row, *_ = chunk(state, row, 1)
        jax.block_until_ready(state)
        first = time.perf_counter() - start
        start = time.perf_counter()
        state, row, *_ = chunk(state, row, updates)
        jax.block_until_ready(state)
        return state, updates * batch / (time.perf_counter() - start), first

    state, train_sps, first = timed(iteration, state)
    state, rollout_sps, _ = timed(rollout_iteration, state)
    env.close()
    eval_env.close()
    return train_sps, rollout_sps, first


def main():
    setup_jax()  # as the training scripts
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", default="Hopper-v4")
    parser.add_argument("--updates", type=int, default=6, help="timed updates per setting, after compiling")
    opts = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cores; {opts.env_id}")
    print(f"{'setting':<22}{'raw env steps/s':>16}{'rollout SPS':>13}{'train SPS':>11}{'1st update+compile':>20}")
    for num_envs in (1, 8):
        raw = raw_rate(opts.env_id, num_envs, 20000 // num_envs)
        train, rollout, first = ppo_rates(opts.env_id, num_envs, opts.updates)
        print(f"{f'{num_envs} env(s) x 2048 steps':<22}{raw:>16,.0f}{rollout:>13,.0f}{train:>11,.0f}{first:>19.1f}s",
              flush=True)


if __name__ == "__main__":
    main()
