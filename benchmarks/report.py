"""Write the reproduction report from the baselines' runs: a table next to the published references and a
learning-curve PNG per baseline.

    python benchmarks/report.py    # runs/baselines/ -> docs/results/records/ -> docs/results.md, docs/results/*.png

Per baseline, Open RL Benchmark's metric: per seed, the mean `charts/episodic_return` of the last 100 training
episodes, then mean ± population std over seeds. The runs log one mean per iteration (with the number of
episodes that ended in it), so the last 100 episodes are the last rows that hold them, each row weighted by
its episode count and the earliest one only by what is left of the 100. Also: the final deterministic
evaluation (mean ± std over seeds), wall time, SPS, the hardware and the date. A baseline still running or
stopped early is reported with the steps it reached, marked incomplete. Notes written below the NOTES marker
line of an existing report are kept.

runs/ is not committed, so each process's record (its command, hardware, dates and, per seed, the figures above
and the learning curves) is kept in docs/results/records/<process>.json, and the report is written from those
records: seeds trained in other checkouts or sessions stay in it. A later run of the same process replaces its
record, unless the record is finished and the run is not. run_baselines.py writes a record as each process ends
and skips a process whose record is done. Plots drawn from runs lost before records were kept stay as
docs/results/<name>.before-records.png.
"""
import argparse
import csv
import glob
import os
import sys

import numpy as np

from run_baselines import RECORDS, ROOT, SUITES, Parser, portable, read_json, write_json

LAST_EPISODES = 100
NOTES = "<!-- notes: report.py keeps everything below this line -->"
# the curves a record keeps (the losses stay in runs/ and TensorBoard)
CURVES = ("charts/episodic_return", "charts/episodes", "charts/episodic_return_min", "charts/episodic_return_max",
          "charts/episodic_length", "charts/SPS", "eval/episodic_return")


def read_run(run_dir: str) -> dict:
    """{metric: (steps, values)} of one run's metrics.csv; a line cut short by a killed run is skipped."""
    series = {}
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        for row in csv.DictReader(f):
            try:
                step, value = int(row["global_step"]), float(row["value"])
            except (TypeError, ValueError):
                continue
            steps, values = series.setdefault(row["metric"], ([], []))
            steps.append(step)
            values.append(value)
    return {k: (np.array(s), np.array(v)) for k, (s, v) in series.items()}


def last_episodes_mean(run: dict, n: int = LAST_EPISODES) -> float:
    """Mean return of the last n training episodes, from per-row means and episode counts."""
    if "charts/episodic_return" not in run:
        return float("nan")
    means = run["charts/episodic_return"][1]
    counts = run["charts/episodes"][1] if "charts/episodes" in run else np.ones_like(means)
    total, weighted = 0.0, 0.0
    for mean, count in zip(means[::-1], counts[::-1]):
        take = min(count, n - total)
        total, weighted = total + take, weighted + take * mean
        if total >= n:
            break
    return weighted / total


def read_baseline(directory: str) -> dict | None:
    """One process of a baseline as its directory holds it (started.json, then done.json or failed.json), its
    status and, per seed (or per range of seeds where they share one directory), the figures of the table and
    the learning curves; None if it never started."""
    info = read_json(os.path.join(directory, "started.json"))
    if info is None:
        return None
    done, failed = (read_json(os.path.join(directory, f)) for f in ("done.json", "failed.json"))
    status = ("done" if done else "running or killed" if not failed else
              "stopped by a signal" if failed["exit_code"] in (130, 143) else f"failed (exit {failed['exit_code']})")
    runs = {}
    for run_dir in glob.glob(os.path.join(directory, "runs", "*", "")):
        if os.path.isfile(os.path.join(run_dir, "metrics.csv")):
            seed = os.path.basename(os.path.dirname(run_dir)).split("__")[-2]  # {env}__{exp}__{seed}__{time}
            runs[seed] = read_run(run_dir)
    seeds = {seed: {"summary": summary(runs[seed]), "curves": {k: v for k, v in runs[seed].items() if k in CURVES}}
             for seed in sorted(runs, key=by_number)}
    return {**info, **(done or failed or {}), "status": status, "seeds": seeds}


def summary(run: dict) -> dict:
    """One seed's figures for the table: the metric, the last deterministic evaluation and its step, the steps
    reached and the SPS."""
    evals, sps = run.get("eval/episodic_return"), run.get("charts/SPS")
    return {"last_100": last_episodes_mean(run),
            "final_eval": float(evals[1][-1]) if evals else None, "eval_step": int(evals[0][-1]) if evals else None,
            "steps": int(sps[0][-1]) if sps else 0, "sps": float(sps[1][-1]) if sps else None}


def save_record(process: dict, path: str) -> bool:
    """Write one process's record (curves at 6 significant digits), whole or not at all; but never replace a
    finished record with an unfinished attempt (its logs stay in runs/). False where it kept the old one."""
    old = read_json(path)
    if old and old.get("status") == "done" and process["status"] != "done":
        return False
    def number(x):
        return None if x is None or not np.isfinite(x) else float(f"{x:.6g}")
    record = {**{k: v for k, v in process.items() if k != "seeds"}, "seeds": {
        seed: {"summary": {k: number(v) if isinstance(v, float) else v for k, v in s["summary"].items()},
               "curves": {k: [[int(x) for x in steps], [number(x) for x in values]]
                          for k, (steps, values) in s["curves"].items()}}
        for seed, s in process["seeds"].items()}}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, record, compact=True)
    return True


def load_record(path: str) -> dict | None:
    """A record as read_baseline returns it (curves as arrays; None read as NaN); None if it cannot be read.
    Records from before records were kept hold the summaries only."""
    record = read_json(path)
    if record is None:
        return None
    for s in record["seeds"].values():
        s["summary"] = {k: float("nan") if v is None and k in ("last_100", "sps") else v
                        for k, v in s["summary"].items()}
        s["curves"] = {k: (np.array(steps), np.array(values, float))
                       for k, (steps, values) in s.get("curves", {}).items()}
    return record


def by_number(seed: str) -> tuple:
    return len(seed), seed  # seed 2 before seed 10


def merge(parts: list) -> dict:
    """One baseline from the processes that trained its seeds: one process, or one per seed where a seed takes
    hours. Once any process is done, the baseline is done and only finished processes count (a seed stopped
    part way would pull the metric toward its early returns); the rest are listed as unfinished. Wall time is
    summed over the counted ones (they run one after another)."""
    done = [p for p in parts if p["status"] == "done"]
    counted, unfinished = (done, [p for p in parts if p["status"] != "done"]) if done else (parts, [])
    seeds = {seed: s for p in counted for seed, s in p["seeds"].items()}
    order = sorted(seeds, key=by_number)
    status = "done" if done else parts[0]["status"]
    return {**counted[0], "seeds": {seed: seeds[seed] for seed in order}, "status": status, "processes": counted,
            "unfinished": unfinished,
            "wall_seconds": sum(p.get("wall_seconds", 0) for p in counted)}


def steps_reached(seeds: dict) -> int:
    """Env steps per seed that every seed of a process (or baseline) has reached."""
    return min((s["summary"]["steps"] for s in seeds.values()), default=0)


def total_steps(command: list) -> str:
    """--total-timesteps of the command, or of its --config preset, or the script's default."""
    if "--total-timesteps" in command:
        return f"{int(float(command[command.index('--total-timesteps') + 1])):,}"
    if "--config" in command:
        import yaml
        try:
            with open(os.path.join(ROOT, command[command.index("--config") + 1])) as f:
                preset = yaml.safe_load(f)
        except OSError:
            return "?"
        if "total_timesteps" in preset:
            return f"{int(float(preset['total_timesteps'])):,}"
    import importlib
    sys.path.insert(0, ROOT)
    script = os.path.basename(next(c for c in command if c.endswith(".py")))[:-3]
    return f"{importlib.import_module(script).Args.total_timesteps:,}"


def mean_std(values, spread: bool = True) -> str:
    """mean ± population std of the measured values; the std only where it is a spread over seeds."""
    values = np.asarray(values, float)
    measured = values[~np.isnan(values)]
    if not len(measured):
        return "-"
    text = f"{measured.mean():.1f}" + (f" ± {measured.std():.1f}" if spread and len(measured) > 1 else "")
    return text + (f" ({len(measured)} of {len(values)} measured)" if len(measured) < len(values) else "")


def final_eval(b: dict, spread: bool) -> str:
    """The last deterministic evaluation, mean ± population std over seeds. Records rebuilt after their runs were
    lost hold only their process's mean ± std: such a process enters as that many seeds, pooled exactly."""
    measured = [s["summary"]["final_eval"] for s in b["seeds"].values() if s["summary"]["final_eval"] is not None]
    groups = [(1, x, 0.0) for x in measured]  # (seeds, mean, std)
    groups += [(len(p["seeds"]), *map(float, p["final_eval"].split(" ± "))) for p in b["processes"]
               if "final_eval" in p]
    if not groups:
        return "-"
    n = sum(c for c, _, _ in groups)
    mean = sum(c * m for c, m, _ in groups) / n
    std = np.sqrt(max(sum(c * (sd * sd + m * m) for c, m, sd in groups) / n - mean * mean, 0.0))
    text = f"{mean:.1f}" + (f" ± {std:.1f}" if spread and n > 1 else "")
    return text + (f" ({n} of {len(b['seeds'])} measured)" if n < len(b["seeds"]) else "")


def goals(reference: dict) -> list:
    """The reference's goals: "within" one std of its mean and/or ">= N", written joined by commas."""
    return [goal.strip() for goal in reference["goal"].split(",")]


def verdict(reference: dict | None, mean: float) -> str:
    """Each goal of the reference judged, joined by semicolons."""
    if not reference or np.isnan(mean):
        return ""
    verdicts = []
    for goal in goals(reference):
        if goal == "within":
            ok = abs(mean - reference["mean"]) <= reference["std"]
            verdicts.append("within 1 std" if ok else
                            f"{'below' if mean < reference['mean'] else 'above'} by more than 1 std")
        else:
            threshold = float(goal.split()[-1])
            verdicts.append(f"meets {goal}" if mean >= threshold else f"short of {goal}")
    return "; ".join(verdicts)


def plot(b: dict, path: str) -> bool:
    """Mean training return over seeds with the min-max band over seeds (one seed: the band of the
    episodes' min and max per row), and the reference mean ± std. False if no episode has ended yet, or no
    seed's curve was kept."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = {seed: s["curves"] for seed, s in b["seeds"].items() if "charts/episodic_return" in s["curves"]}
    if not drawn:
        return False
    curves = [c["charts/episodic_return"] for c in drawn.values()]
    steps = np.unique(np.concatenate([s for s, _ in curves]))
    on_grid = np.array([np.interp(steps, s, v, left=np.nan, right=np.nan) for s, v in curves])
    seeds = seed_count(b)
    label = f"{b['name']} ({seeds} seed{'s' * (seeds > 1)})"
    if len(drawn) < len(b["seeds"]):  # seeds whose curves were not kept (trained before records were)
        missing = [seed for seed in b["seeds"] if seed not in drawn]
        label = f"{b['name']} (seed {', '.join(drawn)}; seed {', '.join(missing)}: curve not kept)"
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(steps, np.nanmean(on_grid, 0), label=label)
    if len(curves) > 1:
        ax.fill_between(steps, np.nanmin(on_grid, 0), np.nanmax(on_grid, 0), alpha=0.25, label="min-max over seeds")
    elif seeds == 1 and "charts/episodic_return_min" in (run := next(iter(drawn.values()))):
        ax.fill_between(run["charts/episodic_return_min"][0], run["charts/episodic_return_min"][1],
                        run["charts/episodic_return_max"][1], alpha=0.25, label="min-max of the episodes")
    ref = b.get("reference")
    if ref:
        ax.axhline(ref["mean"], color="black", linestyle="--", linewidth=1, label=f"reference {ref['mean']:g}")
        ax.axhspan(ref["mean"] - ref["std"], ref["mean"] + ref["std"], color="black", alpha=0.08)
    ax.set_xlabel("global_step (env steps per seed)")
    ax.set_ylabel("charts/episodic_return")
    ax.set_title(b["name"])
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def seed_count(b: dict) -> int:
    return sum(int(p["command"][p["command"].index("--num-seeds") + 1]) for p in b["processes"])


def report(baselines: list, plots_dir: str, out_path: str) -> str:
    os.makedirs(plots_dir, exist_ok=True)
    lines = ["# Reproduction results", "",
             "Written by `python benchmarks/report.py` from the runs of `python benchmarks/run_baselines.py`.",
             f"Metric (Open RL Benchmark's): per seed, the mean `charts/episodic_return` of the last {LAST_EPISODES} "
             "training episodes (from per-iteration means weighted by their episode counts); mean ± population "
             "std over seeds. Final eval: the last deterministic evaluation "
             "(at the end of training when done), mean ± std over seeds. SPS: env steps per second per seed, whole "
             "run. Beyond 64 seeds the runs log their mean, so no spread over seeds is shown.", "",
             "| baseline | steps | seeds | last-100 return | reference | verdict | final eval | wall time | SPS |",
             "|---|---|---|---|---|---|---|---|---|"]
    details = []
    for b in baselines:
        ref, done = b.get("reference"), b["status"] == "done"
        summaries = [s["summary"] for s in b["seeds"].values()]
        metric = np.array([s["last_100"] for s in summaries])
        grouped = seed_count(b) != len(summaries)
        evals = [s for s in summaries if s["final_eval"] is not None]
        final = final_eval(b, not grouped)
        if evals and not done:
            final += f" (at step {min(s['eval_step'] for s in evals):,})"
        reached = steps_reached(b["seeds"])
        sps = np.nanmean([s["sps"] for s in summaries]) if reached else None
        steps = f"{reached:,}" + ("" if done else f" of {total_steps(b['command'])} ({b['status']})")
        mean = float(np.nanmean(metric)) if np.isfinite(metric).any() else float("nan")
        wall = f"{b['wall_seconds'] / 60:.1f} min" if done else "-"
        lines.append(f"| {b['name']} | {steps} | {seed_count(b)}{' (their mean)' if grouped else ''} | "
                     f"{mean_std(metric, not grouped)} | "
                     + (f"{ref['mean']:.2f} ± {ref['std']:.2f}" if ref else "-")
                     + f" | {verdict(ref, mean) if done else b['status']} | {final} | {wall} | "
                     + (f"{sps:,.0f} |" if sps is not None else "- |"))
        png, before = (os.path.join(plots_dir, f"{b['name']}{suffix}.png") for suffix in ("", ".before-records"))

        def picture(path):
            return f"![{b['name']}]({os.path.relpath(path, os.path.dirname(os.path.abspath(out_path)))})"
        pictures = [picture(png)] if plot(b, png) else []
        if os.path.exists(before) and any(not s["curves"] for s in b["seeds"].values()):
            pictures.append(picture(before) + " (seeds trained before records were kept, drawn from their runs)")
        if not pictures:
            pictures = ["(no episode has ended yet)" if any(s["curves"] for s in b["seeds"].values()) else
                        "(no curve kept)"]
        commands = "\n\n".join(f"`python {' '.join(portable(p['command']))}`" + ("" if p["status"] == "done" else
                              f" ({p['status']})") for p in b["processes"])  # older records hold absolute paths
        details += [f"## {b['name']}", "", commands, "",
                    f"- last {LAST_EPISODES} episodes per seed: "
                    + ", ".join(f"seed {seed} {x:.1f}" for seed, x in zip(b["seeds"], metric)),
                    f"- reference: {ref['source']}, {ref['mean']} ± {ref['std']}; goal: "
                    + " and ".join("within one reference std" if g == "within" else g for g in goals(ref)) if ref else
                    "- reference: none"]
        for p in b["unfinished"]:
            details.append(f"- not counted until it finishes: `python {' '.join(portable(p['command']))}` "
                           f"({p['status']} at {steps_reached(p['seeds']):,} of {total_steps(p['command'])} steps)")
        for p in b["processes"]:
            seeds = "" if len(b["processes"]) == 1 else f" (seed {', '.join(p['seeds']) or '?'})"
            details.append(f"- hardware{seeds}: {p['hardware']}; started {p['started']}"
                           + (f", finished {p['finished']}" if "finished" in p else ""))
        details += ["", "\n\n".join(pictures), ""]
    text = "\n".join(lines + [""] + details)
    old = ""
    if os.path.exists(out_path):
        with open(out_path) as f:
            old = f.read()
    if NOTES in old:  # hand-written notes below the marker survive a rewrite
        text += "\n" + old[old.index(NOTES):]
    with open(out_path + ".tmp", "w") as f:  # whole or not at all: the notes must not be lost to a crash
        f.write(text)
    os.replace(out_path + ".tmp", out_path)
    return text


def keep_records(runs: str, records: str) -> None:
    """Write the record of each process under `runs` into `records`, replacing an earlier one unless that one is
    finished and the run is not (save_record)."""
    for directory in glob.glob(os.path.join(runs, "*")):
        if (b := read_baseline(directory)):  # .attempts/ is hidden from the glob
            save_record(b, os.path.join(records, os.path.basename(directory) + ".json"))


def main(argv=None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "baselines"), help="run_baselines.py's --out")
    parser.add_argument("--records", default=RECORDS, help="where each process's record is kept (committed)")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "results.md"), help="the report to write")
    parser.add_argument("--plots", default=os.path.join(ROOT, "docs", "results"), help="where the PNGs go")
    args = parser.parse_args(argv)
    keep_records(args.runs, args.records)
    order = [b.name for suite in SUITES.values() for b in suite]  # as the suites list them, then the others

    def position(path):  # <name>.seed<k>.json: the process of the baseline <name> that trains from seed k
        name, _, first = os.path.basename(path)[:-len(".json")].partition(".seed")
        return order.index(name) if name in order else len(order), name, int(first) if first.isdigit() else 1
    processes = {}
    for path in sorted(glob.glob(os.path.join(args.records, "*.json")), key=position):
        if (b := load_record(path)):
            processes.setdefault(b["name"], []).append(b)
    baselines = [merge(parts) for parts in processes.values()]
    if not baselines:
        print(f"error: no baselines under {args.runs} or {args.records}; run benchmarks/run_baselines.py first",
              file=sys.stderr)
        return 2
    report(baselines, args.plots, args.out)
    print(f"wrote {args.out} ({len(baselines)} baselines) and its plots in {args.plots}/; records in {args.records}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
