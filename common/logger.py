"""Run directories, metric logging (TensorBoard, CSV, optional wandb) and checkpoints."""
import csv
import json
import os
import shutil
import socket
import time

import jax
import numpy as np
from flax import serialization
from tensorboardX import FileWriter
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.summary import text

from common.cli import UsageError

CHECKPOINT_FORMAT = "jax-rl checkpoint 1"
# flags that shape the network and its inputs: --load-model takes them from the checkpoint
MODEL_FLAGS = ("env_id", "actor_hidden", "critic_hidden", "critic_layer_norm", "activation", "normalize_obs")


# More runs than this share one directory per experiment name, logging the mean over their seeds.
MAX_RUN_DIRS = 64


def open_runs(args, exp_names: list, seeds: list, configs: list) -> tuple:
    """Create (never silently reuse) runs/{env}__{exp}__{seed}__{time} per run and open its logger; beyond
    MAX_RUN_DIRS runs, runs/{env}__{exp}__seeds{first}-{last}__{time} per experiment name, whose one logger the
    runs share (the runner logs the mean over them)."""
    stamp, grouped = int(time.time()), len(seeds) > MAX_RUN_DIRS
    labels = list(seeds)
    if grouped:
        spans = {e: [s for x, s in zip(exp_names, seeds) if x == e] for e in exp_names}
        labels = [f"seeds{min(spans[e])}-{max(spans[e])}" for e in exp_names]
    names = [f"{args.env_id.replace('/', '_')}__{exp}__{label}__{stamp}" for exp, label in zip(exp_names, labels)]
    run_dirs, by_dir = [os.path.join("runs", n) for n in names], {}
    for d, n, label, config in zip(run_dirs, names, labels, configs):
        if d in by_dir:
            continue
        if os.path.exists(d):  # a new run is never mixed into an existing directory
            if not args.clear_out:
                raise UsageError(f"run directory '{d}' already exists; pass --clear-out to replace it "
                                 f"or change --exp-name")
            shutil.rmtree(d)
        os.makedirs(d)
        by_dir[d] = RunLogger(d, n, {**config, "seed": label}, args.track, args.wandb_project_name,
                              args.wandb_entity)
    return run_dirs, [by_dir[d] for d in run_dirs]


def _wandb_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


class RunLogger:
    """Writes every metric to TensorBoard and `metrics.csv` (long format) in the run directory, one TensorBoard
    event per row. The training loop flushes after every chunk and on close, so an interrupted run keeps what
    it logged."""

    def __init__(self, path: str, name: str, config: dict, track: bool = False,
                 wandb_project: str = "cleanRL", wandb_entity: str | None = None):
        self.path = path
        self.wandb = None
        if track:
            import wandb
            mode = os.environ.get("WANDB_MODE")
            if mode is None:
                mode = "online" if _wandb_reachable() else "offline"
                if mode == "offline":
                    print("wandb: service unreachable, logging offline (sync later with `wandb sync`)")
            self.wandb = wandb.init(project=wandb_project, entity=wandb_entity, name=name, config=config,
                                    dir=path, mode=mode, save_code=True, reinit="create_new",
                                    settings=wandb.Settings(init_timeout=30))
            self.wandb.define_metric("*", step_metric="global_step")
        self.writer = FileWriter(path, max_queue=100_000)  # its default of 10 queued events blocked log()
        self.writer.add_summary(text("hyperparameters", "|param|value|\n|-|-|\n" +
                                     "\n".join(f"|{k}|{v}|" for k, v in config.items())), 0)
        new = not os.path.exists(os.path.join(path, "metrics.csv"))
        self.csv_file = open(os.path.join(path, "metrics.csv"), "a", newline="")
        self.csv = csv.writer(self.csv_file)
        if new:
            self.csv.writerow(["global_step", "metric", "value", "wall_time"])

    def log(self, step: int, metrics: dict) -> None:
        now, values = time.time(), {k: float(v) for k, v in metrics.items()}
        self.writer.add_summary(Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()]),
                                step, walltime=now)
        self.csv.writerows([step, k, v, round(now, 3)] for k, v in values.items())
        if self.wandb is not None:
            self.wandb.log({**values, "global_step": step})

    def flush(self) -> None:
        self.writer.flush()
        self.csv_file.flush()

    def close(self) -> None:  # runs that share this logger each close it: the first call does it
        if not self.csv_file.closed:
            self.writer.close()
            self.csv_file.close()
            if self.wandb is not None:
                self.wandb.finish()


def save_checkpoint(path: str, params, norm, config: dict) -> None:
    """Parameters and normalisation statistics (msgpack, flax's serialisation) with the config as JSON: data
    only, unlike a pickle, which runs whatever code it holds when loaded. Written atomically."""
    blob = {"format": CHECKPOINT_FORMAT, "config": json.dumps(config),
            "params": serialization.to_state_dict(jax.tree.map(np.asarray, params)),
            "norm": serialization.to_state_dict(jax.tree.map(np.asarray, norm))}
    with open(path + ".tmp", "wb") as f:
        f.write(serialization.msgpack_serialize(blob))
    os.replace(path + ".tmp", path)


def load_checkpoint(path: str, args) -> dict:
    """Read a checkpoint written by --save-model, refusing anything else, and set `args`' MODEL_FLAGS to the
    saved ones, so the network and env match the parameters. Returns {"params", "norm", "config"}, the first
    two as state dicts for `restore`."""
    try:
        with open(path, "rb") as f:
            blob = serialization.msgpack_restore(f.read())
        if not (isinstance(blob, dict) and blob.get("format") == CHECKPOINT_FORMAT):
            raise ValueError("no checkpoint header")
        blob["config"] = json.loads(blob["config"])
    except FileNotFoundError:
        raise UsageError(f"model file '{path}' not found; pass the path of a saved model (runs/NAME/model.ckpt)")
    except Exception as e:  # msgpack, JSON or header: whatever the file holds, it is not run
        raise UsageError(f"model file '{path}' is not a checkpoint written by --save-model ({type(e).__name__}: "
                         f"{str(e)[:80]}); pass a model.ckpt from runs/")
    for name in MODEL_FLAGS:
        if hasattr(args, name) and name in blob["config"]:
            setattr(args, name, type(getattr(args, name))(blob["config"][name]))
    return blob


def restore(blob: dict, params, norm):
    """The checkpoint's parameters and statistics in the structure of `params` and `norm` (abstract values with a
    leading runs axis will do); a mismatch is a usage error."""
    try:
        out = (serialization.from_state_dict(params, blob["params"]), serialization.from_state_dict(norm, blob["norm"]))
        ok = jax.tree.map(lambda x, t: np.shape(x) == tuple(t.shape[1:]), out, (params, norm))
    except (KeyError, ValueError, TypeError) as e:
        raise UsageError(f"the model file does not fit this script's network ({e}); load it with the script "
                         f"that saved it")
    if not all(jax.tree.leaves(ok)):
        raise UsageError("the model file's arrays do not have this network's shapes; load it with the script and "
                         "flags that saved it")
    return out
