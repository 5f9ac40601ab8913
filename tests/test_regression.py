"""Short fixed-seed runs of every script on every backend it supports, compared value for value with the
metrics recorded in regression_metrics.json. A change meant to keep behaviour must keep these numbers;
a change meant to alter them re-records the file (`python tests/test_regression.py --record`) and says why.
"""
import csv
import glob
import importlib.metadata
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "regression_metrics.json")
# Recorded with requirements.txt's jax. Another jax brings another XLA, which fuses and rounds differently: under
# jax 0.11.2 a SAC loss differed by 1.6e-4 after a few updates, so there the comparison is looser.
with open(os.path.join(ROOT, "requirements.txt")) as f:
    PINNED_JAX = next(line.split("==")[1].strip() for line in f if line.startswith("jax=="))
RTOL = 1e-4 if importlib.metadata.version("jax") == PINNED_JAX else 1e-3

PPO = ["--num-envs", "4", "--num-steps", "32", "--num-minibatches", "4", "--update-epochs", "2",
       "--total-timesteps", "384", "--eval-every", "256", "--num-eval-envs", "2", "--eval-max-episode-steps", "40"]
SAC = ["--num-envs", "2", "--total-timesteps", "400", "--learning-starts", "100", "--batch-size", "32",
       "--buffer-size", "300", "--log-every", "50", "--eval-every", "200", "--num-eval-envs", "2",
       "--eval-max-episode-steps", "40", "--actor-hidden", "32", "32", "--critic-hidden", "32", "32"]
RUNS = {
    "ppo_continuous-gymnasium": ["ppo_continuous.py", "--env-id", "Pendulum-v1", *PPO],
    "ppo_continuous-brax": ["ppo_continuous.py", "--env-id", "brax/inverted_pendulum", "--brax-backend",
                            "positional", "--num-seeds", "2", *PPO],
    "ppo_continuous-gymnax": ["ppo_continuous.py", "--env-id", "gymnax/Pendulum-v1", *PPO],
    "ppo_discrete-gymnasium": ["ppo_discrete.py", "--env-id", "CartPole-v1", "--target-kl", "0.001", *PPO],
    "ppo_discrete-gymnax": ["ppo_discrete.py", "--env-id", "gymnax/CartPole-v1", "--num-seeds", "2", *PPO],
    "sac-gymnasium": ["sac.py", "--env-id", "Pendulum-v1", *SAC],
    "sac-brax": ["sac.py", "--env-id", "brax/inverted_pendulum", "--brax-backend", "positional",
                 "--normalize-obs", *SAC],
    "sac-gymnax": ["sac.py", "--env-id", "gymnax/Pendulum-v1", "--num-seeds", "2", *SAC],
}


def run(name, tmp_path):
    """{run dir name without the time stamp: {metric: [(step, value), ...]}}, wall-clock metrics left out."""
    # recorded on a CPU, compared on one: a GPU's kernels round differently
    out = subprocess.run([sys.executable, os.path.join(ROOT, RUNS[name][0]), "--exp-name", "regression",
                          *RUNS[name][1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "JAX_PLATFORMS": "cpu", "JAX_LOG_COMPILES": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    # the training program compiles once: every chunk's state and row go back in as the chunk returned them
    # (placement over devices, weak types), else the second chunk compiles it again
    compiles = out.stderr.count("Compiling jit(chunk)")
    assert compiles == 1, f"the training program was compiled {compiles} times"
    metrics = {}
    for path in sorted(glob.glob(os.path.join(tmp_path, "runs", "*", "metrics.csv"))):
        run_dir = os.path.basename(os.path.dirname(path)).rsplit("__", 1)[0]
        with open(path) as f:
            for row in csv.DictReader(f):
                if row["metric"] != "charts/SPS":
                    metrics.setdefault(run_dir, {}).setdefault(row["metric"], []).append(
                        [int(row["global_step"]), float(row["value"])])
    return metrics


@pytest.mark.parametrize("name", sorted(RUNS))
def test_same_numbers_as_recorded(name, tmp_path):
    with open(GOLDEN) as f:
        expected = json.load(f)[name]
    got = run(name, tmp_path)
    assert sorted(got) == sorted(expected)
    for run_dir in expected:
        assert sorted(got[run_dir]) == sorted(expected[run_dir]), run_dir
        for metric, rows in expected[run_dir].items():
            # steps equal; values to float32 rounding (a Python constant that became a traced float32 knob
            # rounds differently in the last bit, and a few updates carry that no further than ~1e-5)
            np.testing.assert_array_equal(np.array(got[run_dir][metric])[:, 0], np.array(rows)[:, 0])
            np.testing.assert_allclose(np.array(got[run_dir][metric])[:, 1], np.array(rows)[:, 1], rtol=RTOL,
                                       atol=1e-6, err_msg=f"{run_dir} {metric}")


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile
    recorded = {}
    for name in sorted(RUNS):
        with tempfile.TemporaryDirectory() as tmp:
            recorded[name] = run(name, tmp)
            print(name, sum(len(v) for m in recorded[name].values() for v in m.values()), "values")
    with open(GOLDEN, "w") as f:
        json.dump(recorded, f, indent=0, sort_keys=True)
