"""`ray job submit --working-dir . -- python jobs/predict.py --config configs/<x>.yaml` (same arguments as `dr-ray predict`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when dr_ray is not installed

from dr_ray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("predict"))
