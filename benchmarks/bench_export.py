"""Exported models (onnxruntime, TorchScript) against eager PyTorch, per image, on this CPU.

All three run the same work on the same padded batch: normalisation, network, anchors and
post-processing (score threshold, per-level top-k, class-aware NMS, max_det). Models are
seeded random weights with class biases uniform(-3.5, -1.5) so post-processing has
candidates to sort and suppress, as a trained model does. Rounds alternate between the
runtimes so drift in machine load hits all alike; the table shows the median ms per image,
and ``--profile`` adds eager PyTorch's top operators (where its time goes).

    python benchmarks/bench_export.py --presets fast retinanet_resnet50_fpn --sizes 320 512 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build(preset: str, size: int):
    from retinadet.model import build_model

    torch.manual_seed(0)
    model = build_model(preset, num_classes=3, overrides={"preprocess.min_size": size, "preprocess.max_size": size}).eval()
    a = model.cfg.anchors.num_anchors
    with torch.no_grad():
        bias = torch.empty(a, 1).uniform_(-3.5, -1.5) + torch.empty(a, 3).uniform_(-0.1, 0.1)
        model.head.cls_logits.bias.copy_(bias.reshape(-1))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["fast", "retinanet_resnet50_fpn"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[320])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per runtime per round")
    ap.add_argument("--no-torchscript", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print eager PyTorch's top operators")
    args = ap.parse_args()

    import onnxruntime as ort

    from retinadet.export.exporter import export_onnx, export_torchscript, sample_inputs

    torch.set_num_threads(args.threads)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_export_"))
    for preset in args.presets:
        for size in args.sizes:
            model = build(preset, size)
            names = ["a", "b", "c"]
            onnx_path = export_onnx(model, tmp / f"{preset}_{size}.onnx", names, imgsz=size, verify=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
            images, sizes = sample_inputs(model, size, args.batch, seed=3)
            feed = {"images": images.numpy(), "image_sizes": sizes.numpy()}
            net_times, post_times = [], []

            # Each runner binds this iteration's model and inputs (default arguments), and is timed within it.
            def eager(model=model, images=images, sizes=sizes, net_times=net_times, post_times=post_times):
                with torch.no_grad():
                    t0 = time.perf_counter()
                    x = model.normalize(images, sizes)
                    c, d, a, pl = model.forward_raw(x)
                    t1 = time.perf_counter()
                    model.postprocess(c, d, a, pl, sizes, x.shape[-2:])
                    net_times.append(t1 - t0)
                    post_times.append(time.perf_counter() - t1)

            runners = {"eager": eager, "onnxruntime": lambda sess=sess, feed=feed: sess.run(None, feed)}
            if not args.no_torchscript:
                ts_path = export_torchscript(model, tmp / f"{preset}_{size}.torchscript", names, imgsz=size, verify=False)
                ts = torch.jit.load(str(ts_path))

                def torchscript(ts=ts, images=images, sizes=sizes):
                    with torch.no_grad():
                        ts(images, sizes)

                runners["torchscript"] = torchscript
            times = {k: [] for k in runners}
            for fn in runners.values():  # warm-up (first-run allocations, ORT arena, TS profiling runs)
                fn()
                fn()
            net_times.clear()
            post_times.clear()
            for _ in range(args.rounds):
                for name, fn in runners.items():
                    for _ in range(args.runs):
                        t0 = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - t0)
            ms = {k: 1000 * statistics.median(v) / args.batch for k, v in times.items()}
            rows.append((preset, f"{args.batch}x3x{images.shape[-2]}x{images.shape[-1]}", ms,
                         1000 * statistics.median(net_times) / args.batch, 1000 * statistics.median(post_times) / args.batch))
            if args.profile:
                from torch.profiler import profile

                with torch.no_grad(), profile() as prof:
                    eager()
                print(f"--- eager {preset} {size}: top operators")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))

    print(f"\nms per image (median), {args.threads} threads, batch {args.batch}; eager = network + postprocess")
    header = f"{'preset':<24} {'input':<14} {'eager':>8} {'(net':>7} {'post)':>7} {'onnxrt':>8} {'torchscr':>9} {'eager/ort':>9}"
    print(header)
    print("-" * len(header))
    for preset, shape, ms, net, post in rows:
        ts = f"{ms['torchscript']:9.1f}" if "torchscript" in ms else f"{'-':>9}"
        print(f"{preset:<24} {shape:<14} {ms['eager']:8.1f} {net:7.1f} {post:7.1f} {ms['onnxruntime']:8.1f} {ts} "
              f"{ms['eager'] / ms['onnxruntime']:8.2f}x")


if __name__ == "__main__":
    main()
