"""The host side of training, shared by the algorithm scripts: JAX settings, the run setup (envs, sweeps, run
directories), the loop over a compiled `train_chunk` with logging, evaluation and checkpoints.

A script's compiled functions follow one convention: `train_chunk(state) -> (state, metrics)` with metrics of
shape (runs, log rows) where keys containing "/" are logged as they are and `episodes`, `return_sum`,
`length_sum` give the episodes that ended in each row; `evaluate(params, norm, keys) -> returns` of shape
(runs, eval envs); the state has `.params` and `.env_state.norm`.
"""
import dataclasses
import itertools
import os
import shutil
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from common.cli import Diverged, UsageError, check_interrupted
from common.envs import make_env
from common.logger import MeanLogger, RunLogger, prepare_run_dir, restore, run_name, save_checkpoint

# More runs than this share one directory per experiment name, logging the mean over their seeds.
MAX_RUN_DIRS = 64


def setup_jax() -> None:
    """Process-wide JAX settings every script uses."""
    jax.config.update("jax_default_matmul_precision", "highest")  # TF32 on GPUs breaks RL training
    # Compiled programs are kept on disk (JAX_COMPILATION_CACHE_DIR moves them, JAX_ENABLE_COMPILATION_CACHE=false
    # turns it off); past 1 GB the least recently used go. The PRNG stays threefry: "rbg" keys draw every
    # vmapped seed's bits from the first seed's key.
    if jax.config.jax_compilation_cache_dir is None:
        cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        try:
            os.makedirs(os.path.join(cache_home, "jax-rl"), exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", os.path.join(cache_home, "jax-rl"))
        except OSError:  # nowhere to write it: compile every time, without a warning per program
            pass
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_compilation_cache_max_size", 2**30)
    try:  # one XLA CPU device per core, so runs can be spread over all cores (spread_runs)
        jax.config.update("jax_num_cpu_devices", len(os.sched_getaffinity(0)))
    except RuntimeError:  # JAX has already computed something in this process (tests): keep its devices
        pass


def jit(fn, **kwargs):
    """jax.jit, with LLVM at -O1 on a CPU: these programs' small fused kernels run as fast and compile sooner."""
    options = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None
    return jax.jit(fn, compiler_options=options, **kwargs)


def jit_chunk(vmapped_chunk, donate: bool | None = None):
    """Compile a vmapped `train_chunk`; donated (by default on accelerators), its state is updated in place."""
    if not (jax.default_backend() != "cpu" if donate is None else donate):
        return jit(vmapped_chunk)
    compiled = jit(vmapped_chunk, donate_argnums=(0,))

    def unalias(state):  # XLA refuses to donate one array twice; Brax states share arrays (e.g. obs)
        seen = set()
        return jax.tree.map(lambda x: jnp.copy(x) if id(x) in seen else (seen.add(id(x)), x)[1], state)

    return lambda state: compiled(unalias(state))


def spread_runs(args, state, num_runs: int):
    """Split the leading runs axis of `state` evenly over the devices (every CPU core, or several GPUs); jit
    follows the placement. Envs stepped on the host (Gymnasium callbacks) and video stay on one device."""
    devices = jax.devices()
    on_device = args.env_id.startswith(("gymnax/", "brax/")) and not args.capture_video
    if len(devices) == 1 or num_runs % len(devices) or not on_device:
        return state
    mesh = jax.sharding.Mesh(np.array(devices), ("runs",))
    split, copy = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*axes)) for axes in (["runs"], []))
    return jax.device_put(state, jax.tree.map(lambda x: split if x.ndim and x.shape[0] == num_runs else copy, state))


def make_evaluate(eval_env, act):
    """`evaluate(params, norm, key) -> returns`: one episode per eval env with the deterministic action
    `act(params, obs)` and frozen normalisation; each env's first episode counts."""
    def evaluate(params, norm, key):
        def step(carry, _):
            env_state, obs, returns, finished = carry
            env_state, obs, _, _, _, _, ep = eval_env.step(env_state, act(params, obs))
            returns = jnp.where(ep.done & ~finished, ep.episode_return, returns)
            return (env_state, obs, returns, finished | ep.done), None

        zeros = jnp.zeros(eval_env.num_envs)
        carry = (*eval_env.reset(key, norm), zeros, zeros.astype(bool))
        return jax.lax.scan(step, carry, None, eval_env.spec.max_episode_steps)[0][2]

    return evaluate


def parse_sweep(args, sweepable: tuple, check) -> list[dict]:
    """--sweep NAME=V1,V2 entries -> every combination of the values (dicts of the swept knobs); `check(args)`
    validates the flags and every setting."""
    check(args)
    axes = []
    for entry in getattr(args, "sweep", ()):
        name, _, values = entry.partition("=")
        name = name.replace("-", "_")
        if name not in sweepable or not values:
            raise UsageError(f"--sweep '{entry}': use NAME=V1,V2 with NAME one of "
                             f"{', '.join(n.replace('_', '-') for n in sweepable)}")
        if getattr(args, name) is None:
            raise UsageError(f"--sweep {entry}: --{name.replace('_', '-')} is off; set it to sweep it")
        try:
            axes.append([(name, float(v)) for v in values.split(",")])
        except ValueError:
            raise UsageError(f"--sweep '{entry}': values must be numbers separated by commas")
    settings = [dict(combo) for combo in itertools.product(*axes)]
    for setting in settings:
        check(dataclasses.replace(args, **setting))
    return settings


class Experiment(NamedTuple):
    env: object  # training env for all runs
    eval_env: object
    settings: list  # sweep settings; each trains every seed
    seeds: list  # per run (runs are setting-major: every seed of the first setting, then the next)
    run_dirs: list
    loggers: list
    configs: list
    steps_per_log: int  # env steps per seed between logged rows
    num_logs: int
    logs_per_chunk: int  # rows per compiled chunk


def open_experiment(args, settings: list, steps_per_log: int, *, discrete: bool, raw_obs: bool = False,
                    check_spec=None) -> Experiment:
    """What every script does before compiling: JAX settings, training and evaluation envs (their action space
    checked; `check_spec(spec)` for more), and one run per (sweep setting, seed) with its directory and logger.
    Bad input raises UsageError before anything is compiled or written."""
    if args.eval_only and not args.load_model:
        raise UsageError("--eval-only needs --load-model PATH (a model.ckpt written by --save-model)")
    if discrete and args.env_id.startswith("brax/"):
        raise UsageError(f"'{args.env_id}': Brax envs have continuous actions; use ppo_continuous.py or sac.py")
    if args.capture_video and args.env_id.startswith("gymnax/"):
        raise UsageError(f"--capture-video films Gymnasium and Brax envs, not gymnax ('{args.env_id}'); "
                         f"drop the flag or use the Gymnasium id")
    setup_jax()
    if args.capture_video:
        os.environ.setdefault("MUJOCO_GL", "egl")  # MuJoCo renders headless through EGL
    seeds = [args.seed + i for _ in settings for i in range(args.num_seeds)]
    kwargs = dict(normalize_obs=args.normalize_obs, normalize_reward=getattr(args, "normalize_reward", False),
                  gamma=args.gamma, reward_scale=args.reward_scale, asynchronous=args.async_envs,
                  brax_backend=getattr(args, "brax_backend", "generalized"),
                  brax_true_reset=getattr(args, "brax_true_reset", True))
    env = make_env(args.env_id, args.num_envs, num_copies=len(seeds), max_episode_steps=args.max_episode_steps,
                   raw_obs=raw_obs, **kwargs)
    try:
        if env.spec.discrete != discrete:
            raise UsageError(f"'{args.env_id}' has {'discrete' if env.spec.discrete else 'continuous'} actions; this "
                             f"script needs a {'Discrete' if discrete else 'continuous (Box)'} action space: use "
                             f"{'ppo_continuous.py or sac.py' if discrete else 'ppo_discrete.py'}")
        if check_spec is not None:
            check_spec(env.spec)
        if (args.eval_max_episode_steps or env.spec.max_episode_steps) is None:
            raise UsageError(f"'{args.env_id}' has no time limit; pass --eval-max-episode-steps")
        per_run = [setting for setting in settings for _ in range(args.num_seeds)]
        configs = [{**dataclasses.asdict(args), **setting, "seed": seed} for setting, seed in zip(per_run, seeds)]
        exp = args.exp_name + ("-eval" if args.eval_only else "")
        run_dirs, loggers = open_runs(args, [exp + "".join(f"_{k}={v:g}" for k, v in s.items()) for s in per_run],
                                      seeds, configs)
    except UsageError:
        env.close()
        raise
    eval_env = make_env(args.env_id, args.num_eval_envs, num_copies=len(seeds), freeze_stats=True,
                        max_episode_steps=args.eval_max_episode_steps or args.max_episode_steps,
                        video_dir=os.path.join(run_dirs[0], "videos") if args.capture_video else None, **kwargs)
    num_logs = args.total_timesteps // steps_per_log  # chunks of equal length: one compile
    per_chunk = min(max(1, args.eval_every // steps_per_log), -(-num_logs // 20))
    per_chunk = max(d for d in range(1, max(1, min(per_chunk, num_logs)) + 1) if num_logs % d == 0)
    return Experiment(env, eval_env, settings, seeds, run_dirs, loggers, configs, steps_per_log, num_logs, per_chunk)


def open_runs(args, exp_names: list, seeds: list, configs: list) -> tuple:
    """Create (never silently reuse) runs/{env}__{exp}__{seed}__{time} per run and open its logger; beyond
    MAX_RUN_DIRS runs, runs/{env}__{exp}__seeds{first}-{last}__{time} per experiment name."""
    stamp, grouped = int(time.time()), len(seeds) > MAX_RUN_DIRS
    labels = list(seeds)
    if grouped:
        spans = {e: [s for x, s in zip(exp_names, seeds) if x == e] for e in exp_names}
        labels = [f"seeds{min(spans[e])}-{max(spans[e])}" for e in exp_names]
    names = [run_name(args.env_id, exp, label, stamp) for exp, label in zip(exp_names, labels)]
    run_dirs, by_dir = [os.path.join("runs", n) for n in names], {}
    for d, n, label, config in zip(run_dirs, names, labels, configs):
        if d not in by_dir:
            prepare_run_dir(d, args.clear_out)
            logger = RunLogger(d, n, {**config, "seed": label}, args.track, args.wandb_project_name,
                               args.wandb_entity)
            by_dir[d] = MeanLogger(logger) if grouped else logger
    return run_dirs, [by_dir[d] for d in run_dirs]


def train_or_evaluate(args, exp: Experiment, ckpt, init, train_chunk, evaluate, *init_args, donate=None):
    """Compile the vmapped `init(keys, *init_args, params, norm)`, `train_chunk` and `evaluate`, then train
    (printing the final evaluation per sweep setting) or, with --eval-only, evaluate the loaded model."""
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(exp.seeds))
    params, norm = None, None
    if ckpt is not None:
        shapes = jax.eval_shape(init, keys, *init_args, None, None)
        try:
            params, norm = restore(ckpt, shapes.params, shapes.env_state.norm)
        except UsageError:  # nothing ran: leave no empty run directories behind
            for logger in exp.loggers:
                logger.close()
            for run_dir in set(exp.run_dirs):
                shutil.rmtree(run_dir, ignore_errors=True)
            exp.env.close()
            exp.eval_env.close()
            raise
    state = spread_runs(args, jit(init)(keys, *init_args, params, norm), len(exp.seeds))
    train_chunk, evaluate = jit_chunk(train_chunk, donate), jit(evaluate)
    try:
        if args.eval_only:
            returns = evaluate_runs(evaluate, state, exp.seeds, 0, exp.loggers)
            print(f"eval/episodic_return {returns.mean():.2f} over {args.num_eval_envs} episodes per seed")
            for logger in exp.loggers:
                logger.close()
            return
        returns = train_loop(args, exp, state, train_chunk, evaluate)
    finally:
        exp.env.close()
        exp.eval_env.close()
    summarise(exp.settings, args.num_seeds, returns, exp.run_dirs[0] + "_summary.csv")


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
        name = f"model_seed{config['seed']}.ckpt" if shared else "model.ckpt"
        save_checkpoint(os.path.join(d, name), jax.tree.map(lambda x: x[i], params), jax.tree.map(lambda x: x[i], norm),
                        config)


@jax.jit
def finite_runs(params):
    """Per run: are all parameters finite?"""
    return jnp.all(jnp.stack([jnp.isfinite(x).reshape(len(x), -1).all(1) for x in jax.tree.leaves(params)]), 0)


def train_loop(args, exp: Experiment, state, train_chunk, evaluate) -> np.ndarray:
    """Run all chunks, logging every row at global_step = env steps per run; evaluate every args.eval_every
    steps and at the end; returns the last evaluation's mean return per run. Interrupted, crashed or diverged,
    it still flushes the logs and saves the last good state (with --save-model)."""
    loggers, step_size, per_chunk = exp.loggers, exp.steps_per_log, exp.logs_per_chunk
    total = exp.num_logs * step_size
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    progress = Progress(TextColumn("steps"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"))
    task = progress.add_task("train", total=total, info="compiling...")
    progress.start()
    global_step, next_eval, last_return = 0, args.eval_every, float("nan")
    eval_returns = np.full(len(loggers), np.nan)
    completed, saved = None, False  # host copy of (params, norm) after the last good chunk
    start = time.time()
    try:
        for _ in range(exp.num_logs // per_chunk):
            state, metrics = train_chunk(state)
            metrics = jax.device_get(metrics)
            check_interrupted()
            episodes = metrics["episodes"]
            for u in range(per_chunk):
                step = global_step + (u + 1) * step_size
                for i, logger in enumerate(loggers):
                    # NaN marks "not measured in this row" (e.g. SAC losses before learning starts)
                    row = {k: v[i, u] for k, v in metrics.items() if "/" in k and not np.isnan(v[i, u])}
                    if episodes[i, u] > 0:
                        row["charts/episodic_return"] = metrics["return_sum"][i, u] / episodes[i, u]
                        row["charts/episodic_length"] = metrics["length_sum"][i, u] / episodes[i, u]
                    logger.log(step, row)
            diverged = ~np.asarray(finite_runs(state.params))
            if diverged.any():
                i = int(np.argmax(diverged))
                losses = np.stack([v[i] for k, v in metrics.items() if k.startswith("losses/")])
                ok = np.isfinite(losses).all(0)
                bad = np.flatnonzero(~ok & (np.cumsum(ok) > 0))  # NaN before any finite row: not measured yet
                at = global_step + (bad[0] + 1 if bad.size else per_chunk) * step_size
                raise Diverged(f"training diverged at global_step {at} "
                               f"(NaN or inf in the parameters of seed {exp.seeds[i]}); logs up to there are kept"
                               + (f", and the checkpoint of global_step {global_step}" if completed else "")
                               + "; lower the learning rate or check the rewards")
            if args.save_model:  # the state itself may be donated to a chunk that never finishes
                completed, saved = jax.device_get((state.params, state.env_state.norm)), False
            ended = episodes[:, -1] > 0
            if ended.any():
                last_return = float(np.mean(metrics["return_sum"][ended, -1] / episodes[ended, -1]))
            global_step += per_chunk * step_size
            sps = int(global_step / (time.time() - start))
            for logger in loggers:
                logger.log(global_step, {"charts/SPS": sps})
            if global_step >= next_eval or global_step == total:
                next_eval += args.eval_every * max(1, (global_step - next_eval) // args.eval_every + 1)
                eval_returns = evaluate_runs(evaluate, state, exp.seeds, global_step, loggers)
                if completed is not None:
                    save_runs(*completed, exp.run_dirs, exp.configs)
                    saved = True
            for logger in {id(logger): logger for logger in loggers}.values():  # seeds may share one
                logger.flush()
            progress.update(task, completed=global_step,
                            info=f"SPS {sps}  return {last_return:.1f}  eval {np.mean(eval_returns):.1f}")
    finally:
        progress.stop()
        if completed is not None and not saved:  # the end of training was saved with its evaluation
            save_runs(*completed, exp.run_dirs, exp.configs)
        for logger in loggers:
            logger.close()
    print(f"done: {global_step} steps per run in {time.time() - start:.1f}s, final eval return "
          f"{np.mean(eval_returns):.2f} (runs in {os.path.dirname(exp.run_dirs[0])}/)")
    return eval_returns


def summarise(settings: list, num_seeds: int, eval_returns, path: str) -> None:
    """Final evaluation return per sweep setting (mean and std over seeds): printed and written as CSV."""
    from rich.console import Console
    from rich.table import Table

    keys = sorted({k for s in settings for k in s})
    header = [k.replace("_", "-") for k in keys] + ["mean", "std", "seeds"]
    table, rows = Table(*header, title="final eval/episodic_return"), []
    for setting, returns in zip(settings, np.asarray(eval_returns).reshape(len(settings), num_seeds)):
        rows.append([f"{setting[k]:g}" for k in keys] + [f"{returns.mean():.2f}", f"{returns.std():.2f}",
                                                          str(num_seeds)])
        table.add_row(*rows[-1])
    Console().print(table)
    with open(path, "w") as f:
        f.write("\n".join(",".join(row) for row in [header] + rows) + "\n")
