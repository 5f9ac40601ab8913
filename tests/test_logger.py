import glob
import os
import pickle
import struct
import types

import jax
import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event

from common.cli import UsageError
from common.envs import NormStats, RunningStats, init_stats
from common.logger import CHECKPOINT_FORMAT, RunLogger, load_checkpoint, restore, save_checkpoint
from conftest import RunsCode, read_metrics


def read_events(run_dir):
    """The events of a TensorBoard file: TFRecords of (length, crc, Event bytes, crc)."""
    (path,) = glob.glob(f"{run_dir}/events.out.tfevents*")
    events, data = [], open(path, "rb").read()
    while data:
        (length,) = struct.unpack("<Q", data[:8])
        events.append(Event.FromString(data[12:12 + length]))
        data = data[12 + length + 4:]
    return events


def test_rows_reach_tensorboard_and_csv(tmp_path):
    logger = RunLogger(str(tmp_path), "run", {"learning_rate": 0.1, "env_id": "CartPole-v1"})
    logger.log(512, {"charts/episodic_return": 20.5, "losses/value_loss": 3})
    logger.log(1024, {"charts/SPS": 1000})
    logger.close()

    scalars = [(e.step, v.tag, v.simple_value) for e in read_events(tmp_path) for v in e.summary.value
               if v.HasField("simple_value")]
    assert scalars == [(512, "charts/episodic_return", 20.5), (512, "losses/value_loss", 3.0),
                       (1024, "charts/SPS", 1000.0)]
    texts = [v.tensor.string_val[0].decode() for e in read_events(tmp_path) for v in e.summary.value
             if v.tag.startswith("hyperparameters")]
    assert texts and "|learning_rate|0.1|" in texts[0]
    assert [(r["global_step"], r["metric"], r["value"]) for r in read_metrics(tmp_path)] == [
        ("512", "charts/episodic_return", "20.5"), ("512", "losses/value_loss", "3.0"),
        ("1024", "charts/SPS", "1000.0")]


def saved_checkpoint(path, config=None):
    """A small checkpoint: params with a list of layers, NormStats, and a config."""
    params = {"actor": [{"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)},
                        {"w": np.full((3, 1), -2.5, np.float32), "b": np.zeros(1, np.float32)}],
              "log_std": np.array([0.25], np.float32)}
    norm = NormStats(RunningStats(np.array([1.0, -1.0], np.float32), np.array([4.0, 0.5], np.float32),
                                  np.float32(7.0)), init_stats(()))
    config = config or {"env_id": "brax/ant", "actor_hidden": [3], "critic_hidden": [5, 5], "activation": "relu",
                        "normalize_obs": False, "seed": 3, "learning_rate": 0.001}
    save_checkpoint(str(path), params, norm, config)
    return params, norm, config


def with_runs(tree, runs):
    """Abstract values with a leading runs axis, as the scripts' `jax.eval_shape` of the vmapped init gives."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((runs,) + np.shape(x), np.asarray(x).dtype), tree)


def test_checkpoint_round_trip_as_state_dicts(tmp_path):
    params, norm, config = saved_checkpoint(tmp_path / "model.ckpt")
    assert os.listdir(tmp_path) == ["model.ckpt"]  # written atomically, no .tmp left behind
    args = types.SimpleNamespace(env_id="Hopper-v4", actor_hidden=(64, 64), activation="tanh", learning_rate=0.5)
    blob = load_checkpoint(str(tmp_path / "model.ckpt"), args)
    assert set(blob) == {"format", "config", "params", "norm"} and blob["format"] == CHECKPOINT_FORMAT
    assert blob["config"] == config
    # the network flags that exist on args come from the checkpoint (as the field's type); nothing else is set
    assert args.env_id == "brax/ant" and args.actor_hidden == (3,) and args.activation == "relu"
    assert args.learning_rate == 0.5 and not hasattr(args, "critic_hidden") and not hasattr(args, "normalize_obs")
    # plain nested state dicts: lists of layers keyed "0", "1", ...; NormStats as {"obs": {...}, "ret": {...}}
    assert set(blob["params"]) == {"actor", "log_std"} and set(blob["params"]["actor"]) == {"0", "1"}
    np.testing.assert_array_equal(blob["params"]["actor"]["0"]["w"], params["actor"][0]["w"])
    assert set(blob["norm"]) == {"obs", "ret"} and set(blob["norm"]["obs"]) == {"mean", "var", "count"}
    np.testing.assert_array_equal(blob["norm"]["obs"]["var"], [4.0, 0.5])

    # restore into templates with a leading runs axis (as the scripts' eval_shape gives them)
    got_params, got_norm = restore(blob, with_runs(params, 2), with_runs(norm, 2))
    assert isinstance(got_params["actor"], list) and isinstance(got_norm, NormStats)
    assert jax.tree.structure((got_params, got_norm)) == jax.tree.structure((params, norm))
    for got, saved in zip(jax.tree.leaves((got_params, got_norm)), jax.tree.leaves((params, norm))):
        np.testing.assert_array_equal(got, saved)


def test_restore_refuses_another_network(tmp_path):
    params, norm, _ = saved_checkpoint(tmp_path / "model.ckpt")
    blob = load_checkpoint(str(tmp_path / "model.ckpt"), types.SimpleNamespace())
    wider = {**params, "actor": [{"w": np.zeros((2, 4)), "b": np.zeros(4)}, params["actor"][1]]}
    with pytest.raises(UsageError, match="do not have this network's shapes"):
        restore(blob, with_runs(wider, 1), with_runs(norm, 1))
    other = {"actor": params["actor"], "critic": params["actor"], "log_std": params["log_std"]}
    with pytest.raises(UsageError, match="does not fit this script's network"):
        restore(blob, with_runs(other, 1), with_runs(norm, 1))


def crafted_pickles(tmp_path):
    """(pickle path, marker path that unpickling it would create) for two kinds of payload."""
    out = []
    for name, make in [("open", lambda m: RunsCode(open, str(m), "w")),
                       ("system", lambda m: RunsCode(os.system, f"touch {m}"))]:
        marker = tmp_path / f"marker_{name}"
        path = tmp_path / f"{name}.ckpt"
        with open(path, "wb") as f:  # shaped like the old pickled checkpoints
            pickle.dump({"params": make(marker), "norm": None, "config": {"env_id": "Pendulum-v1"}}, f)
        out.append((path, marker))
    return out


def test_a_crafted_pickle_is_refused_without_running_its_code(tmp_path):
    for path, marker in crafted_pickles(tmp_path):
        with pytest.raises(UsageError, match=f"model file '{path}' is not a checkpoint written by --save-model"):
            load_checkpoint(str(path), types.SimpleNamespace(env_id="x"))
        assert not marker.exists()
        with open(path, "rb") as f:  # the payload is live: unpickling the same file does create the marker
            pickle.load(f)
        assert marker.exists()


@pytest.mark.parametrize("kind", ["random", "empty", "truncated", "text", "msgpack without header",
                                  "bad config", "directory"])
def test_anything_but_a_checkpoint_is_a_usage_error(tmp_path, kind):
    path = tmp_path / "model.ckpt"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        saved_checkpoint(tmp_path / "whole.ckpt")
        data = (tmp_path / "whole.ckpt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("env_id: Hopper-v4\n")
    elif kind == "msgpack without header":
        from flax import serialization
        path.write_bytes(serialization.msgpack_serialize({"params": {"w": np.ones(3)}, "config": "{}"}))
    elif kind == "bad config":
        from flax import serialization
        path.write_bytes(serialization.msgpack_serialize({"format": CHECKPOINT_FORMAT, "config": "{not json",
                                                          "params": {}, "norm": {}}))
    else:
        path.mkdir()
    args = types.SimpleNamespace(env_id="Hopper-v4")
    with pytest.raises(UsageError, match=f"model file '{path}' is not a checkpoint written by --save-model") as e:
        load_checkpoint(str(path), args)
    assert "\n" not in str(e.value) and args.env_id == "Hopper-v4"


def test_missing_checkpoint():
    with pytest.raises(UsageError, match="model file 'nope.ckpt' not found"):
        load_checkpoint("nope.ckpt", types.SimpleNamespace())
