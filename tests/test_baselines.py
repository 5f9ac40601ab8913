"""The baseline suite runner and the report: the smoke suite end to end, the report's metric against a plain
computation, and the runner's bookkeeping."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import peer_cleanrl  # noqa: E402
import report  # noqa: E402
import run_baselines  # noqa: E402


def test_smoke_suite_stops_on_sigterm_resumes_skips_what_finished_and_reports(tmp_path):
    out, docs, records = tmp_path / "baselines", tmp_path / "docs", tmp_path / "records"
    suite = [sys.executable, os.path.join(ROOT, "benchmarks", "run_baselines.py"), "--suite", "smoke", "--seeds", "2",
             "--out", str(out), "--records", str(records)]
    names = [b.name for b in run_baselines.SUITES["smoke"]]
    stopped = subprocess.Popen(suite, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((out / names[0] / "runs").glob("*/metrics.csv")) and time.time() < deadline:
        time.sleep(0.2)
    stopped.send_signal(signal.SIGTERM)  # as a scheduler would: the script stops, then the suite
    assert stopped.wait(timeout=60) == 143, stopped.stderr.read()
    assert "interrupted" in stopped.stderr.read()
    assert json.loads((out / names[0] / "failed.json").read_text())["exit_code"] == 143
    assert not (out / names[1]).exists()

    first = subprocess.run(suite, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert [p.name.rsplit("-", 1)[0] for p in (out / ".attempts").iterdir()] == [names[0]]  # kept, not deleted
    # smoke_ppo_continuous trains a process per seed (as SAC on MuJoCo); the others both seeds in one process
    processes = {"smoke_ppo_discrete": {"smoke_ppo_discrete": 2},
                 "smoke_ppo_continuous": {"smoke_ppo_continuous": 1, "smoke_ppo_continuous.seed2": 1}}
    assert set(processes) == set(names)
    assert sorted(p.name for p in out.iterdir() if p.name != ".attempts") == sorted(
        d for name in names for d in processes[name])
    for directory, seeds in [item for name in names for item in processes[name].items()]:
        done = json.loads((out / directory / "done.json").read_text())
        assert done["wall_seconds"] > 0 and "cores" in done["hardware"]
        assert done["command"][done["command"].index("--num-seeds") + 1] == str(seeds)
        assert len(list((out / directory / "runs").glob("*/metrics.csv"))) == seeds  # a directory per seed
    again = subprocess.run(suite, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("finished before, skipped") == sum(map(len, processes.values()))

    assert sorted(p.name for p in records.iterdir()) == sorted(  # a record per process, written as it ended
        f"{d}.json" for name in names for d in processes[name])
    written = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "report.py"), "--runs", str(out),
                              "--records", str(records), "--out", str(docs / "results.md"),
                              "--plots", str(docs / "results")], capture_output=True, text=True, timeout=120)
    assert written.returncode == 0, written.stderr[-2000:]
    text = (docs / "results.md").read_text()
    for name in names:
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        assert " | 2 | " in row and "nan" not in row  # two seeds (from one or two processes), every figure measured
        from matplotlib.image import imread
        image = imread(docs / "results" / f"{name}.png")
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0  # a picture, not a blank
    assert "490.04 ± 6.12" in text  # the reference sits next to the result
    (docs / "results.md").write_text(text + "\n" + report.NOTES + "\nwhy a result differs\n")
    shutil.rmtree(out)  # a fresh checkout: runs/ is not committed, the records are
    assert report.main(["--runs", str(out), "--records", str(records), "--out", str(docs / "results.md"),
                        "--plots", str(docs / "results")]) == 0
    rewritten = (docs / "results.md").read_text()
    assert rewritten.startswith(text) and rewritten.endswith(report.NOTES + "\nwhy a result differs\n")
    again = subprocess.run(suite, capture_output=True, text=True, timeout=120)  # nothing runs twice
    assert again.returncode == 0 and again.stdout.count("finished before, skipped") == sum(map(len, processes.values()))


def test_last_100_episodes_weighs_rows_by_their_episode_counts():
    returns = np.array([10.0, 20.0, 30.0, 40.0])  # row means
    counts = np.array([50, 60, 30, 20])  # episodes per row: the last 100 are 20 + 30 + 50 of the 60
    run = {"charts/episodic_return": (np.arange(4), returns), "charts/episodes": (np.arange(4), counts)}
    episodes = np.concatenate([np.full(c, r) for r, c in zip(returns, counts)])  # one return per episode
    assert report.last_episodes_mean(run) == pytest.approx(episodes[-100:].mean())
    few = {"charts/episodic_return": (np.arange(2), returns[:2]), "charts/episodes": (np.arange(2), counts[:2] // 10)}
    assert report.last_episodes_mean(few) == pytest.approx((5 * 10 + 6 * 20) / 11)  # fewer than 100: all of them


def test_verdict_judges_each_goal_of_a_reference():
    ref = {"mean": 2310.46, "std": 342.82, "goal": "within"}
    assert report.verdict(ref, 2000.0) == "within 1 std"
    assert report.verdict(ref, 1900.0) == "below by more than 1 std"
    assert report.verdict(ref, 2700.0) == "above by more than 1 std"
    assert report.verdict({**ref, "goal": ">= 3000"}, 3000.0) == "meets >= 3000"
    both = {**ref, "goal": "within, >= 3000"}  # a CleanRL preset that is also the script's defaults
    assert report.verdict(both, 2193.6) == "within 1 std; short of >= 3000"
    assert report.verdict(both, 3100.0) == "above by more than 1 std; meets >= 3000"
    assert report.verdict(both, float("nan")) == ""


def test_final_eval_pools_a_process_kept_only_as_mean_and_std_with_per_seed_evaluations():
    returns = np.array([3100.0, 1450.0, 2510.0, 2280.0, 3190.0, 2550.0, 2680.0, 2780.0, 2350.0, 3190.0])

    def seeds(values):
        return {str(i): {"summary": {"final_eval": None if v is None else float(v)}} for i, v in values}
    kept = {"seeds": seeds((i + 1, None) for i in range(5)),  # a record rebuilt after its run was lost
            "final_eval": f"{returns[:5].mean():.1f} ± {returns[:5].std():.1f}"}
    new = {"seeds": seeds((i + 6, returns[5 + i]) for i in range(5))}
    both = {"seeds": {**kept["seeds"], **new["seeds"]}, "processes": [kept, new]}
    mean, std = (float(x) for x in report.final_eval(both, True).split(" ± "))
    assert mean == pytest.approx(returns.mean(), abs=0.1) and std == pytest.approx(returns.std(), abs=0.1)
    assert report.final_eval({"seeds": new["seeds"], "processes": [new]}, True) == \
        f"{returns[5:].mean():.1f} ± {returns[5:].std():.1f}"
    one_missing = {"seeds": seeds([(1, 2000.0), (2, None)]), "processes": [{}]}
    assert report.final_eval(one_missing, True) == "2000.0 (1 of 2 measured)"


def test_a_baseline_counts_as_finished_only_with_the_same_command(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "ppo_discrete.py"), "--num-seeds", "5"]
    assert not run_baselines.finished(str(tmp_path), cmd)  # interrupted: no done.json
    (tmp_path / "done.json").write_text(json.dumps({"command": cmd[1:]}))
    assert run_baselines.finished(str(tmp_path), cmd)
    (tmp_path / "done.json").write_text(json.dumps({"command": ["ppo_discrete.py", "--num-seeds", "5"]}))
    assert run_baselines.finished(str(tmp_path), cmd)  # recorded with the checkout elsewhere
    assert not run_baselines.finished(str(tmp_path), [*cmd[:-1], "3"])  # other seeds: run again
    (tmp_path / "done.json").write_text("{trunc")
    assert not run_baselines.finished(str(tmp_path), cmd)
    record, elsewhere = tmp_path / "kept.json", str(tmp_path / "fresh_checkout")  # runs/ gone, the record kept
    record.write_text(json.dumps({"command": cmd[1:], "status": "running or killed"}))
    assert not run_baselines.finished(elsewhere, cmd, str(record))
    record.write_text(json.dumps({"command": cmd[1:], "status": "done"}))
    assert run_baselines.finished(elsewhere, cmd, str(record))
    assert not run_baselines.finished(elsewhere, [*cmd[:-1], "3"], str(record))


def test_hour_long_seeds_train_one_process_each_and_only_as_many_as_asked():
    cpu = {b.name: b for b in run_baselines.SUITES["cpu"]}

    def split(name, seeds):  # (directory, first seed, seeds in the process) of each process
        return [(d, cmd[cmd.index("--seed") + 1], cmd[cmd.index("--num-seeds") + 1])
                for d, cmd in run_baselines.processes(cpu[name], seeds)]
    assert split("ppo_hopper", None) == [("ppo_hopper", "1", "5")]  # 5 seeds vmapped in one process
    assert split("ppo_hopper", 3) == [("ppo_hopper", "1", "3")]
    assert split("ppo_hopper", 10) == [("ppo_hopper", "1", "5"), ("ppo_hopper.seed6", "6", "5")]  # 1-5 kept
    assert split("sac_hopper_cleanrl", None) == [("sac_hopper_cleanrl", "1", "1")]  # two hours a seed: one
    assert split("sac_hopper_cleanrl", 3) == [("sac_hopper_cleanrl", "1", "1"), ("sac_hopper_cleanrl.seed2", "2", "1"),
                                              ("sac_hopper_cleanrl.seed3", "3", "1")]
    assert split("sac_hopper_cleanrl", 3)[0] == split("sac_hopper_cleanrl", None)[0]  # seed 1 done once counts for both


def test_report_shows_unfinished_baselines_and_survives_a_cut_csv(tmp_path):
    def baseline(name, lines, extra=None):
        directory = tmp_path / "runs" / name
        (directory / "runs" / f"CartPole-v1__{name}__1__1700000000").mkdir(parents=True)
        (directory / "started.json").write_text(json.dumps({
            "name": name, "command": ["ppo_discrete.py", "--total-timesteps", "4096", "--num-seeds", "1"],
            "hardware": "test", "started": "today", "reference": None}))
        if extra:
            (directory / extra[0]).write_text(json.dumps(extra[1]))
        csv_text = "global_step,metric,value,wall_time\n" + "".join(lines)
        (directory / "runs" / f"CartPole-v1__{name}__1__1700000000" / "metrics.csv").write_text(csv_text)

    baseline("killed", ["512,charts/episodic_return,20.0,1.0\n", "512,charts/episodes,4,1.0\n",
                        "512,charts/SPS,100,1.0\n", "1024,charts/episodic_ret"])  # the last line cut short
    baseline("diverged", ["512,charts/SPS,100,1.0\n"], ("failed.json", {"exit_code": 3, "finished": "today"}))
    baseline("stopped", ["512,charts/SPS,100,1.0\n"], ("failed.json", {"exit_code": 143, "finished": "today"}))
    docs = tmp_path / "docs"
    assert report.main(["--runs", str(tmp_path / "runs"), "--records", str(tmp_path / "records"),
                        "--out", str(docs / "results.md"), "--plots", str(docs / "results")]) == 0
    text = (docs / "results.md").read_text()
    assert "| killed | 512 of 4,096 (running or killed) | 1 | 20.0 |" in text
    assert "| stopped | 512 of 4,096 (stopped by a signal) |" in text
    assert "| diverged | 512 of 4,096 (failed (exit 3)) | 1 | - |" in text and "(no episode has ended yet)" in text


def test_a_seed_kept_as_a_record_merges_with_a_new_seed_and_an_unfinished_one_waits(tmp_path):
    records, runs, docs = tmp_path / "records", tmp_path / "runs", tmp_path / "docs"
    command = ["sac.py", "--total-timesteps", "2000", "--num-seeds", "1", "--seed"]
    info = {"name": "b", "hardware": "test", "started": "then", "reference": None}
    records.mkdir()  # seed 1, trained in another checkout before records held curves: its figures only
    (records / "b.json").write_text(json.dumps({
        **info, "command": command + ["1"], "finished": "then", "wall_seconds": 600.0, "exit_code": 0,
        "status": "done", "seeds": {"1": {"summary": {"last_100": 100.0, "final_eval": 150.0, "eval_step": 2000,
                                                      "steps": 2000, "sps": 10.0}}}}))
    seed2 = runs / "b.seed2"  # seed 2, trained here
    (seed2 / "runs" / "Hopper-v4__b__2__1700000000").mkdir(parents=True)
    (seed2 / "started.json").write_text(json.dumps({**info, "command": command + ["2"]}))
    (seed2 / "done.json").write_text(json.dumps({"wall_seconds": 300.0, "finished": "now", "exit_code": 0}))
    (seed2 / "runs" / "Hopper-v4__b__2__1700000000" / "metrics.csv").write_text(
        "global_step,metric,value,wall_time\n2000,charts/episodic_return,200.0,1\n2000,charts/episodes,100,1\n"
        "2000,charts/SPS,20,1\n2000,eval/episodic_return,250.0,1\n2000,losses/qf_loss,3.0,1\n")
    seed3 = runs / "b.seed3"  # seed 3, stopped early: its first returns must not enter the metric
    (seed3 / "runs" / "Hopper-v4__b__3__1700000000").mkdir(parents=True)
    (seed3 / "started.json").write_text(json.dumps({**info, "command": command + ["3"]}))
    (seed3 / "failed.json").write_text(json.dumps({"exit_code": 143, "finished": "now"}))
    (seed3 / "runs" / "Hopper-v4__b__3__1700000000" / "metrics.csv").write_text(
        "global_step,metric,value,wall_time\n500,charts/episodic_return,10.0,1\n500,charts/episodes,100,1\n"
        "500,charts/SPS,20,1\n")
    (docs / "results").mkdir(parents=True)
    (docs / "results" / "b.before-records.png").write_bytes(b"seed 1, drawn from its run")
    argv = ["--runs", str(runs), "--records", str(records), "--out", str(docs / "results.md"),
            "--plots", str(docs / "results")]
    assert report.main(argv) == 0
    text = (docs / "results.md").read_text()
    row = "| b | 2,000 | 2 | 150.0 ± 50.0 | - |  | 200.0 ± 50.0 | 15.0 min | 15 |"
    assert row in text
    assert "not counted until it finishes: `python sac.py --total-timesteps 2000 --num-seeds 1 --seed 3` " \
           "(stopped by a signal at 500 of 2,000 steps)" in text
    kept = json.loads((records / "b.seed2.json").read_text())["seeds"]["2"]
    assert kept["curves"]["charts/episodic_return"] == [[2000], [200.0]] and "losses/qf_loss" not in kept["curves"]
    assert (docs / "results" / "b.png").exists()  # drawn from seed 2, the one curve kept, next to seed 1's old plot
    assert "(results/b.png)" in text and "(results/b.before-records.png)" in text

    (seed2 / "done.json").unlink()  # seed 2 started again and stopped: the finished record stands
    (seed2 / "failed.json").write_text(json.dumps({"exit_code": 143, "finished": "later"}))
    assert report.main(argv) == 0
    assert row in (docs / "results.md").read_text()
    assert json.loads((records / "b.seed2.json").read_text())["status"] == "done"


@pytest.mark.parametrize("argv, message", [
    (["--suite", "tpu"], "error: no suite 'tpu'; choose one of cpu, gpu, trials, smoke"),
    (["--only", "ppo_hoper"], "error: no baseline ppo_hoper in suite 'cpu'"),
    (["--seeds", "0"], "error: --seeds must be at least 1"),
])
def test_bad_input_is_one_error_line(argv, message, capsys):
    assert run_baselines.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


FAKE_CLEANRL = """import sys, time
seed = int(sys.argv[sys.argv.index("--seed") + 1])
if seed == 3:
    sys.exit("crashed")  # a seed that fails is left out of the summary
if seed == 9:
    time.sleep(60)  # a seed still running when the user presses Ctrl-C
for episode in range(1, 151):  # returns 1..150 shifted by the seed, printed as CleanRL prints them
    print(f"global_step={1000 * episode}, episodic_return=[{episode + seed}.5]")
    if episode % 50 == 0:
        print(f"SPS: {1000 + episode}")
time.sleep(0.2)
"""


def test_peer_runs_seeds_side_by_side_resumes_and_summarises_the_last_100_episodes(tmp_path, capsys):
    script = tmp_path / "ppo_fake.py"
    script.write_text(FAKE_CLEANRL)
    argv = ["--script", str(script), "--python", sys.executable, "--env-id", "Fake-v0", "--seeds", "1", "2", "3",
            "--parallel", "2", "--runs", str(tmp_path / "runs"), "--summaries", str(tmp_path / "peers")]
    assert peer_cleanrl.main(argv) == 0
    summary = json.loads((tmp_path / "peers" / "ppo_fake_Fake-v0.json").read_text())
    per_seed = {k: v["last_100"] for k, v in summary["seeds"].items()}
    assert per_seed == {"1": np.arange(51, 151).mean() + 1.5, "2": np.arange(51, 151).mean() + 2.5}  # not seed 3
    assert summary["seeds"]["1"]["episodes"] == 150 and summary["seeds"]["1"]["sps"] == 1150
    assert "gymnasium " in summary["versions"] and "torch -" in summary["versions"]  # this venv has no torch
    assert summary["last_100"] == "102.5 ± 0.5"
    assert summary["command"] == ["ppo_fake.py", "--env-id", "Fake-v0", "--seed", "K", "--no-cuda",
                                  "--exp-name", "ppo_fake_Fake-v0"]
    out = capsys.readouterr().out
    assert "seed 3: exit 1" in out
    assert peer_cleanrl.main(argv) == 0  # again: seeds 1 and 2 are kept, only the failed seed 3 runs
    out = capsys.readouterr().out
    assert "seed 3: started" in out and "seed 1: started" not in out and "seed 2: started" not in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_peer_ctrl_c_or_sigterm_stops_the_running_seeds_and_keeps_them_unfinished(tmp_path, sig):
    script = tmp_path / "ppo_fake.py"
    script.write_text(FAKE_CLEANRL)
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "peer_cleanrl.py"), "--script", str(script), "--python",
           sys.executable, "--env-id", "Fake-v0", "--seeds", "9", "--runs", str(tmp_path / "runs"),
           "--summaries", str(tmp_path / "peers")]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "seed 9: started\n"
    time.sleep(1)
    process.send_signal(sig)  # to the runner alone, not to the seed's process
    out, err = process.communicate(timeout=30)  # not the 60 s the seed would take
    assert process.returncode == 130 and err.startswith("interrupted: finished seeds are kept")
    assert not (tmp_path / "runs" / "ppo_fake_Fake-v0" / "seed9.done").exists()
    assert not (tmp_path / "peers").exists()


def test_peer_bad_paths_are_one_error_line(tmp_path, capsys):
    argv = ["--script", str(tmp_path / "missing.py"), "--python", sys.executable, "--env-id", "Fake-v0"]
    assert peer_cleanrl.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --script") and err.count("\n") == 1
