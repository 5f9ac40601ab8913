"""Update-phase speed of sac.py on Hopper-v4 next to the compute floor of the machine, in one run.

    python benchmarks/sac_speed.py [--steps 2000] [--env-id Hopper-v4]

Both rows run sac.py's own compiled training chunk with the CleanRL preset (1 env, batch 256, 1 Q update
per step, actor and alpha twice every second step), learning from the first step (--learning-starts 0):
- sac.py: the real env, stepped through the host callback;
- bare update loop: the same program with a stand-in JAX env of the same shapes that returns zeros, so
  it times acting, replay insert/sample and the updates alone.
Timed after one chunk has compiled and run; SPS = env steps (= Q updates) per second.
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.cli import parse_args  # noqa: E402
from common.envs import Env, EpisodeStats, make_env  # noqa: E402
from common.runner import empty_row, jit, jit_chunk, make_chunk, setup_jax  # noqa: E402
from sac import Args, make_train, vmap_runs  # noqa: E402

PRESET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "sac_hopper_cleanrl.yaml")


def zero_env(real: Env) -> Env:
    """An env with the real one's shapes and state layout whose step is free."""
    state0, obs0 = real.reset(jax.random.PRNGKey(0))
    state0, obs0 = jax.tree.map(jnp.zeros_like, state0), jnp.zeros_like(obs0)
    n = real.num_envs

    def step(state, action):
        zeros, flags = jnp.zeros(n) + action.sum() * 0, jnp.zeros(n, bool)
        return state, obs0, zeros, flags, flags, obs0, EpisodeStats(flags, zeros, jnp.zeros(n, jnp.int32))

    return Env(lambda key, norm=None: (state0, obs0), step, real.spec, n, lambda: None, real.observe)


def steps_per_second(args, env, steps_per_chunk, chunks):
    init, iteration, _ = make_train(args, env, env)
    init, iteration = vmap_runs(init, iteration)  # the scripts' compiled loop (common.runner), as in sac.py
    state = jit(init)(jax.random.PRNGKey(0)[None], None, None)
    chunk, row = jit_chunk(make_chunk(iteration, steps_per_chunk, 1), donate=True), empty_row(iteration, state)
    start = time.perf_counter()
    state, row, *_ = chunk(state, row, steps_per_chunk)
    jax.block_until_ready(state)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(chunks):
        state, row, *_ = chunk(state, row, steps_per_chunk)
    jax.block_until_ready(state)
    return chunks * steps_per_chunk * args.num_envs / (time.perf_counter() - start), first


def main():
    setup_jax()  # as the training scripts
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", default="Hopper-v4")
    parser.add_argument("--steps", type=int, default=2000, help="timed env steps per row, after compiling")
    opts = parser.parse_args()
    args = parse_args(Args, ["--config", PRESET, "--env-id", opts.env_id, "--learning-starts", "0"])
    env = make_env(args.env_id, args.num_envs)
    print(f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cores; {opts.env_id}, "
          f"batch {args.batch_size}, hidden {args.critic_hidden}")
    print(f"{'program':<20}{'SPS (updates/s)':>16}{'1st chunk incl. compile':>25}")
    per_chunk = 500
    for name, e in (("sac.py", env), ("bare update loop", zero_env(env))):
        sps, first = steps_per_second(args, e, per_chunk, max(1, opts.steps // per_chunk))
        print(f"{name:<20}{sps:>16,.0f}{first:>24.1f}s", flush=True)
    env.close()


if __name__ == "__main__":
    main()
