"""Write the reproduction report from the baselines' runs: a table next to the published references and a
learning-curve PNG per baseline.

    python benchmarks/report.py            # runs/baselines/ -> docs/results.md, docs/results/*.png

Per baseline, Open RL Benchmark's metric: per seed, the mean `charts/episodic_return` of the last 100 training
episodes, then mean ± population std over seeds. The runs log one mean per iteration (with the number of
episodes that ended in it), so the last 100 episodes are the last rows that hold them, each row weighted by
its episode count and the earliest one only by what is left of the 100. Also: the final deterministic
evaluation (mean ± std over seeds), wall time, SPS, the hardware and the date. A baseline still running or
stopped early is reported with the steps it reached, marked incomplete. Notes written below the NOTES marker
line of an existing report are kept.
"""
import argparse
import csv
import glob
import json
import os
import sys

import numpy as np

from run_baselines import ROOT, SUITES

LAST_EPISODES = 100
NOTES = "<!-- notes: report.py keeps everything below this line -->"


def read_run(run_dir: str) -> dict:
    """{metric: (steps, values)} of one run's metrics.csv."""
    series = {}
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        for row in csv.DictReader(f):
            steps, values = series.setdefault(row["metric"], ([], []))
            steps.append(int(row["global_step"]))
            values.append(float(row["value"]))
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
    """The baseline's record (started.json, done.json) and its runs, or None without any run."""
    try:
        with open(os.path.join(directory, "started.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    done = os.path.join(directory, "done.json")
    if os.path.exists(done):
        with open(done) as f:
            info = {**json.load(f), "done": True}
    runs = [read_run(d) for d in sorted(glob.glob(os.path.join(directory, "runs", "*")))
            if os.path.isfile(os.path.join(d, "metrics.csv"))]
    runs = [r for r in runs if r]
    if not runs:
        return None
    return {**info, "runs": runs}


def total_steps(command: list) -> int:
    """--total-timesteps of the command, or of its --config preset, or the script's default."""
    if "--total-timesteps" in command:
        return int(float(command[command.index("--total-timesteps") + 1]))
    if "--config" in command:
        import yaml
        with open(command[command.index("--config") + 1]) as f:
            preset = yaml.safe_load(f)
        if "total_timesteps" in preset:
            return int(float(preset["total_timesteps"]))
    import importlib
    sys.path.insert(0, ROOT)
    script = os.path.basename(next(c for c in command if c.endswith(".py")))[:-3]
    return importlib.import_module(script).Args.total_timesteps


def summarise(b: dict) -> dict:
    """The report's figures for one baseline."""
    runs = b["runs"]
    metric = np.array([last_episodes_mean(r) for r in runs])
    finals = np.array([r["eval/episodic_return"][1][-1] for r in runs if "eval/episodic_return" in r])
    reached = min(int(r["charts/SPS"][0][-1]) if "charts/SPS" in r else 0 for r in runs)
    sps = np.mean([r["charts/SPS"][1][-1] for r in runs if "charts/SPS" in r]) if reached else float("nan")
    return {"metric": metric, "final_eval": finals, "reached": reached, "sps": sps}


def verdict(reference: dict | None, mean: float) -> str:
    if not reference or np.isnan(mean):
        return ""
    goal = reference["goal"]
    if goal == "within":
        ok = abs(mean - reference["mean"]) <= reference["std"]
        return "within 1 std" if ok else f"{'below' if mean < reference['mean'] else 'above'} by more than 1 std"
    threshold = float(goal.split()[-1])
    return f"meets {goal}" if mean >= threshold else f"short of {goal}"


def plot(b: dict, path: str) -> None:
    """Mean training return over seeds with the min-max band over seeds (one seed: the band of the
    episodes' min and max per row), and the reference mean ± std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r["charts/episodic_return"] for r in b["runs"] if "charts/episodic_return" in r]
    steps = np.unique(np.concatenate([s for s, _ in curves]))
    on_grid = np.array([np.interp(steps, s, v, right=np.nan) for s, v in curves])
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    seeds = b["command"][b["command"].index("--num-seeds") + 1]
    ax.plot(steps, np.nanmean(on_grid, 0), label=f"{b['name']} ({seeds} seeds)")
    if len(curves) > 1:
        ax.fill_between(steps, np.nanmin(on_grid, 0), np.nanmax(on_grid, 0), alpha=0.25, label="min-max over seeds")
    elif "charts/episodic_return_min" in b["runs"][0]:
        run = b["runs"][0]
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


def report(baselines: list, plots_dir: str, out_path: str) -> str:
    os.makedirs(plots_dir, exist_ok=True)
    lines = ["# Reproduction results", "",
             "Written by `python benchmarks/report.py` from the runs of `python benchmarks/run_baselines.py`.",
             f"Metric (Open RL Benchmark's): per seed, the mean `charts/episodic_return` of the last {LAST_EPISODES} "
             "training episodes; mean ± population std over seeds. Final eval: the deterministic evaluation at the "
             "end of training, mean ± std over seeds. SPS: env steps per second per seed, whole run.", "",
             "| baseline | steps | seeds | last-100 return | reference | verdict | final eval | wall time | SPS |",
             "|---|---|---|---|---|---|---|---|---|"]
    details = []
    for b in baselines:
        s = summarise(b)
        ref = b.get("reference")
        total = total_steps(b["command"])
        steps = f"{s['reached']:,}" + ("" if b.get("done") else f" of {total:,} (incomplete)")
        m = s["metric"]
        wall = f"{b['wall_seconds'] / 60:.1f} min" if "wall_seconds" in b else "-"
        final = f"{s['final_eval'].mean():.1f} ± {s['final_eval'].std():.1f}" if len(s["final_eval"]) else "-"
        seeds = int(b["command"][b["command"].index("--num-seeds") + 1])
        seeds = str(seeds) if seeds == len(m) else f"{seeds} (logged as their mean)"  # beyond 64 runs: grouped
        lines.append(f"| {b['name']} | {steps} | {seeds} | {np.nanmean(m):.1f} ± {np.nanstd(m):.1f} | "
                     + (f"{ref['mean']:.2f} ± {ref['std']:.2f}" if ref else "-")
                     + f" | {verdict(ref, float(np.nanmean(m))) if b.get('done') else 'incomplete'} | {final} | "
                     f"{wall} | {s['sps']:,.0f} |")
        png = os.path.join(plots_dir, f"{b['name']}.png")
        plot(b, png)
        rel = os.path.relpath(png, os.path.dirname(os.path.abspath(out_path)))
        cmd = " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in b["command"])
        details += [f"## {b['name']}", "", f"`python {cmd}`", "",
                    f"- per seed (last {LAST_EPISODES} episodes): " + ", ".join(f"{x:.1f}" for x in m),
                    f"- reference: {ref['source']}, {ref['mean']} ± {ref['std']}; goal {ref['goal']}" if ref else
                    "- reference: none",
                    f"- hardware: {b['hardware']}; started {b['started']}"
                    + (f", finished {b['finished']}" if b.get("done") else ", not finished"), "",
                    f"![{b['name']}]({rel})", ""]
    text = "\n".join(lines + [""] + details)
    try:  # hand-written notes below the marker survive a rewrite
        with open(out_path) as f:
            old = f.read()
        text += "\n" + old[old.index(NOTES):] if NOTES in old else ""
    except OSError:
        pass
    with open(out_path, "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "baselines"), help="run_baselines.py's --out")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "results.md"), help="the report to write")
    parser.add_argument("--plots", default=os.path.join(ROOT, "docs", "results"), help="where the PNGs go")
    args = parser.parse_args(argv)
    order = [b.name for suite in SUITES.values() for b in suite]  # as the suites list them, then the others
    directories = sorted(glob.glob(os.path.join(args.runs, "*")),
                         key=lambda d: (order.index(os.path.basename(d)) if os.path.basename(d) in order else len(order),
                                        d))
    baselines = [b for d in directories if (b := read_baseline(d))]
    if not baselines:
        print(f"error: no baseline runs under {args.runs}; run benchmarks/run_baselines.py first", file=sys.stderr)
        return 2
    report(baselines, args.plots, args.out)
    print(f"wrote {args.out} ({len(baselines)} baselines) and its plots in {args.plots}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
