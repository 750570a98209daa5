"""Vessel graphs and biomarkers on Ray: ``ray job submit --working-dir . -- python jobs/vessels.py --config configs/eyepacs.yaml`` (the shipped vessel model; ``--set vessels.model_dir=...`` for another)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when dr_ray is not installed

from dr_ray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("vessels"))
