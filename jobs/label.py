"""Label a dataset in one stream (preprocess -> vessel + lesion models -> graphs and biomarkers) on Ray:
``ray job submit --working-dir . -- python jobs/label.py --config configs/eyepacs.yaml --set pseudo_labels.model_dir=...`` (vessels.model_dir empty = the shipped vessel model)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when dr_ray is not installed

from dr_ray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("label"))
