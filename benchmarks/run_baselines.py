"""Run every baseline of a suite for K seeds, one after the other, each in runs/baselines/<name>/.

    python benchmarks/run_baselines.py                  # the cpu suite, 5 seeds
    python benchmarks/run_baselines.py --suite gpu      # Brax presets and many-seed gymnax
    python benchmarks/run_baselines.py --suite trials   # candidates for the defaults, tried one by one
    python benchmarks/run_baselines.py --only ppo_hopper_cleanrl sac_hopper_cleanrl --seeds 3
    python benchmarks/run_baselines.py --list           # the suites, their commands and references

The seeds of a baseline train together in one process (`--num-seeds K`, vmapped), five to a process in the cpu
suite (--seeds 10 adds seeds 6-10 in runs/baselines/<name>.seed6/ and keeps 1-5), except where one seed takes
hours (SAC on MuJoCo here): one seed unless --seeds asks for more, a process per seed, seed k's in
runs/baselines/<name>.seed<k>/. A process that finished with the same command (its directory's done.json, or
its record in docs/results/records/, which is committed and so outlives runs/) is skipped; one that was
interrupted, failed or ran another command starts again from scratch, its earlier attempt moved to
runs/baselines/.attempts/. As each process ends, its record is written. Ctrl-C or SIGTERM stops the current
process (it keeps its logs) and the suite; the same command resumes with it. `python benchmarks/report.py`
turns the records into docs/results.md.
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from typing import NamedTuple, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "runs", "baselines")
RECORDS = os.path.join(ROOT, "docs", "results", "records")


class Reference(NamedTuple):
    source: str  # where the published figure comes from
    mean: float  # Open RL Benchmark's metric: mean over seeds of the last-100-episode mean return
    std: float  # population std over seeds
    goal: str  # what this baseline should reach: "within" one std of the mean, ">= N", or both ("within, >= N")


class Baseline(NamedTuple):
    name: str
    script: str
    flags: tuple  # after the script; config paths relative to the repository
    reference: Optional[Reference] = None
    default_seeds: Optional[int] = None  # seeds when --seeds is not given, where one seed takes hours on this suite
    seeds_per_process: Optional[int] = None  # a process per this many seeds, each finished and kept on its own
    min_seeds: Optional[int] = None  # more seeds than asked (many-seed runs)


DEFAULT_SEEDS = 5
CLEANRL_PPO = "CleanRL ppo_continuous_action.py, Open RL Benchmark (v4, 1M steps)"
CLEANRL_SAC = "CleanRL sac_continuous_action.py, Open RL Benchmark (v4, 1M steps)"
CLEANRL_PPO_DISCRETE = "CleanRL ppo.py, Open RL Benchmark (500k steps)"
HOPPER_PPO = (2382.86, 271.74)
HALFCHEETAH_PPO = (1442.64, 46.03)
CARTPOLE_PPO = (490.04, 6.12)
HOPPER_SAC = (2310.46, 342.82)


def sac_hopper_trial(name: str, *flags: str) -> Baseline:
    """A candidate for sac.py's defaults: CleanRL's Hopper preset (the defaults) plus `flags`, judged by the
    defaults' goal, one seed per process as the SAC baselines."""
    return Baseline(name, "sac.py", ("--config", "configs/sac_hopper_cleanrl.yaml", *flags),
                    Reference(CLEANRL_SAC, *HOPPER_SAC, ">= 3000"), default_seeds=1, seeds_per_process=1)


def cpu_ppo(name: str, script: str, flags: tuple, reference: Reference) -> Baseline:
    """A PPO baseline of the cpu suite: five seeds vmapped to a process, so --seeds 10 adds seeds 6-10 and keeps
    1-5."""
    return Baseline(name, script, flags, reference, seeds_per_process=DEFAULT_SEEDS)


SUITES = {
    "cpu": [
        cpu_ppo("ppo_cartpole_cleanrl", "ppo_discrete.py", ("--config", "configs/ppo_discrete_cartpole_cleanrl.yaml"),
                Reference(CLEANRL_PPO_DISCRETE, *CARTPOLE_PPO, "within")),
        cpu_ppo("ppo_cartpole", "ppo_discrete.py", ("--env-id", "CartPole-v1"),
                Reference(CLEANRL_PPO_DISCRETE, *CARTPOLE_PPO, ">= 495")),
        cpu_ppo("ppo_cartpole_gymnax", "ppo_discrete.py", ("--env-id", "gymnax/CartPole-v1"),
                Reference(CLEANRL_PPO_DISCRETE, *CARTPOLE_PPO, ">= 495")),
        cpu_ppo("ppo_hopper_cleanrl", "ppo_continuous.py", ("--config", "configs/ppo_continuous_hopper_cleanrl.yaml"),
                Reference(CLEANRL_PPO, *HOPPER_PPO, "within")),
        cpu_ppo("ppo_hopper", "ppo_continuous.py", ("--env-id", "Hopper-v4"),
                Reference(CLEANRL_PPO, *HOPPER_PPO, ">= 2600")),
        cpu_ppo("ppo_halfcheetah_cleanrl", "ppo_continuous.py",
                ("--config", "configs/ppo_continuous_halfcheetah_cleanrl.yaml"),
                Reference(CLEANRL_PPO, *HALFCHEETAH_PPO, "within")),
        cpu_ppo("ppo_halfcheetah", "ppo_continuous.py", ("--env-id", "HalfCheetah-v4"),
                Reference(CLEANRL_PPO, *HALFCHEETAH_PPO, ">= 1600")),
        # one seed of SAC takes about two hours on a 2-core CPU: one seed unless --seeds asks for more, each
        # seed its own process (vmapping them saves nothing here), so every finished seed counts on its own
        # CleanRL's SAC preset is also sac.py's defaults: judged by both goals
        Baseline("sac_hopper_cleanrl", "sac.py", ("--config", "configs/sac_hopper_cleanrl.yaml"),
                 Reference(CLEANRL_SAC, *HOPPER_SAC, "within, >= 3000"), default_seeds=1, seeds_per_process=1),
        Baseline("sac_halfcheetah_cleanrl", "sac.py", ("--config", "configs/sac_halfcheetah_cleanrl.yaml"),
                 Reference(CLEANRL_SAC, 9634.89, 1423.73, "within"), default_seeds=1, seeds_per_process=1),
    ],
    "gpu": [
        Baseline("ppo_ant_brax", "ppo_continuous.py", ("--config", "configs/ppo_continuous_brax_ant.yaml")),
        Baseline("sac_hopper_brax", "sac.py", ("--config", "configs/sac_brax_hopper.yaml")),
        Baseline("ppo_cartpole_gymnax_1024", "ppo_discrete.py", ("--env-id", "gymnax/CartPole-v1"),
                 Reference(CLEANRL_PPO_DISCRETE, *CARTPOLE_PPO, ">= 495"), min_seeds=1024),
    ],
    "trials": [  # candidates for the defaults, run on their own (docs/results.md says how each fared)
        # LayerNorm in SAC's Q networks, for the defaults' Hopper goal (>= 3000): seed 1 did worse, not adopted
        sac_hopper_trial("sac_hopper_critic_ln", "--critic-layer-norm"),
        # the SAC paper's rates: Q (and so alpha) at 3e-4 instead of CleanRL's 1e-3; three seeds scored as 1e-3 did
        # (+420, +400, -772 against their 1e-3 twins), not adopted
        sac_hopper_trial("sac_hopper_q_lr_3e-4", "--q-lr", "3e-4"),
        # a lower target entropy (-2 per action dimension, not -1): less action noise in the training episodes that
        # the metric scores, where the deterministic evaluations already reach ~3,200; three seeds scored 2785.4,
        # 3215.6 and 2972.4 (2991.1, their default twins 1693.5, 2693.6, 2305.8), short of the 3000 that the rule
        # set before seed 1 asked: not adopted
        sac_hopper_trial("sac_hopper_target_entropy_-6", "--target-entropy", "-6"),
        # lower still (-3 per action dimension): the rule set before seed 1 ran (2026-11-28): seeds 2-3 only if seed 1
        # beats the -6 trial's seed 1 (2785.4); the default only if three seeds average at least 3000, and only after
        # a HalfCheetah seed at its target (-18) has run, as the change would reach every env
        # seeds 1, 2: 2813.7, 2703.6
        sac_hopper_trial("sac_hopper_target_entropy_-9", "--target-entropy", "-9"),
    ],
    "smoke": [  # seconds: for the tests
        Baseline("smoke_ppo_discrete", "ppo_discrete.py",
                 ("--env-id", "gymnax/CartPole-v1", "--total-timesteps", "8192", "--num-eval-envs", "2"),
                 Reference(CLEANRL_PPO_DISCRETE, *CARTPOLE_PPO, "within")),
        Baseline("smoke_ppo_continuous", "ppo_continuous.py",
                 ("--env-id", "Pendulum-v1", "--total-timesteps", "2048", "--num-steps", "256",
                  "--num-minibatches", "2", "--update-epochs", "1", "--num-eval-envs", "2"),
                 seeds_per_process=1),  # a process per seed, as the SAC baselines
    ],
}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as the training scripts
        print(f"error: {message}; see --help", file=sys.stderr)
        sys.exit(2)


def processes(baseline: Baseline, seeds: Optional[int]) -> list:
    """(directory name, command line) of each process that trains the baseline's seeds 1..K: one process for
    them all, or one per `seeds_per_process` seeds, the first in <name>/, the others in <name>.seed<first>/.
    Command lines hold absolute paths, so they run from the baseline's directory."""
    seeds = seeds or baseline.default_seeds or DEFAULT_SEEDS
    if baseline.min_seeds is not None:
        seeds = max(seeds, baseline.min_seeds)
    chunk = baseline.seeds_per_process or seeds
    flags = [os.path.join(ROOT, f) if f.startswith("configs/") else f for f in baseline.flags]
    return [(baseline.name if first == 1 else f"{baseline.name}.seed{first}",
             [sys.executable, os.path.join(ROOT, baseline.script), *flags, "--num-seeds",
              str(min(chunk, seeds - first + 1)), "--seed", str(first), "--exp-name", baseline.name])
            for first in range(1, seeds + 1, chunk)]


def hardware() -> str:
    """The CPU model and core count, plus the accelerator JAX would use (asked in a child, not here)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    probe = subprocess.run([sys.executable, "-c", "import jax; d = jax.devices()[0]; "
                            "print(jax.__version__, d.platform, d.device_kind)"], capture_output=True, text=True)
    jax_version, platform_, kind = (probe.stdout.split(maxsplit=2) + ["?", "?", "?"])[:3]
    device = f"{cpu}, {len(os.sched_getaffinity(0))} cores"
    if platform_ != "cpu":
        device += f"; {kind.strip()}"
    return f"{device}; jax {jax_version}"


def portable(args: list) -> list:
    """Command-line arguments with paths relative to the repository (so a moved checkout or runs copied from
    another machine still match)."""
    return [os.path.relpath(c, ROOT) if c.startswith(ROOT + os.sep) else c for c in args]


def write_json(path: str, record: dict, compact: bool = False) -> None:
    """Write whole or not at all: a record cut short by a kill would read as garbage. Compact: on one line."""
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, **({"separators": (",", ":")} if compact else {"indent": 1}))
    os.replace(path + ".tmp", path)


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def finished(directory: str, cmd: list, record: Optional[str] = None) -> bool:
    """Did this command finish before: here (the directory's done.json) or anywhere (its record says done)?"""
    done = read_json(os.path.join(directory, "done.json"))
    kept = read_json(record) if record else None
    return any(r is not None and portable(r.get("command", [])) == portable(cmd[1:])
               for r in (done, kept if kept and kept.get("status") == "done" else None))


def set_aside(directory: str) -> None:
    """Move an earlier attempt (interrupted, failed or another command) to .attempts/, never delete it."""
    if os.path.exists(directory):
        attempts = os.path.join(os.path.dirname(directory), ".attempts")
        os.makedirs(attempts, exist_ok=True)
        os.replace(directory, os.path.join(attempts, f"{os.path.basename(directory)}-{int(time.time())}"))


def run(baseline: Baseline, cmd: list, device: str, directory: str) -> int:
    """Run one baseline from scratch in `directory`; done.json when it ends cleanly, else failed.json."""
    set_aside(directory)
    os.makedirs(directory)
    info = {"name": baseline.name, "command": portable(cmd[1:]), "hardware": device,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "reference": baseline.reference._asdict() if baseline.reference else None}
    write_json(os.path.join(directory, "started.json"), info)
    began = time.time()
    # The script writes its runs under directory/runs/. It has its own session, so Ctrl-C and SIGTERM reach it
    # once each, forwarded from here, and it stops as it would on its own (a second signal: at once).
    with subprocess.Popen(cmd, cwd=directory, start_new_session=True) as process:
        previous = {sig: signal.signal(sig, lambda sig, _: process.send_signal(sig))
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            rc = process.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    record = {**info, "wall_seconds": round(time.time() - began, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    write_json(os.path.join(directory, "done.json" if rc == 0 else "failed.json"), {**record, "exit_code": rc})
    return rc


def main(argv=None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="cpu", help=f"which baselines: {', '.join(SUITES)}")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"seeds per baseline, vmapped (default {DEFAULT_SEEDS}; cpu suite PPO: five to a "
                             "process; SAC on MuJoCo: 1, one process per seed)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these baselines")
    parser.add_argument("--out", default=OUT, help="where the baselines' directories go")
    parser.add_argument("--records", default=RECORDS, help="where each process's record is kept (committed)")
    parser.add_argument("--list", action="store_true",
                        help="print the suite's baselines and commands (marking those finished), run nothing")
    args = parser.parse_args(argv)
    if args.suite not in SUITES:
        print(f"error: no suite '{args.suite}'; choose one of {', '.join(SUITES)}", file=sys.stderr)
        return 2
    if args.seeds is not None and args.seeds < 1:
        print("error: --seeds must be at least 1", file=sys.stderr)
        return 2
    suite = SUITES[args.suite]
    unknown = sorted(set(args.only or ()) - {b.name for b in suite})
    if unknown:
        print(f"error: no baseline {', '.join(unknown)} in suite '{args.suite}'; it has "
              f"{', '.join(b.name for b in suite)}", file=sys.stderr)
        return 2
    chosen = [b for b in suite if args.only is None or b.name in args.only]
    if args.list:
        for b in chosen:
            commands = [f"python {' '.join(portable(cmd[1:]))}"
                        + ("  (finished)" if finished(os.path.join(args.out, name), cmd,
                                                      os.path.join(args.records, name + ".json")) else "")
                        for name, cmd in processes(b, args.seeds)]
            print(f"{b.name}:", "\n    ".join(commands))
            if b.reference:
                print(f"    reference {b.reference.mean} ± {b.reference.std} ({b.reference.source})")
        return 0
    device, failed = hardware(), []
    for i, baseline in enumerate(chosen, 1):
        for name, cmd in processes(baseline, args.seeds):
            label = f"[{i}/{len(chosen)}] {name}"
            directory = os.path.join(args.out, name)
            record = os.path.join(args.records, name + ".json")
            if finished(directory, cmd, record):
                print(f"{label}: finished before, skipped", flush=True)
                continue
            print(f"{label}: {' '.join(cmd[1:])}", flush=True)
            rc = run(baseline, cmd, device, directory)
            import report  # here: report.py imports this module
            report.save_record(report.read_baseline(directory), record)  # not over a finished one
            if rc in (130, 143):  # the script was stopped by Ctrl-C or SIGTERM: so is the suite
                print(f"{label}: interrupted; run the same command again to resume from it (it starts again; the "
                      f"stopped attempt moves to {os.path.join(args.out, '.attempts')})", file=sys.stderr)
                return rc
            if rc != 0:
                print(f"{label}: exited with {rc}; its logs are in {directory}", flush=True)
                if baseline.name not in failed:  # a baseline counts once however many of its processes failed
                    failed.append(baseline.name)
    print(f"suite '{args.suite}': {len(chosen) - len(failed)} of {len(chosen)} finished"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f" (runs in {args.out}/)")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader went away (`--list | head`): stop quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
