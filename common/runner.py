"""The host side of training, shared by the algorithm scripts: one run directory and logger per vmapped run,
the loop over a compiled `train_chunk`, evaluation, checkpoints and the progress bar.

A script's compiled functions follow one convention: `train_chunk(state) -> (state, metrics)` with metrics of
shape (runs, updates) where keys containing "/" are logged as they are and `episodes`, `return_sum`,
`length_sum` give the episodes that ended in each update; `evaluate(params, norm, keys) -> returns` of shape
(runs, eval envs); the state has `.params` and `.env_state.norm`.
"""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from common.config import check_interrupted
from common.logger import MeanLogger, RunLogger, TrainProgress, prepare_run_dir, run_name, save_checkpoint

# More runs than this share one directory per experiment name, logging the mean over their seeds: a
# directory each would keep thousands of files and TensorBoard writer threads open.
MAX_RUN_DIRS = 64


def chunk_length(num_updates: int, target: int) -> int:
    """Largest divisor of num_updates not above target, so every chunk has the same length (one compile)."""
    return max(d for d in range(1, max(1, min(target, num_updates)) + 1) if num_updates % d == 0)


def jit(fn, **kwargs):
    """jax.jit, with LLVM at -O1 instead of -O3 on a CPU: the small fused kernels of these programs run as
    fast and XLA compiles them sooner (gymnax CartPole 500k steps incl. compile: 9.4 -> 8.2-8.6 s, 1 seed)."""
    options = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None
    return jax.jit(fn, compiler_options=options, **kwargs)


def jit_chunk(vmapped_chunk, donate: bool | None = None):
    """Compile a vmapped `train_chunk`. Donated, its state is updated in place instead of copied every
    chunk (a replay buffer, big batches on a GPU); by default only on accelerators."""
    if donate is None:
        donate = jax.default_backend() != "cpu"
    if not donate:
        return jit(vmapped_chunk)
    compiled = jit(vmapped_chunk, donate_argnums=(0,))

    def unalias(tree):  # XLA refuses to donate one array twice; Brax states share arrays (e.g. obs)
        seen = set()

        def fresh(x):
            if id(x) in seen:
                return jnp.copy(x)
            seen.add(id(x))
            return x

        return jax.tree.map(fresh, tree)

    return lambda state: compiled(unalias(state))


def spread_runs(args, state, num_runs: int):
    """Split the leading runs axis of `state` evenly over the devices (every CPU core, see setup_jax, or
    several GPUs), so each trains its share of the runs at the same time; jit follows the placement.
    Envs stepped on the host (Gymnasium callbacks) and video recording stay on one device."""
    devices = jax.devices()
    on_device = args.env_id.startswith(("gymnax/", "brax/")) and not args.capture_video
    if len(devices) == 1 or num_runs % len(devices) or not on_device:
        return state
    mesh = jax.sharding.Mesh(np.array(devices), ("runs",))
    split, copy = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*axes)) for axes in (["runs"], []))
    return jax.device_put(state, jax.tree.map(lambda x: split if x.ndim and x.shape[0] == num_runs else copy,
                                              state))


def make_evaluate(eval_env, act):
    """`evaluate(params, norm, key) -> returns`: one episode per eval env with the deterministic action
    `act(params, obs)` and frozen normalisation; each env's first episode counts."""
    def evaluate(params, norm, key):
        env_state, obs = eval_env.reset(key, norm)

        def step(carry, _):
            env_state, obs, returns, finished = carry
            env_state, obs, _, _, _, _, ep = eval_env.step(env_state, act(params, obs))
            returns = jnp.where(ep.done & ~finished, ep.episode_return, returns)
            return (env_state, obs, returns, finished | ep.done), None

        zeros = jnp.zeros(eval_env.num_envs)
        (_, _, returns, _), _ = jax.lax.scan(step, (env_state, obs, zeros, zeros.astype(bool)), None,
                                             eval_env.spec.max_episode_steps)
        return returns

    return evaluate


def open_runs(args, exp_names: list, seeds: list, configs: list) -> tuple:
    """Create (never silently reuse) runs/{env}__{exp}__{seed}__{time} per run and open its logger; beyond
    MAX_RUN_DIRS runs, runs/{env}__{exp}__seeds{first}-{last}__{time} per experiment name."""
    stamp, grouped = int(time.time()), len(seeds) > MAX_RUN_DIRS
    labels = list(seeds)
    if grouped:
        spans = {e: [s for x, s in zip(exp_names, seeds) if x == e] for e in exp_names}
        labels = [f"seeds{min(spans[e])}-{max(spans[e])}" for e in exp_names]
    names = [run_name(args.env_id, exp, label, stamp) for exp, label in zip(exp_names, labels)]
    run_dirs = [os.path.join("runs", n) for n in names]
    by_dir = {}
    for d, n, label, config in zip(run_dirs, names, labels, configs):
        if d not in by_dir:
            prepare_run_dir(d, args.clear_out)
            logger = RunLogger(d, n, {**config, "seed": label}, args.track, args.wandb_project_name,
                               args.wandb_entity)
            by_dir[d] = MeanLogger(logger) if grouped else logger
    return run_dirs, [by_dir[d] for d in run_dirs]


def evaluate_runs(evaluate, state, seeds, step: int, loggers) -> np.ndarray:
    """Evaluate every run (fresh keys per evaluation), log eval/episodic_return; mean return per run."""
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds) + 10_000 + step)
    returns = np.asarray(evaluate(state.params, state.env_state.norm, keys))
    for logger, r in zip(loggers, returns):
        logger.log(step, {"eval/episodic_return": r.mean(), "eval/episodic_return_std": r.std()})
    return returns.mean(axis=1)


def save_runs(params, norm, run_dirs, configs) -> None:
    shared = len(set(run_dirs)) < len(run_dirs)
    for i, (d, config) in enumerate(zip(run_dirs, configs)):
        pick = lambda x: x[i]
        name = f"model_seed{config['seed']}.ckpt" if shared else "model.ckpt"
        save_checkpoint(os.path.join(d, name), jax.tree.map(pick, params), jax.tree.map(pick, norm), config)


def train_loop(args, state, train_chunk, evaluate, *, seeds, run_dirs, loggers, configs, batch_size: int,
               num_updates: int, per_chunk: int) -> np.ndarray:
    """Run all chunks, logging every update at global_step = env steps per run; evaluate every
    args.eval_every steps and at the end; returns the last evaluation's mean return per run.
    Interrupted or crashed, it still flushes the logs and saves the last completed state."""
    progress = TrainProgress(num_updates * batch_size)
    global_step, next_eval, last_return = 0, args.eval_every, float("nan")
    eval_returns = np.full(len(loggers), np.nan)
    completed, saved = None, False  # host copy of (params, norm) after the last completed chunk
    start = time.time()
    try:
        for _ in range(num_updates // per_chunk):
            state, metrics = train_chunk(state)
            metrics = jax.device_get(metrics)
            check_interrupted()
            if args.save_model:  # the state itself may be donated to a chunk that never finishes
                completed, saved = jax.device_get((state.params, state.env_state.norm)), False
            episodes = metrics["episodes"]
            for u in range(per_chunk):
                step = global_step + (u + 1) * batch_size
                for i, logger in enumerate(loggers):
                    # NaN marks "not measured in this update" (e.g. SAC losses before learning starts)
                    row = {k: v[i, u] for k, v in metrics.items() if "/" in k and not np.isnan(v[i, u])}
                    if episodes[i, u] > 0:
                        row["charts/episodic_return"] = metrics["return_sum"][i, u] / episodes[i, u]
                        row["charts/episodic_length"] = metrics["length_sum"][i, u] / episodes[i, u]
                    logger.log(step, row)
            ended = episodes[:, -1] > 0
            if ended.any():
                last_return = float(np.mean(metrics["return_sum"][ended, -1] / episodes[ended, -1]))
            global_step += per_chunk * batch_size
            sps = int(global_step / (time.time() - start))
            for logger in loggers:
                logger.log(global_step, {"charts/SPS": sps})
            if global_step >= next_eval or global_step == num_updates * batch_size:
                next_eval += args.eval_every * max(1, (global_step - next_eval) // args.eval_every + 1)
                eval_returns = evaluate_runs(evaluate, state, seeds, global_step, loggers)
                if completed is not None:
                    save_runs(*completed, run_dirs, configs)
                    saved = True
            for logger in {id(logger): logger for logger in loggers}.values():  # seeds may share one
                logger.flush()
            progress.update(global_step, f"SPS {sps}  return {last_return:.1f}  eval {np.mean(eval_returns):.1f}")
    finally:
        progress.close()
        if completed is not None and not saved:  # the end of training was saved with its evaluation
            save_runs(*completed, run_dirs, configs)
        for logger in loggers:
            logger.close()
    print(f"done: {global_step} steps per run in {time.time() - start:.1f}s, final eval return "
          f"{np.mean(eval_returns):.2f} (runs in {os.path.dirname(run_dirs[0])}/)")
    return eval_returns
