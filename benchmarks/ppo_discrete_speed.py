"""Wall time of ppo_discrete.py training gymnax CartPole-v1 for 500k steps, including compilation.

    python benchmarks/ppo_discrete_speed.py [--seeds 1 8] [--steps 500000]

Times the compiled program only (init + all updates + final evaluation, one jit call each), with the seeds
spread over the devices as the script does (one XLA CPU device per core); per-update logging of the script
is not included. Each seed count runs twice against a persistent compilation cache that starts empty:
"cold" compiles everything (a first run), "warm" loads the compiled programs from the cache (a re-run of
the same configuration). Prints the final eval return.
"""
import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.envs import make_env  # noqa: E402
from common.runner import empty_row, jit, jit_chunk, make_chunk, setup_jax, spread_runs  # noqa: E402
from ppo_discrete import SWEEPABLE, Args, make_train  # noqa: E402


def run(num_seeds, steps):
    args = Args(env_id="gymnax/CartPole-v1", total_timesteps=steps)
    num_updates = steps // (args.num_envs * args.num_steps)
    env = make_env(args.env_id, args.num_envs)
    eval_env = make_env(args.env_id, 10, freeze_stats=True)
    init, iteration, evaluate = make_train(args, env, eval_env)
    hp = {k: jnp.full(num_seeds, getattr(args, k), jnp.float32) for k in SWEEPABLE}
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(num_seeds))
    start = time.perf_counter()
    state = spread_runs(args, jit(jax.vmap(init))(keys, hp), num_seeds)
    chunk = jit_chunk(make_chunk(jax.vmap(iteration), 1, num_updates))  # the whole run as one chunk
    state, *_ = chunk(state, empty_row(jax.vmap(iteration), state), num_updates)
    returns = jit(jax.vmap(evaluate))(state.params, state.env_state.norm, keys)
    returns.block_until_ready()
    return time.perf_counter() - start, float(returns.mean()), num_updates * args.num_envs * args.num_steps


def main():
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jax-cache-"))
    setup_jax()  # as the training scripts
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=500_000)
    opts = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cores, {jax.device_count()} devices")
    for n in opts.seeds:
        cold, ret, steps = run(n, opts.steps)
        warm, ret_again, _ = run(n, opts.steps)
        print(f"{n:>5} seed(s) x {steps:,} steps: {cold:6.1f} s incl. compile (cold cache), {warm:6.1f} s warm; "
              f"final eval return {ret:.1f} / {ret_again:.1f}", flush=True)


if __name__ == "__main__":
    main()
