"""An ASHA campaign of ``--trials`` trials with ``--concurrent`` at a time, killed midway and resumed.

    python benchmarks/bench_tune_campaign.py [--trials 8] [--concurrent 2] [--epochs 4] [--kill-after 3]
        [--gpus-per-worker 0] [--cpus 0] [--json OUT]

1. Writes synthetic joined-stage inputs (``dr_ray.testing.stages``: 64 images, 2 folds) into a temporary
   ``output.dir`` and starts ``python jobs/tune.py`` (tiny GraphFusion, ``--epochs`` epochs, search over lr,
   dropout and hidden width) in its own process group.
2. When ``--kill-after`` trials have reported their last epoch or been stopped by ASHA, kills the whole process
   group (SIGKILL: driver, local Ray, trials, workers), as a lost head node or a cancelled job would.
3. Reruns the same command: Tune restores the campaign, keeps finished trials, resumes the others (their Ray
   Train runs restart from their latest checkpoint).
4. Reports: trials completed, the largest number of trials seen RUNNING at once (Tune's status lines), which
   trials were finished before the kill and whether they were left alone, and whether the resumed trials
   continued from a checkpoint (Ray Train's ``start_epoch`` > 0) rather than from scratch.
On CPU the trial workers take 0.5 CPU each (``train.cpus_per_worker``) so that two trials fit on two cores with
their data tasks; on the GPU node pass ``--gpus-per-worker 0.5`` to put two trials on one GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _finished_trials(campaign: Path, epochs: int) -> dict[str, int]:
    """Trial folder -> epochs reported, for trials that reported ``epochs`` epochs or were stopped (done flag)."""
    done = {}
    for rj in campaign.glob("*/result.json"):
        lines = [json.loads(x) for x in rj.read_text().splitlines() if x.strip()]
        if lines and (lines[-1].get("done") or lines[-1].get("training_iteration", 0) >= epochs):
            done[rj.parent.name] = len(lines)
    return done


def _reports(campaign: Path) -> dict[str, int]:
    return {rj.parent.name: len([x for x in rj.read_text().splitlines() if x.strip()])
            for rj in campaign.glob("*/result.json")}


def _max_running(text: str) -> int:
    return max([int(m) for m in re.findall(r"Trial status:.*?(\d+) RUNNING", text)] or [0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--kill-after", type=int, default=3)
    ap.add_argument("--gpus-per-worker", type=float, default=0.0)
    ap.add_argument("--cpus", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from benchmarks._bench_util import cpu_model
    from dr_ray.testing.stages import write_stage_outputs

    tmp = Path(tempfile.mkdtemp(prefix="bench_tune_"))
    write_stage_outputs(tmp, n_patients=32, size=64, map_size=16, nodes=8, flaws=False, rows_per_file=8)
    space = ("[{key: lr, kind: loguniform, low: 1.0e-4, high: 3.0e-3}, {key: dropout, kind: uniform, low: 0.0, "
             "high: 0.3}, {key: hidden_dim, kind: choice, values: [16, 32]}]")
    sets = [f"output.dir={tmp}", "data.folds=2", "train.image_size=64", "train.heads=2", "train.fusion_layers=1",
            "train.gnn_layers=1", "train.backbone=mobilenetv3_small_050", f"train.epochs={args.epochs}",
            "train.batch_size=8", "train.decode_batch_size=8", "train.early_stop_patience=0",
            "train.cpus_per_worker=0.5", "train.decode_cpus=0.5", "ray.rows_per_file=8",
            f"tune.num_samples={args.trials}", f"tune.max_concurrent={args.concurrent}",
            f"tune.gpus_per_worker={args.gpus_per_worker}", "tune.grace_period=1", "tune.reduction_factor=2",
            # val_loss is defined on any split (an AUC is not on a one-class tiny validation split)
            "tune.metric=val_loss", "tune.mode=min",
            f"tune.space={space}", "tune.name=campaign_bench"]
    if args.cpus:
        sets.append(f"ray.num_cpus={args.cpus}")
    cmd = [sys.executable, str(REPO / "jobs" / "tune.py"), *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    campaign = tmp / "campaign_bench" / "campaign"

    t0 = time.perf_counter()
    log1 = open(tmp / "first.log", "w")
    p = subprocess.Popen(cmd, stdout=log1, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    killed = False
    while p.poll() is None and time.perf_counter() - t0 < args.timeout:
        time.sleep(2)
        if len(_finished_trials(campaign, args.epochs)) >= args.kill_after:
            os.killpg(p.pid, signal.SIGKILL)
            killed = True
            break
    p.wait()
    log1.close()
    kill_s = time.perf_counter() - t0
    # Ray's own daemons of the killed job (raylet, GCS, workers) may live outside its process group: kill those
    # of its session (their command lines name the session folder)
    for session in set(re.findall(r"/tmp/ray/(session_[0-9_\-]+)", (tmp / "first.log").read_text())):
        subprocess.run(["pkill", "-9", "-f", session], check=False)
    before_done = _finished_trials(campaign, args.epochs)
    before_reports = _reports(campaign)
    print(f"killed={killed} after {kill_s:.0f} s: {len(before_done)} trials finished, reports {before_reports}",
          flush=True)

    t1 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    resume_s = time.perf_counter() - t1
    (tmp / "second.log").write_text(res.stdout + res.stderr)
    first_text = (tmp / "first.log").read_text()
    after_reports = _reports(campaign)
    import pandas as pd

    table = pd.read_csv(tmp / "campaign_bench" / "results.csv") if res.returncode == 0 else None
    untouched = {t: after_reports.get(t) == n for t, n in before_reports.items() if t in before_done}
    # resumed (unfinished at the kill, with >= 1 epoch reported then): did Ray Train continue from a checkpoint?
    resumed = {}
    for trial_dir in (tmp / "campaign_bench" / "trials").glob("trial_*"):
        ckpts = sorted(trial_dir.glob("epoch_*"))
        if ckpts:
            hist = json.loads((ckpts[-1] / "history.json").read_text())
            resumed[trial_dir.name] = max(h.get("start_epoch", 0) for h in hist)
    out = {
        "date": dt.date.today().isoformat(), "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
        "command": " ".join(sys.argv), "trials": args.trials, "concurrent": args.concurrent,
        "killed": killed, "seconds_to_kill": kill_s, "finished_before_kill": len(before_done),
        "finished_trials_untouched_by_resume": all(untouched.values()) if untouched else None,
        "max_running_before_kill": _max_running(first_text), "max_running_after": _max_running(res.stdout),
        "resume_returncode": res.returncode, "resume_seconds": resume_s,
        "completed": None if table is None else int((table["status"] == "OK").sum()),
        "trial_start_epochs": resumed,
        "trials_resumed_from_checkpoint": sum(1 for v in resumed.values() if v > 0),
        "best": None if table is None else table.iloc[0][[c for c in table.columns if c.startswith("config/")]
                                                           + ["val_auc"]].to_dict(),
        "output": str(tmp),
    }
    print(json.dumps(out, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    if res.returncode != 0:
        print(res.stdout[-3000:], res.stderr[-3000:])
        sys.exit(1)


if __name__ == "__main__":
    main()
