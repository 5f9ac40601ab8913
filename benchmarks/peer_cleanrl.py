"""Run one of CleanRL's own scripts on this machine, seed by seed, and summarise it with Open RL Benchmark's metric,
so that a preset's spread over seeds can be set beside CleanRL's own spread on the same machine and env versions.

    python benchmarks/peer_cleanrl.py --script ../cleanrl/cleanrl/ppo_continuous_action.py \
        --python ../cleanrl-venv/bin/python --env-id HalfCheetah-v4 --seeds 1 2 3 4 --parallel 2

CleanRL is not part of this repository: check out the commit that Open RL Benchmark's runs used (tag pr-424,
35896b1) and give it a venv with that commit's pins (gymnasium 0.28.1, mujoco 2.3.3, numpy 1.24.4, tyro 0.5.10,
tensorboard, imageio; torch 1.12.1 there, which has no Python 3.11 wheel, so a newer CPU torch). Each seed runs in
its own process with one thread, `--parallel` at a time, logging to runs/peers/<script>_<env>/seed<k>.log; a seed
that exited cleanly before is skipped, so the same command resumes. Per seed the metric is the mean of the last 100
`episodic_return=` values the script prints; over seeds, mean ± population std. The summary (the command,
versions, hardware, date and each seed's figures) is written to docs/results/peers/<script>_<env>.json.
"""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

from report import mean_std
from run_baselines import ROOT, Parser, hardware, read_json, write_json

EPISODE = re.compile(r"global_step=(\d+), episodic_return=\[?([-+0-9.eE]+)\]?")
SPS = re.compile(r"^SPS: (\d+)", re.M)
VERSIONS = """import importlib.metadata as m
def version(package):
    try:
        return m.version(package)
    except m.PackageNotFoundError:
        return "-"
print(", ".join(f"{p} {version(p)}" for p in ("torch", "gymnasium", "mujoco", "numpy")))"""


def read_log(text: str, n: int = 100) -> dict:
    """One seed's figures from the script's output: the mean return of its last n episodes, the episodes it
    finished, the last step one ended at and the last SPS it printed."""
    episodes = [(int(step), float(ret)) for step, ret in EPISODE.findall(text)]
    returns = np.array([ret for _, ret in episodes])
    sps = SPS.findall(text)
    return {"last_100": float(returns[-n:].mean()) if len(returns) else float("nan"), "episodes": len(returns),
            "last_episode_step": episodes[-1][0] if episodes else 0, "sps": int(sps[-1]) if sps else None}


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--script", required=True, help="CleanRL's script, e.g. cleanrl/ppo_continuous_action.py")
    p.add_argument("--python", required=True, help="the interpreter of a venv holding CleanRL's pins")
    p.add_argument("--env-id", required=True, help="the env to train on")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="the seeds to run")
    p.add_argument("--parallel", type=int, default=1, help="seeds run at once, one thread each")
    p.add_argument("--source", default="", help="where the script comes from, kept in the summary (commit)")
    p.add_argument("--summarise", action="store_true", help="only summarise the seeds already run")
    p.add_argument("--runs", default=os.path.join(ROOT, "runs", "peers"), help="where the seeds' logs go")
    p.add_argument("--summaries", default=os.path.join(ROOT, "docs", "results", "peers"), help="where the summary goes")
    args = p.parse_args(argv)
    for path, what in ((args.script, "--script"), (args.python, "--python")):
        if not os.path.isfile(path):
            print(f"error: {what} {path} is not a file; give the path of CleanRL's script and of its venv's python",
                  file=sys.stderr)
            return 2
    if args.parallel < 1:
        print("error: --parallel must be at least 1", file=sys.stderr)
        return 2
    name = f"{os.path.splitext(os.path.basename(args.script))[0]}_{args.env_id}"
    out = os.path.join(args.runs, name)
    os.makedirs(out, exist_ok=True)
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def command(seed):  # CleanRL's flags: the env, the seed, no GPU, the run's name
        return [args.python, os.path.abspath(args.script), "--env-id", args.env_id, "--seed", str(seed),
                "--no-cuda", "--exp-name", name]

    todo = [] if args.summarise else [s for s in args.seeds if not os.path.exists(os.path.join(out, f"seed{s}.done"))]
    running = {}
    # SIGTERM (and SIGINT where a shell started this in the background, which ignores Ctrl-C) stop it as Ctrl-C does
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while todo or running:
            while todo and len(running) < args.parallel:
                seed = todo.pop(0)
                log = open(os.path.join(out, f"seed{seed}.log"), "w")
                running[seed] = (subprocess.Popen(command(seed), cwd=out, stdout=log, stderr=subprocess.STDOUT,
                                                  env=environ), log, time.time())
                print(f"seed {seed}: started", flush=True)
            time.sleep(1)
            for seed, (process, log, began) in list(running.items()):
                if process.poll() is not None:
                    log.close()
                    del running[seed]
                    if process.returncode == 0:
                        done = {"wall_seconds": round(time.time() - began, 1), "finished": time.strftime("%Y-%m-%d")}
                        write_json(os.path.join(out, f"seed{seed}.done"), done)
                    print(f"seed {seed}: exit {process.returncode}", flush=True)
    except KeyboardInterrupt:  # stop the seeds still running; those that finished stay, the same command resumes
        for process, log, _ in running.values():
            process.terminate()
            process.wait()
            log.close()
        print("interrupted: finished seeds are kept; the same command runs the others", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    seeds = {}
    for seed in args.seeds:
        done = read_json(os.path.join(out, f"seed{seed}.done"))
        if done is not None:
            with open(os.path.join(out, f"seed{seed}.log")) as f:
                seeds[str(seed)] = {**read_log(f.read()), **done}
    if not seeds:
        print("no seed has finished", file=sys.stderr)
        return 1
    cpu = hardware().rsplit("; jax", 1)[0]  # the CPU alone: JAX plays no part in the peer's run
    versions = subprocess.run([args.python, "-c", VERSIONS], capture_output=True, text=True).stdout.strip()
    summary = {"command": [os.path.basename(args.script), *command("K")[2:]],
               "source": args.source, "versions": versions, "hardware": cpu, "seeds": seeds,
               "last_100": mean_std([s["last_100"] for s in seeds.values()])}
    os.makedirs(args.summaries, exist_ok=True)
    write_json(os.path.join(args.summaries, f"{name}.json"), summary)
    for seed, s in seeds.items():
        print(f"seed {seed}: last 100 episodes {s['last_100']:.1f} ({s['episodes']} episodes, "
              f"{s['wall_seconds'] / 60:.1f} min)")
    print(f"{name}: {summary['last_100']} over {len(seeds)} seeds ({versions})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
