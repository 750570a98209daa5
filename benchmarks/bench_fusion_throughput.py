"""GraphFusion training throughput vs its image backbone alone at the same batch size, and how busy the input
pipeline keeps the device when training through Ray Train + Ray Data.

    python benchmarks/bench_fusion_throughput.py [--size 512] [--batch 32] [--steps 30] [--nodes 300]
        [--rows 2048] [--ray] [--json OUT]

1. Bare training steps (same run, interleaved): ``graph_fusion`` (MobileNetV3-Large + dilated block + CBAM, GCN
   over ``--nodes``-node vessel graphs, biomarkers, transformer fusion) vs ``timm_classifier`` with the same
   ``mobilenetv3_large_100`` backbone, on device-resident random inputs (bf16 autocast + channels_last on GPU,
   Adam step included). images/s after warm-up; ratio = fusion / backbone (target >= 0.85 on the GPU node;
   issue reference, H100 bf16 512 px: MobileNetV3-Large ~880 images/s, ResNet50 ~720).
2. ``--ray``: ``dr-ray train`` (1 worker, GPU when there is one, 1 epoch) of the same GraphFusion on ``--rows``
   synthetic joined rows written in the stages' schemas (``dr_ray.testing.stages``): the epoch's training
   rows/s and ``busy_fraction`` (share of the epoch the model was not waiting on Ray Data) from the run's
   history, and rows/s relative to step 1's bare GraphFusion rate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _graph_batch(b: int, nodes: int, device):
    import torch
    from torch_geometric.data import Batch, Data

    from dr_ray.training.fusion_data import NODE_INPUT_DIM

    graphs = []
    for _ in range(b):
        e = torch.stack([torch.arange(nodes - 1), torch.arange(1, nodes)])
        graphs.append(Data(x=torch.randn(nodes, NODE_INPUT_DIM), edge_index=torch.cat([e, e.flip(0)], 1),
                           num_nodes=nodes))
    return Batch.from_data_list(graphs).to(device)


def bare_rates(size: int, batch: int, steps: int, nodes: int, device) -> dict:
    import torch

    from dr_ray.models import create_model
    from dr_ray.training.fusion_data import NODE_INPUT_DIM

    fusion = create_model("graph_fusion", input_size=size, node_features=NODE_INPUT_DIM, stats_dim=8)
    backbone = create_model("timm_classifier", backbone="mobilenetv3_large_100", input_size=size)
    x = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    b = {"image": x, "graph": _graph_batch(batch, nodes, device), "stats": torch.randn(batch, 8, device=device),
         "label": torch.randint(0, 2, (batch,), device=device)}
    models = {"graph_fusion": fusion, "backbone": backbone}
    opts = {}
    for name, m in models.items():
        m.to(device).train()
        if device.type == "cuda":
            m.to(memory_format=torch.channels_last)
        opts[name] = torch.optim.Adam(m.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(name):
        m, opt = models[name], opts[name]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = m(b)
        loss_fn(logits.float(), b["label"]).backward()
        opt.step()

    for name in models:  # warm-up (cudnn autotune, allocator)
        for _ in range(3):
            step(name)
    spent = {n: 0.0 for n in models}
    for _ in range(steps):  # interleaved so that both see the same machine state
        for name in models:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(name)
            if device.type == "cuda":
                torch.cuda.synchronize()
            spent[name] += time.perf_counter() - t0
    rates = {n: steps * batch / s for n, s in spent.items()}
    return {"graph_fusion_img_s": rates["graph_fusion"], "backbone_img_s": rates["backbone"],
            "ratio": rates["graph_fusion"] / rates["backbone"],
            "params": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}}


def ray_run(size: int, batch: int, rows: int, nodes: int, use_gpu: bool, cpus: int) -> dict:
    from dr_ray.config import load_config
    from dr_ray.pipelines.train import run_train
    from dr_ray.testing.stages import write_stage_outputs

    with tempfile.TemporaryDirectory() as tmp:
        write_stage_outputs(tmp, n_patients=rows // 2, size=size, map_size=64, nodes=nodes // 2, flaws=False,
                            rows_per_file=256)
        ov = [f"output.dir={tmp}", "data.folds=2", f"train.image_size={size}", f"train.batch_size={batch}",
              "train.epochs=1", "train.folds=[0]", f"train.use_gpu={str(use_gpu).lower()}",
              f"train.cpus_per_worker={max(1, cpus // 4)}", "train.decode_batch_size=32",
              f"train.shuffle_buffer={4 * batch}", "ray.rows_per_file=256"]
        if cpus:
            ov.append(f"ray.num_cpus={cpus}")
        t0 = time.perf_counter()
        s = run_train(load_config(None, ov))
        wall = time.perf_counter() - t0
        f = s["folds"][0]
        return {"train_rows_per_s": f["train_rows_per_s"], "busy_fraction": f["busy_fraction"],
                "train_images": f["train_images"], "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--nodes", type=int, default=300)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--ray", action="store_true", help="also the Ray Train run (input pipeline busy fraction)")
    ap.add_argument("--cpus", type=int, default=0, help="local Ray CPUs (0 = all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from benchmarks._bench_util import cpu_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = {"date": dt.date.today().isoformat(), "machine": torch.cuda.get_device_name() if device.type == "cuda"
           else f"{cpu_model()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
           "torch": torch.__version__, "args": vars(args) | {"json": str(args.json) if args.json else None},
           "bare": bare_rates(args.size, args.batch, args.steps, args.nodes, device)}
    print(json.dumps(res["bare"], indent=1), flush=True)
    if args.ray:
        res["ray"] = ray_run(args.size, args.batch, args.rows, args.nodes, device.type == "cuda", args.cpus)
        res["ray"]["vs_bare_graph_fusion"] = res["ray"]["train_rows_per_s"] / res["bare"]["graph_fusion_img_s"]
        print(json.dumps(res["ray"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
