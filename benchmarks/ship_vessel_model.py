"""Copy a finished `dr-ray train-vessels` run into the package as the shipped vessel model.

    python benchmarks/ship_vessel_model.py [--run outputs/vessel_model/train_vessels_shipped]
        [--data ../shared/data] [--dest dr_ray/vessels/data/vessel_model]

Writes ``--dest``/model.pt and metadata.json (the run's, plus ``train_images`` / ``val_images`` and
``data_sha256``: per dataset, sha256 over the sorted "relative path<TAB>file sha256" lines of every image and label
file the run read, so a card reader can check they hold the same data) and prints those hashes for the model card.
The weights are not touched (load_model_dir checks model.pt against the sha256 in the metadata).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_hashes(run_config: dict, data: Path) -> dict[str, dict]:
    """Per dataset of the run: files, and sha256 over 'relpath<TAB>sha256' lines of its catalog's files."""
    from dr_ray.io.catalog import read_catalog

    tv = run_config["train_vessels"]
    out = {}
    for name, root in zip(tv["datasets"], tv["roots"]):
        root_path = (REPO / root).resolve() if not Path(root).is_absolute() else Path(root)
        files = set()
        for row in read_catalog(name, str(root_path)).table.to_pylist():
            for key in ("path", "vessel_mask_path", "av_mask_path", "fov_mask_path"):
                if row.get(key):
                    files.add(Path(row[key]))
        lines = sorted(f"{f.relative_to(data)}\t{file_sha256(f)}" for f in files)
        out[name] = {"files": len(lines), "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest()}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="outputs/vessel_model/train_vessels_shipped")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--dest", default=str(REPO / "dr_ray" / "vessels" / "data" / "vessel_model"))
    args = ap.parse_args(argv)
    run, dest, data = Path(args.run), Path(args.dest), Path(args.data).resolve()
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "model" / "metadata.json").read_text())
    meta["train_images"], meta["val_images"] = metrics["train_images"], metrics["val_images"]
    meta["final_validation"] = metrics["final"]
    meta["data_sha256"] = data_hashes(meta["config"], data)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "model" / "model.pt", dest / "model.pt")
    (dest / "metadata.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    print(json.dumps({"dest": str(dest), "model_sha256": file_sha256(dest / "model.pt"),
                      "train_data_hash": meta.get("train_data_hash"), "data_sha256": meta["data_sha256"],
                      "final": metrics["final"]}, indent=1))
    return meta


if __name__ == "__main__":
    main()
