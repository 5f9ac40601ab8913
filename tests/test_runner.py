import csv
import types

import jax
import jax.numpy as jnp
import numpy as np

from common import runner
from common.envs import NormStats, init_stats
from common.logger import load_checkpoint


def args(**kw):
    return types.SimpleNamespace(env_id="gymnax/CartPole-v1", clear_out=False, track=False,
                                 wandb_project_name="p", wandb_entity=None, **kw)


def rows(run_dir):
    with open(f"{run_dir}/metrics.csv") as f:
        return [(int(r["global_step"]), r["metric"], float(r["value"])) for r in csv.DictReader(f)]


def test_few_runs_get_a_directory_each(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dirs, loggers = runner.open_runs(args(), ["a", "a"], [1, 2], [{"seed": 1}, {"seed": 2}])
    assert len(set(run_dirs)) == 2 and loggers[0] is not loggers[1]
    for logger in loggers:
        logger.close()


def test_many_runs_share_one_directory_per_experiment_and_log_means(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    n = runner.MAX_RUN_DIRS + 1
    exps, seeds = ["lr=1"] * n + ["lr=2"] * n, list(range(1, n + 1)) * 2
    run_dirs, loggers = runner.open_runs(args(), exps, seeds, [{"seed": s} for s in seeds])
    assert len(set(run_dirs)) == 2 and run_dirs[0].split("__")[2] == f"seeds1-{n}"
    for step in (10, 20):  # as the host loop does: every run in turn, then SPS at the same step
        for i, logger in enumerate(loggers):
            logger.log(step, {"losses/x": i % n + step, **({"charts/episodic_return": 5.0} if i == 0 else {})})
        for logger in loggers:
            logger.log(step, {"charts/SPS": 100})
    for logger in loggers:
        logger.close()
    mean = np.mean(np.arange(n))
    assert rows(run_dirs[0]) == [(10, "losses/x", mean + 10), (10, "charts/episodic_return", 5.0),
                                 (10, "charts/SPS", 100.0), (20, "losses/x", mean + 20),
                                 (20, "charts/episodic_return", 5.0), (20, "charts/SPS", 100.0)]
    assert [r[1] for r in rows(run_dirs[-1])] == ["losses/x", "charts/SPS"] * 2

    norm = jax.tree.map(lambda x: jnp.broadcast_to(x, (2 * n,) + x.shape),
                        NormStats(init_stats((1,)), init_stats(())))
    runner.save_runs({"w": jnp.arange(2 * n, dtype=jnp.float32)}, norm, run_dirs, [{"seed": s} for s in seeds])
    ckpt = load_checkpoint(f"{run_dirs[-1]}/model_seed{n}.ckpt")  # last seed of the second experiment
    assert ckpt["params"]["w"] == 2 * n - 1 and ckpt["config"]["seed"] == n
    assert len(list((tmp_path / run_dirs[0]).glob("model_seed*.ckpt"))) == n


def test_donated_chunk_accepts_a_state_that_shares_arrays():
    # a Brax state shares arrays (its obs is also the script's obs); XLA refuses to donate one twice
    chunk = runner.jit_chunk(lambda s: (jax.tree.map(lambda x: x + 1, s), None), donate=True)
    shared = jnp.ones(3)
    state, _ = chunk({"obs": shared, "inner": {"obs": shared}})
    np.testing.assert_array_equal(state["inner"]["obs"], [2, 2, 2])
