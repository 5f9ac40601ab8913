"""The host side of training, shared by the algorithm scripts: JAX settings, the run setup (envs, sweeps, run
directories) and the loop around the compiled training program, with logging, evaluation and checkpoints.

A script gives `iteration(state) -> (state, metrics)`, vmapped over runs, where metric keys containing "/"
are logged as they are and `episodes`, `return_sum`, `length_sum`, `return_min`, `return_max` describe the
episodes that ended;
`evaluate(params, norm, keys) -> returns` of shape (runs, eval envs); the state has `.params` and
`.env_state.norm`. Each logged row averages `iterations_per_row` iterations (episode counts and returns are
summed, their extremes kept).
"""
import dataclasses
import itertools
import os
import shutil
import sys
import threading
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from common.cli import STOP, TRAINING, Diverged, UsageError, _on_quit
from common.envs import make_env
from common.logger import open_runs, restore, save_checkpoint

# A compiled chunk runs about this long (seconds): progress, logs and Ctrl-C are handled between chunks.
CHUNK_SECONDS = 5.0
SUMMED = ("episodes", "return_sum", "length_sum")
EXTREMES = {"return_min": jnp.minimum, "return_max": jnp.maximum}


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


def jit_chunk(chunk, donate: bool | None = None):
    """Compile `chunk(state, *rest)`; donated (by default on accelerators), its state is updated in place. The
    state goes in strongly typed, as every chunk returns it, so the first chunk's program serves the rest."""
    donate = jax.default_backend() != "cpu" if donate is None else donate
    compiled = jit(chunk, donate_argnums=(0,) if donate else ())

    def unalias(state):  # XLA refuses to donate one array twice; Brax states share arrays (e.g. obs)
        seen = set()
        return jax.tree.map(lambda x: jnp.copy(x) if id(x) in seen else (seen.add(id(x)), x)[1], state)

    return lambda state, *rest: compiled(unalias(strong_types(state)) if donate else strong_types(state), *rest)


def compile_aside(jitted, *args):
    """Compile `jitted` for arguments shaped like `args` on a host thread while the caller goes on (the
    evaluation program compiles while training runs); the returned function waits for it, then calls it.
    Whatever goes wrong ahead (arguments placed otherwise at the call, say), the plain jitted call serves."""
    done = {"compiled": jitted}
    try:  # shapes and placements now: the arrays themselves may be donated to training by the time it lowers
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,  # placed as x is, if x was placed
                                                             sharding=x.sharding if x.committed else None), args)
    except (AttributeError, TypeError, ValueError):
        return jitted

    def work():
        try:
            done["compiled"] = jitted.lower(*shapes).compile()
        except Exception:  # the plain jitted call then compiles (and reports any real error) itself
            pass

    # not a daemon: an exit (an error, a divergence) waits for the compile rather than tearing XLA down under
    # it; a signal quits at once through os._exit (common.cli)
    thread = threading.Thread(target=work)
    thread.start()

    def call(*call_args):
        thread.join()
        try:
            return done["compiled"](*call_args)
        except (TypeError, ValueError):  # placed or shaped otherwise than foreseen: compile for these
            if done["compiled"] is jitted:
                raise
            done["compiled"] = jitted
            return jitted(*call_args)

    return call


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


class Row(NamedTuple):
    """A logged row while it fills: sums and counts of the measured (non-NaN) metric values, iterations so far."""
    sums: dict
    counts: dict
    iterations: jax.Array


def make_chunk(iteration, iterations_per_row: int, max_rows: int):
    """`chunk(state, row, n) -> (state, row, rows, rows_done, diverged_at)`: `n` iterations (an argument, so
    chunks of any length share one compiled program), their metrics averaged into rows[:rows_done] per
    `iterations_per_row` iterations, NaNs ("not measured") left out; `row` carries a row that is still filling
    across chunks. `diverged_at` is the first iteration (from 1) after which a parameter was NaN or inf, else 0."""
    def add(row, metrics):
        sums, counts = {}, {}
        for k, m in metrics.items():
            m, total, count = m.astype(jnp.float32), row.sums[k], row.counts[k]
            if k in SUMMED:
                sums[k], counts[k] = total + m, count + 1
            elif k in EXTREMES:  # the smallest / largest over the row's iterations in which an episode ended
                measured = jnp.isfinite(m)
                sums[k] = jnp.where(measured, jnp.where(count > 0, EXTREMES[k](total, m), m), total)
                counts[k] = count + measured
            else:
                measured = ~jnp.isnan(m)
                sums[k], counts[k] = total + jnp.where(measured, m, 0), count + measured
        return Row(sums, counts, row.iterations + 1)

    def chunk(state, row, n):
        def body(carry):
            i, state, row, rows, done, diverged_at = carry
            state, metrics = iteration(state)
            row = add(row, metrics)
            means = {k: row.sums[k] if k in SUMMED else
                     jnp.where(row.counts[k] > 0, row.sums[k], jnp.nan) if k in EXTREMES else
                     row.sums[k] / row.counts[k] for k in rows}
            rows = {k: rows[k].at[done].set(means[k]) for k in rows}  # rewritten until the row is full
            full = row.iterations == iterations_per_row
            row = jax.tree.map(lambda x: jnp.where(full, 0, x), row)
            finite = jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(state.params)]).all()
            diverged_at = jnp.where((diverged_at == 0) & ~finite, i + 1, diverged_at)
            return i + 1, state, row, rows, done + full, diverged_at

        rows = jax.tree.map(lambda x: jnp.zeros((max_rows, *x.shape), jnp.float32), row.sums)
        _, state, row, rows, done, diverged_at = jax.lax.while_loop(lambda c: c[0] < n, body,
                                                                    (0, state, row, rows, 0, 0))
        return strong_types(state), row, rows, done, diverged_at

    return chunk


def strong_types(tree):
    """`tree` with weakly typed leaves made strong. Envs start or step some from Python scalars (gymnax's
    Pendulum, Brax's rewards); a chunk's state that went in with other types than it came out with would
    compile the training program again."""
    return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype) if getattr(x, "weak_type", False)
                        else x, tree)


def empty_row(iteration, state) -> Row:
    """The `row` argument of a chunk before its first iteration."""
    zeros = jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.float32), jax.eval_shape(iteration, state)[1])
    return Row(zeros, zeros, jnp.int32(0))


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
    if "gamma" in settings[0] and getattr(args, "normalize_reward", False):
        raise UsageError("--sweep gamma with --normalize-reward: the reward scale's discount is one for all runs; "
                         "pass --no-normalize-reward or sweep another knob")
    return settings


class Experiment(NamedTuple):
    env: object  # training env for all runs
    eval_env: object
    settings: list  # sweep settings; each trains every seed
    seeds: list  # per run (runs are setting-major: every seed of the first setting, then the next)
    run_dirs: list
    loggers: list
    configs: list
    steps_per_iteration: int  # env steps per run
    iterations_per_row: int  # iterations per logged row
    num_rows: int  # logged rows in the whole run


def open_experiment(args, settings: list, steps_per_iteration: int, iterations_per_row: int = 1, *,
                    discrete: bool, raw_obs: bool = False, check_spec=None) -> Experiment:
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
                  brax_true_reset=getattr(args, "brax_true_reset", True),
                  gymnasium_stats=getattr(args, "gymnasium_norm_stats", False))
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
    num_rows = args.total_timesteps // (steps_per_iteration * iterations_per_row)
    return Experiment(env, eval_env, settings, seeds, run_dirs, loggers, configs, steps_per_iteration,
                      iterations_per_row, num_rows)


def train_or_evaluate(args, exp: Experiment, ckpt, init, iteration, evaluate, *init_args, donate=None):
    """Compile the vmapped `init(keys, *init_args, params, norm)`, `iteration` and `evaluate`, then train
    (printing the final evaluation per sweep setting) or, with --eval-only, evaluate the loaded model."""
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(exp.seeds))
    try:
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
                raise
        state = spread_runs(args, jit(init)(keys, *init_args, params, norm), len(exp.seeds))
        max_rows = min(exp.num_rows, 256,
                       max(1, -(-args.eval_every // (exp.steps_per_iteration * exp.iterations_per_row))))
        chunk = jit_chunk(make_chunk(iteration, exp.iterations_per_row, max_rows), donate)
        evaluate = jit(evaluate)
        if args.eval_only:
            returns = evaluate_runs(evaluate, state, exp.seeds, 0, logger_groups(exp.loggers))
            print(f"eval/episodic_return {returns.mean():.2f} over {args.num_eval_envs} episodes per seed")
            for logger in exp.loggers:
                logger.close()
            return
        evaluate = compile_aside(evaluate, state.params, state.env_state.norm, eval_keys(exp.seeds, 0))
        row = spread_runs(args, empty_row(iteration, state), len(exp.seeds))  # placed as the chunks return it
        returns = train_loop(args, exp, state, row, max_rows, chunk, evaluate)
    finally:
        exp.env.close()
        exp.eval_env.close()
    summarise(exp.settings, args.num_seeds, returns, exp.run_dirs[0] + "_summary.csv")


def eval_keys(seeds, step: int) -> jax.Array:
    return jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds) + 10_000 + step)  # fresh keys per evaluation


def evaluate_runs(evaluate, state, seeds, step: int, groups) -> np.ndarray:
    """Evaluate every run (fresh keys per evaluation), log eval/episodic_return; mean return per run."""
    returns = np.asarray(evaluate(state.params, state.env_state.norm, eval_keys(seeds, step)))
    means, stds = returns.mean(axis=1), returns.std(axis=1)
    for logger, runs in groups:  # the mean over runs sharing a logger; a NaN stays (log_row would drop it)
        logger.log(step, {"eval/episodic_return": means[runs].mean(dtype=np.float64),
                          "eval/episodic_return_std": stds[runs].mean(dtype=np.float64)})
    return means


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


def logger_groups(loggers: list) -> list:
    """[(logger, [run index, ...])] per distinct logger, in order (beyond MAX_RUN_DIRS seeds share one)."""
    groups = {}
    for i, logger in enumerate(loggers):
        groups.setdefault(id(logger), (logger, []))[1].append(i)
    return list(groups.values())


def row_metrics(rows: dict, u: int) -> dict:
    """Row u's metrics, {name: value per run}, NaN where a run has none (not measured, or no episode ended)."""
    episodes = rows["episodes"][u]
    ended = episodes > 0
    metrics = {k: v[u] for k, v in rows.items() if "/" in k}
    with np.errstate(invalid="ignore", divide="ignore"):
        metrics["charts/episodic_return"] = np.where(ended, rows["return_sum"][u] / episodes, np.nan)
        metrics["charts/episodic_length"] = np.where(ended, rows["length_sum"][u] / episodes, np.nan)
    metrics["charts/episodes"] = np.where(ended, episodes, np.nan)
    for k in EXTREMES:  # NaN also where no episode's return was finite
        metrics[f"charts/episodic_{k}"] = np.where(ended, rows[k][u], np.nan)
    return metrics


def log_row(groups: list, step: int, metrics: dict) -> None:
    """Log one row: a run with its own logger gets its values; runs sharing one get, per metric, the mean over
    the runs that have it (one call per logger, however many seeds: with thousands the host loop stays short)."""
    for logger, runs in groups:
        values = {}
        for k, v in metrics.items():
            v = v[runs].astype(np.float64)  # a lone run's value as it is
            if not np.isnan(v).all():
                values[k] = np.mean(v[~np.isnan(v)])
        logger.log(step, values)


def train_loop(args, exp: Experiment, state, row, max_rows: int, chunk, evaluate) -> np.ndarray:
    """Run the iterations in chunks of about CHUNK_SECONDS, logging every row at global_step = env steps per run,
    evaluating at the first row end at or past every args.eval_every steps and at the end; returns the last
    evaluation's mean return per run. Stopped (Ctrl-C, SIGTERM), crashed or diverged, it keeps the logs and
    saves the last good state (with --save-model)."""
    loggers, per_row, step_size = exp.loggers, exp.iterations_per_row, exp.steps_per_iteration
    row_steps, total = step_size * per_row, exp.num_rows * step_size * per_row
    progress = Progress(total)
    global_step, next_eval, last_return = 0, args.eval_every, float("nan")
    eval_returns = np.full(len(loggers), np.nan)
    completed, saved = None, False  # host copy of (params, norm) after the last good chunk, and its step
    target, iterations, start = 1, 0, time.time()  # iterations per chunk (grown to ~CHUNK_SECONDS), done so far
    first_chunk = float("nan")
    host = threading.RLock()  # held while the loop writes; a signal's deadline (common.cli) writes under it too
    groups = logger_groups(loggers)

    def write_what_is_complete():
        with host:
            if completed is not None and not saved:
                save_runs(*completed[:2], exp.run_dirs, exp.configs)
            for logger in loggers:
                logger.close()

    _on_quit.append(write_what_is_complete)
    TRAINING.set()
    try:
        while global_step < total and not STOP.is_set():
            rows_left = min(-(-(next_eval - global_step) // row_steps), (total - global_step) // row_steps, max_rows)
            n = min(target, rows_left * per_row - iterations % per_row)  # no further than the next evaluation
            began = time.time()
            state, row, rows, done, diverged_at = chunk(state, row, n)
            rows, done, diverged_at = jax.device_get((rows, done, diverged_at))
            done, diverged_at = int(done), int(diverged_at)  # Python ints: step counts pass 2**31 / 100
            elapsed = time.time() - began
            first_chunk = elapsed if iterations == 0 else first_chunk  # one iteration, and the compile
            host.acquire()
            if diverged_at:  # log the rows up to the one that ends with the iteration that diverged, no further
                at = (iterations + diverged_at) * step_size
                done = min(done, (at - global_step) // row_steps)
            episodes = rows["episodes"]
            for u in range(done):
                log_row(groups, global_step + (u + 1) * row_steps, row_metrics(rows, u))
            if diverged_at:
                bad = ~np.asarray(finite_runs(state.params))
                seed = f"seed {exp.seeds[int(np.argmax(bad))]}" if bad.any() else "a seed"
                raise Diverged(f"training diverged at global_step {at} (NaN or inf in the parameters of {seed}); "
                               f"logs up to there are kept" + (f", and the checkpoint of global_step {completed[2]}"
                                                               if completed else "")
                               + "; lower the learning rate or check the rewards")
            iterations += n
            if args.save_model:  # the state itself may be donated to a chunk that never finishes
                completed = (*jax.device_get((state.params, state.env_state.norm)), iterations * step_size)
                saved = False
            ended = episodes[done - 1] > 0 if done else np.zeros(len(loggers), bool)
            if ended.any():
                last_return = float(np.mean(rows["return_sum"][done - 1, ended] / episodes[done - 1, ended]))
            global_step += done * row_steps
            sps = int(global_step / (time.time() - start))
            for logger, _ in groups if done else []:
                logger.log(global_step, {"charts/SPS": sps})
            if (global_step >= next_eval or global_step == total) and not STOP.is_set():
                next_eval += args.eval_every * max(1, (global_step - next_eval) // args.eval_every + 1)
                eval_returns = evaluate_runs(evaluate, state, exp.seeds, global_step, groups)
                if completed is not None:
                    save_runs(*completed[:2], exp.run_dirs, exp.configs)
                    saved = True
            for logger, _ in groups:
                logger.flush()
            progress.update(global_step, sps, last_return, np.mean(eval_returns))
            host.release()
            # the chunk's measured rate sets the next one's length (the first chunk also compiled: it stays short)
            target = max(1, min(4 * target, int(n * CHUNK_SECONDS / max(elapsed, 1e-3))))
    finally:
        host.acquire()  # this thread may hold it already; a signal's deadline may be writing
        progress.close()
        if completed is not None and not saved:  # the end of training was saved with its evaluation
            save_runs(*completed[:2], exp.run_dirs, exp.configs)
            saved = True
        for logger in loggers:
            logger.close()
        TRAINING.clear()
    if global_step < total:  # stopped by a signal
        raise KeyboardInterrupt
    print(f"done: {global_step} steps per run in {time.time() - start:.1f}s (the first iteration, with the "
          f"compile, {first_chunk:.1f}s), final eval return {np.mean(eval_returns):.2f} "
          f"(runs in {os.path.dirname(exp.run_dirs[0])}/)")
    return eval_returns


class Progress:
    """Steps, SPS, the latest training and evaluation returns and the time left: a live bar on a terminal,
    else (a log file, `nohup`) a plain line about every 15 seconds."""

    def __init__(self, total: int):
        self.total, self.start, self.last_line = total, time.time(), 0.0
        self.bar = None
        if sys.stdout.isatty():
            from rich import progress as rp
            self.bar = rp.Progress(rp.TextColumn("steps"), rp.BarColumn(), rp.MofNCompleteColumn(),
                                   rp.TimeRemainingColumn(), rp.TextColumn("{task.fields[info]}"))
            self.task = self.bar.add_task("train", total=total, info="compiling...")
            self.bar.start()
        else:
            print(f"step 0/{total:,}  compiling...", flush=True)

    def update(self, step: int, sps: int, train_return: float, eval_return: float) -> None:
        step, info = int(step), f"SPS {sps}  return {train_return:.1f}  eval {eval_return:.1f}"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif time.time() - self.last_line >= 15 or step == self.total:
            self.last_line = time.time()
            eta = (time.time() - self.start) * (self.total - step) / step if step else None
            print(f"step {step:,}/{self.total:,} ({100 * step / self.total:.0f}%)  {info}  "
                  f"ETA {f'{int(eta // 60)}m{int(eta % 60):02d}s' if step else '?'}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


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
