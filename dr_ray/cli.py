"""``dr-ray <stage> --config FILE [--set key=value ...]``: one subcommand per pipeline stage.

``jobs/<stage>.py`` call :func:`main` with their stage name, so ``ray job submit -- python jobs/preprocess.py``
and ``dr-ray preprocess`` take the same arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from dr_ray.config import Config, ConfigError, load_config

log = logging.getLogger("dr_ray")

# Per stage: a run small enough for CI and a first try.
# 4 patients in 2 folds: each fold's training side keeps >= 2 patients for the inner validation split (nested CV)
_DATA_SMOKE = (
    "data.limit=11",
    "data.folds=2",
    "data.synthetic.n_patients=4",
    "data.synthetic.width=768",
    "data.synthetic.height=512",
)
_TRAIN_SMOKE = (
    "train.image_size=64",
    "train.lesion_size=32",
    "train.hidden_dim=32",
    "train.heads=2",
    "train.fusion_layers=1",
    "train.gnn_layers=1",
    "train.epochs=2",
    "train.batch_size=8",
    "train.folds=[0]",
    "train.num_workers=1",
    "train.use_gpu=false",
    "train.pretrained=false",  # a smoke run never downloads weights (CI, offline nodes)
    "train.name=train_smoke",
)
SMOKE_OVERRIDES: dict[str, tuple[str, ...]] = {
    # a few synthetic images, small frames
    "preprocess": (*_DATA_SMOKE, "preprocess.size=256"),
    "catalog": (*_DATA_SMOKE, "preprocess.size=256"),
    # 2 epochs of 64-px patches on CPU, one worker; the config's datasets are kept (synthetic when none).
    # Its own run name, so a smoke test never resumes (or pollutes) the full run's checkpoints.
    "train-vessels": (
        "train_vessels.synthetic_images=4",
        "train_vessels.synthetic_size=128",
        "train_vessels.patch_size=64",
        "train_vessels.patches_per_image=2",
        "train_vessels.batch_size=4",
        "train_vessels.epochs=2",
        "train_vessels.num_workers=1",
        "train_vessels.use_gpu=false",
        "train_vessels.name=train_vessels_smoke",
    ),
    # small batches on CPU; the input (a preprocess run) and vessels.model_dir come from the config
    "vessels": (
        "vessels.batch_size=4",
        "vessels.graph_batch_size=2",
        "vessels.gpus_per_actor=0",
    ),
    "train-lesions": (
        "train_lesions.synthetic_images=4",
        "train_lesions.synthetic_size=128",
        "train_lesions.image_size=128",
        "train_lesions.patch_size=64",
        "train_lesions.patches_per_image=2",
        "train_lesions.val_patches_per_image=2",
        "train_lesions.batch_size=4",
        "train_lesions.epochs=2",
        "train_lesions.num_workers=1",
        "train_lesions.use_gpu=false",
        "train_lesions.encoder=resnet18",
        "train_lesions.pretrained=false",
        "train_lesions.name=train_lesions_smoke",
    ),
    "pseudo-labels": (
        "pseudo_labels.batch_size=4",
        "pseudo_labels.gpus_per_actor=0",
    ),
    # the three stages in one stream: a few synthetic images, small batches on CPU; the model dirs come from the config
    "label": (*_DATA_SMOKE, "preprocess.size=256", "label.batch_size=4", "label.gpus_per_actor=0",
              "vessels.batch_size=4", "vessels.graph_batch_size=2", "vessels.gpus_per_actor=0",
              "pseudo_labels.batch_size=4", "pseudo_labels.gpus_per_actor=0"),
    # a tiny GraphFusion at 64 px for 2 epochs on one fold, on CPU; its own run name
    "train": _TRAIN_SMOKE,
    # val_loss: defined on any fold (a smoke fold of 4 images may hold one class, where AUC is undefined)
    "tune": (*_TRAIN_SMOKE, "tune.num_samples=2", "tune.max_concurrent=1", "tune.gpus_per_worker=0",
             "tune.metric=val_loss", "tune.mode=min", "tune.max_epochs=1", "tune.name=tune_smoke"),
    # the train run comes from the config or --set predict.run_dir=...
    "predict": ("predict.mc_samples=2", "predict.batch_size=8", "predict.gpus_per_actor=0"),
    "evaluate": ("evaluate.run=train_smoke", "evaluate.mc_samples=3", "evaluate.gradcam_images=4",
                 "evaluate.uncertain_cases=4", "evaluate.batch_size=8", "evaluate.gpus_per_actor=0"),
}
# the whole chain: every stage's smoke settings (the demo's stages read each other's outputs by these names)
SMOKE_OVERRIDES["demo"] = tuple(dict.fromkeys(o for stage in ("preprocess", "train-vessels", "vessels", "train-lesions",
                                                               "pseudo-labels", "label", "train", "tune",
                                                               "evaluate")
                                              for o in SMOKE_OVERRIDES[stage]))


# Smoke settings that depend on the config's model, applied after SMOKE_OVERRIDES: a swin_unet (configs/
# paper_cff.yaml) keeps its Swin encoder, whose window 7 needs patches of a multiple of 224 px.
SMOKE_MODEL_OVERRIDES: dict[tuple[str, str], tuple[str, ...]] = {
    ("train_lesions", "swin_unet"): ("train_lesions.encoder=swin_tiny_patch4_window7_224",
                                     "train_lesions.synthetic_size=224", "train_lesions.image_size=224",
                                     "train_lesions.patch_size=224"),
}
_SMOKE_MODEL_STAGES = {"train-lesions": "train_lesions", "demo": "train_lesions"}


def smoke_overrides(stage: str, config: str | None, overrides: Sequence[str]) -> list[str]:
    """The ``--smoke-test`` overrides of ``stage`` for ``config`` (+ the user's ``overrides``): SMOKE_OVERRIDES, then
    SMOKE_MODEL_OVERRIDES for the model the config trains in that stage's section."""
    out = list(SMOKE_OVERRIDES.get(stage, ()))
    section = _SMOKE_MODEL_STAGES.get(stage)
    if section is not None:
        model = getattr(load_config(config, list(overrides)), section).model
        out += SMOKE_MODEL_OVERRIDES.get((section, model), ())
    return out


def _print_stage(summary, what: str) -> int:
    """A batch stage's reconciled counts and where its outputs are; exit code 1 unless they reconcile."""
    print("\n".join(summary.lines()))
    print(f"\n{what}: {summary.output}/status=ok/   quarantine: {summary.output}/quarantine.csv"
          f"   summary: {summary.output}/summary.json")
    return 0 if summary.reconciles else 1


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and v != v) else f"{v:.3f}"


def _print_training(stage: str, summary: dict, *extra: str) -> int:
    import json

    final = summary["final"]
    print(f"{stage}: {len(summary['train_images'])} training / {len(summary['val_images'])} validation "
          f"images, {final['epoch']} epochs")
    print("  last epoch: " + json.dumps({k: v for k, v in final.items() if k.startswith(("train_", "val_"))}))
    print("   ".join([f"  model: {summary['model_dir']}", *extra, f"metrics: {summary['metrics_path']}"]))
    return 0


def _preprocess(cfg: Config) -> int:
    from dr_ray.pipelines.preprocess import run_preprocess

    return _print_stage(run_preprocess(cfg), "processed images")


def _catalog(cfg: Config) -> int:
    from dr_ray.io import fs
    from dr_ray.io.catalog import problems_table, write_catalog
    from dr_ray.pipelines.catalog import build_catalog
    from dr_ray.pipelines.runtime import stage_dir

    result = build_catalog(cfg.data, cfg.output.dir)
    out = stage_dir(cfg.output.dir, "catalog")
    write_catalog(result.table, fs.join(out, "catalog.parquet"))
    fs.write_csv(fs.join(out, "label_problems.csv"), problems_table(result.problems))
    print(f"catalog: {result.table.num_rows} rows, {len(result.problems)} label problems -> {out}/")
    return 0


def _train_vessels(cfg: Config) -> int:
    from dr_ray.pipelines.train_vessels import run_train_vessels

    return _print_training("train-vessels", run_train_vessels(cfg))


def _vessels(cfg: Config) -> int:
    from dr_ray.pipelines.vessels import run_vessels

    return _print_stage(run_vessels(cfg), "vessel graphs and biomarkers")


def _train_lesions(cfg: Config) -> int:
    from dr_ray.pipelines.train_lesions import run_train_lesions

    summary = run_train_lesions(cfg)
    return _print_training("train-lesions", summary, f"encoder: {summary['encoder_path']}")


def _pseudo_labels(cfg: Config) -> int:
    from dr_ray.pipelines.pseudo_labels import run_pseudo_labels

    return _print_stage(run_pseudo_labels(cfg), "lesion maps and statistics")


def _label(cfg: Config) -> int:
    from dr_ray.pipelines.label import run_label

    codes = [_print_stage(s, what) for s, what in zip(run_label(cfg).values(), (
        "processed images", "vessel graphs and biomarkers", "lesion maps and statistics"))]
    return max(codes)


def _train(cfg: Config) -> int:
    from dr_ray.pipelines.train import run_train

    s = run_train(cfg)
    d = s["data"]
    print(f"train {s['name']}: {s['model']} ({', '.join(s['modalities'])}), task {s['task']}; data "
          f"{d['rows_in']} images = joined {d['written']} + quarantined {d['quarantined']}")
    for f in s["folds"]:
        print(f"  fold {f['fold']}: best epoch {f['best_epoch']}/{f['epochs_run']}, outer-test AUC {_fmt(f.get('auc'))}, "
              f"accuracy {_fmt(f.get('accuracy'))}, sensitivity {_fmt(f.get('sensitivity'))}, "
              f"specificity {_fmt(f.get('specificity'))}, QWK {_fmt(f.get('qwk'))}")
    pooled = s.get("pooled", {}).get("metrics", {})
    for m in ("auc", "accuracy", "qwk"):
        c = s["cv"].get(m)
        if c:
            print(f"  mean over outer test folds, {m}: {_fmt(c['mean'])} (95% t CI {_fmt(c['ci_low'])}.."
                  f"{_fmt(c['ci_high'])}{', clipped' if c.get('clipped') else ''}, {c['n']} folds)")
        b = pooled.get(m)
        if b:
            ci = (f"95% patient bootstrap CI {_fmt(b['ci_low'])}..{_fmt(b['ci_high'])}" if b.get("ci_low") is not None
                  else f"no CI: {b.get('reason', 'not computed')}")
            print(f"  pooled out-of-fold {m}: {_fmt(b['estimate'])} ({ci})")
    if "comparison" in s:
        r = s["comparison"]["metrics"].get("auc")
        if r:
            print(f"  vs {s['comparison']['baseline']}: AUC difference {_fmt(r['mean_diff'])}, corrected resampled "
                  f"t p = {_fmt(r['p'])}")
        d = s["comparison"].get("delong", {})
        if d.get("p") is not None:
            print(f"  vs {s['comparison']['baseline']}: DeLong ({d['metric']}, {d['paired_images']} images) "
                  f"p = {_fmt(d['p'])}")
    print(f"  models: {s['output']}/fold_*/model   summary: {s['cv_path']}   tensorboard: {s['output']}/tensorboard")
    return 0


def _tune(cfg: Config) -> int:
    from dr_ray.pipelines.tune import run_tune

    s = run_tune(cfg)
    metric = cfg.tune.metric
    print(f"tune {s['name']}: {s['completed']}/{s['trials']} trials completed, best {metric} "
          f"{_fmt(s['best'][metric])} with {s['best']['config']}")
    print(f"  results: {s['results_csv']}   best config: {s['best_config_path']}   campaign: {s['campaign']}")
    return 0


def _evaluate(cfg: Config) -> int:
    from dr_ray.pipelines.evaluate import run_evaluate

    s = run_evaluate(cfg)
    p = s["pooled"]
    if cfg.evaluate.dataset:
        ci = s["pooled_ci"].get("auc") or {}
        print(f"evaluate {s['run']} on {s['dataset']}: {s['scored']} graded images scored, {s['ungraded']} "
              f"without a grade, {s['quarantined']} quarantined; AUC {_fmt(p.get('auc'))} (95% patient bootstrap "
              f"CI {_fmt(ci.get('ci_low'))}..{_fmt(ci.get('ci_high'))}), accuracy {_fmt(p.get('accuracy'))}")
        print(f"  report: {s['report']}")
        return 0
    n = sum(c["rows_in"] for c in s["counts"])
    q = sum(c["quarantined"] for c in s["counts"])
    print(f"evaluate {s['run']}: {n} images = predicted {n - q} + quarantined {q}; pooled out-of-fold AUC "
          f"{_fmt(p.get('auc'))}, accuracy {_fmt(p.get('accuracy'))}, ECE {_fmt(p.get('ece'))}")
    print(f"  report: {s['report']}")
    return 0


def _predict(cfg: Config) -> int:
    from dr_ray.pipelines.predict import run_predict

    s = run_predict(cfg)
    code = _print_stage(s, "predictions")
    print(f"  ensemble of {cfg.predict.run_dir} (predict.json in {s.output})")
    return code


def _demo(cfg: Config) -> int:
    from dr_ray.pipelines.demo import run_demo

    s = run_demo(cfg)
    print("\n".join(s["lines"]))
    print(f"\nreport: {s['report']}")
    return 0


STAGES: dict[str, tuple[str, Callable[[Config], int]]] = {
    "preprocess": ("decode, crop to the fundus, resize, CLAHE; write Parquet shards + quarantine", _preprocess),
    "catalog": ("read a dataset's labels into a catalog Parquet with patient-level folds", _catalog),
    "train-vessels": ("train the vessel U-Net on Ray Train (patches, Dice+BCE); write a model directory + metrics",
                      _train_vessels),
    "vessels": ("segment vessels (model actor pool), build vessel graphs, optic disc, A/V and biomarkers; "
                "write Parquet shards + quarantine", _vessels),
    "train-lesions": ("train the multi-label lesion U-Net / Swin U-Net on Ray Train; write a model directory, "
                      "the encoder for transfer, and metrics", _train_lesions),
    "pseudo-labels": ("lesion maps for every preprocessed image (model actor pool): maps + per-lesion area and "
                      "component counts; write Parquet shards + quarantine", _pseudo_labels),
    "label": ("preprocess, vessel graphs + biomarkers and lesion maps in one stream (each JPEG decoded once, "
              "both models in one actor pool); write the preprocess/, vessels/ and pseudo_labels/ folders", _label),
    "train": ("train a DR classifier (baseline or fusion model) on Ray Train with patient-level K-fold CV from the "
              "joined stage outputs; write fold models and cv.json", _train),
    "tune": ("ASHA search over train settings on Ray Tune (one Ray Train run per trial); write the results "
             "table and the best config as a training YAML", _tune),
    "predict": ("a train run's fold models as an ensemble over a processed dataset (this output.dir): mean "
                "probability, fold spread and MC-dropout entropy per image; write Parquet shards + quarantine",
                _predict),
    "evaluate": ("out-of-fold predictions of a train run's fold models with MC-dropout uncertainty, or (with "
                 "evaluate.dataset) `predict`'s output scored against another dataset's grades; write one "
                 "self-contained HTML report", _evaluate),
    "demo": ("the whole chain on the built-in sample: preprocess, vessels, pseudo labels, train, tune, evaluate",
             _demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dr-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (help_text, _) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_stage_arguments(p, name)
    return parser


def add_stage_arguments(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--config", default=None, help="YAML config (merged over configs/defaults.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set preprocess.size=1024 (repeatable)")
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny run: " + " ".join(SMOKE_OVERRIDES.get(stage, ())))
    p.add_argument("--log-level", default="INFO")


def run_stage(stage: str, args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = [*(smoke_overrides(stage, args.config, args.overrides) if args.smoke_test else ()),
                     *args.overrides]
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"dr-ray {stage}: config error: {e}", file=sys.stderr)
        return 2
    try:
        return STAGES[stage][1](cfg)
    except (OSError, ValueError) as e:
        # Missing dataset folders or label files, a refused resume, a bad catalog: the message says what and
        # where; the traceback is for developers.
        log.debug("traceback", exc_info=True)
        print(f"dr-ray {stage}: error: {type(e).__name__}: {e}\n(rerun with --log-level DEBUG for the traceback)",
              file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_stage(args.stage, args)


def job_main(stage: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jobs/<stage>.py``: the stage's own arguments, no subcommand."""
    p = argparse.ArgumentParser(prog=f"jobs/{stage}.py", description=STAGES[stage][0])
    add_stage_arguments(p, stage)
    return run_stage(stage, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
