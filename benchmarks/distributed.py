"""Distributed batch-joint guidance: throughput and per-step communication against the number of
processes (CPU, gloo), and a cost model on paper for 8 GPUs, 10^4 SDXL samples ([scale]).

    python benchmarks/distributed.py      # writes benchmarks/results/distributed.md (~1-2 min)

Measured: P = 1 and 2 processes launched by torch.multiprocessing spawn (gloo, one torch thread
each), a global batch of n samples of shape 4x8x8 (D = 256) drawn with 20 DDIM steps by the
exact denoiser of an 8-mode Gaussian mixture, guided toward N_r = 200 references of 2 modes with
``distributed_guidance(refs)`` (the untuned default: two-scale Gaussian, clipped steps, last 10 %
unguided) and with the RFF reference term (F = 2,048, sigma = 16). Every process runs
``sample_distributed``; wall time is the slowest process's, best of ``--repeats`` after a
warm-up. Bytes are what one process sends and receives in the guidance's all-gathers (row counts
included), per guided step. The P = 2 samples are compared with the P = 1 samples.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, description, load_average, positive_int, report_header, write_report  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "distributed.md"
SHAPE = (4, 8, 8)
STEPS = 20
N_REFS = 200


def _setup():
    from mmdg_lite.denoisers import GaussianMixtureDenoiser
    from mmdg_lite.sampling import make_scheduler
    from mmdg_lite.toys.mixtures import GaussianMixture, draw_references, random_mixture

    d = math.prod(SHAPE)
    mix = random_mixture(8, dim=d, seed=0, mean_scale=1.0, std=0.5)
    den = GaussianMixtureDenoiser.from_mixture(mix, make_scheduler("ddim").alphas_cumprod)
    target = GaussianMixture(mix.means[:2], torch.ones(2), mix.std)
    refs = draw_references(target, N_REFS, seed=1).reshape(N_REFS, *SHAPE)
    return den, refs


def _worker(rank: int, world: int, port: int, out: str, sizes: list[int], repeats: int) -> None:
    import torch.distributed as dist

    from mmdg_lite import GaussianKernel
    from mmdg_lite.distributed import (all_gather_rows, distributed_guidance, init_distributed,
                                       sample_distributed)

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    init_distributed("gloo", timeout_s=120)
    comm = [0.0]
    gather = dist.all_gather

    def timed_gather(*a, **kw):  # the time spent inside the guidance's collectives
        t0 = time.perf_counter()
        r = gather(*a, **kw)
        comm[0] += time.perf_counter() - t0
        return r

    den, refs = _setup()
    rows, samples = [], {}
    for n in sizes:
        for mode, kw in (("exact", {}), ("rff", dict(kernel=GaussianKernel(16.0), rff_features=2048))):
            g = distributed_guidance(refs, **kw)
            best = None
            for rep in range(repeats + 1):  # the first run is a warm-up
                dist.barrier()
                comm[0] = 0.0
                dist.all_gather = timed_gather
                t0, c0 = time.perf_counter(), time.process_time()
                res = sample_distributed(den, n, SHAPE, guidance=g, scheduler="ddim", num_steps=STEPS,
                                         seed=0, gather=False)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                dist.all_gather = gather
                walls = [None] * world
                dist.all_gather_object(walls, (wall, comm[0], cpu))
                slowest = (max(w[0] for w in walls), max(w[1] for w in walls), max(w[2] for w in walls))
                if rep > 0 and (best is None or slowest[0] < best[0]):
                    best = slowest
            guided = sum(1 for i in range(STEPS) if g.step_size.weight(i, STEPS, 0.5) > 0)
            tr = g.generated.traffic
            rows.append(dict(n=n, mode=mode, world=world, wall_s=best[0], comm_s=best[1], cpu_s=best[2],
                             guided_steps=guided, gathers=tr["gathers"],
                             sent_per_step=tr["bytes_sent"] / guided,
                             received_per_step=tr["bytes_received"] / guided))
            full, _ = all_gather_rows(res.samples)
            samples[f"{n}/{mode}"] = full.tolist()
    if rank == 0:
        Path(out, f"world{world}.json").write_text(json.dumps(dict(rows=rows, samples=samples)))
    dist.destroy_process_group()


def measure(world: int, sizes: list[int], repeats: int, out: Path) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(world, port, str(out), sizes, repeats), nprocs=world, join=True)
    return json.loads((out / f"world{world}.json").read_text())


# -- the cost model on paper ---------------------------------------------------------------------
GPUS = 8
SAMPLES = 10_000
SDXL = (4, 128, 128)
STEPS_SDXL = 50
UNET_S = 3142 / (500 * 50)  # s per sample-step: Table 3, 500 SDXL samples, 50 steps, RTX 4090
LINKS = {"NVLink (8x H100 SXM, NCCL all-gather bus bandwidth ~300 GB/s)": 300e9,
         "PCIe 4.0 without NVLink / 100 Gb/s network between nodes (~10 GB/s)": 10e9}
FLOPS = 50e12  # float32 FLOP/s a current GPU sustains on the gradient's matrix products
RFF_F = 4096
# relative error of the textbook RFF derivative J_phi^T mu ~ C sqrt(D / F): rff.md fits C = 1.59 at
# D = 1,024 and 1.56 at D = 100 (benchmarks/performance.py --rff)
RFF_DERIVATIVE_C = 1.6


def cost_model() -> list[str]:
    d = math.prod(SDXL)
    b = SAMPLES // GPUS
    batch_bytes = SAMPLES * d * 4  # the global batch in float32
    per_gpu_in = (GPUS - 1) * b * d * 4  # ring all-gather: each GPU receives the other shards
    unet_step = b * UNET_S  # each GPU's UNet work per step (micro-batched)
    grad_flop = 4 * b * (SAMPLES + N_REFS) * d  # distances + weighted sum, local rows only
    lines = ["", "## Cost model on paper: 8 GPUs, 10^4 samples, SDXL latents", "",
             f"Global batch B = {SAMPLES:,} latents of {SDXL[0]}x{SDXL[1]}x{SDXL[2]} (D = {d:,}) in "
             f"float32, N_r = {N_REFS} references, {STEPS_SDXL} steps, P = {GPUS} GPUs with "
             f"{b:,} samples each. UNet time: {UNET_S:.3f} s per sample-step (the paper's Table 3: "
             f"500 SDXL samples in 3,142 s at 50 steps on one RTX 4090; an H100 is faster, which only "
             f"raises the ratios below by that factor).", "",
             "| quantity | value |", "|---|---:|",
             f"| one sample's latent | {d * 4 / 2**10:,.0f} KiB |",
             f"| all-gathered global batch per step (held by every GPU) | {batch_bytes / 1e9:.2f} GB |",
             f"| received by each GPU per step ((P-1)/P of it) | {per_gpu_in / 1e9:.2f} GB |",
             f"| sent by each GPU per step (its shard) | {b * d * 4 / 1e6:,.0f} MB |",
             f"| row counts (all-gather of one int64 per GPU) | {GPUS * 8} B |",
             f"| UNet time per step per GPU ({b:,} x {UNET_S:.3f} s) | {unet_step:,.0f} s |",
             f"| guidance gradient per step per GPU (4 b (B + N_r) D = {grad_flop:.2e} FLOP at "
             f"{FLOPS / 1e12:.0f} TFLOP/s) | {grad_flop / FLOPS:.3f} s |",
             f"| the same on one GPU for the whole batch (no split) | {GPUS * grad_flop / FLOPS:.2f} s |",
             f"| guidance memory per GPU: global batch + gather buffers (~2x) + (b, B + N_r) weights | "
             f"{(2 * batch_bytes + b * (SAMPLES + N_REFS) * 4) / 1e9:.1f} GB |",
             f"| whole run ({STEPS_SDXL} steps), per GPU | {STEPS_SDXL * unet_step / 3600:.1f} h |", "",
             "| link | all-gather per step | / UNet time per step | whole run |", "|---|---:|---:|---:|"]
    for name, bw in LINKS.items():
        t = per_gpu_in / bw
        lines.append(f"| {name} | {t * 1e3:,.0f} ms | {t / unet_step:.1e} | {STEPS_SDXL * t:,.1f} s |")
    phi_mu = RFF_F * 4
    phi_m = RFF_F * d * 4
    need = (RFF_DERIVATIVE_C / 0.1) ** 2  # F / D for a 10 % error
    lines += ["",
              "The all-gather is four to five orders of magnitude below the UNet's time: the batch-joint "
              "coupling is cheap to keep exact. Every GPU must hold the global batch (2.6 GB) and run "
              "its UNet in micro-batches (`MicroBatched(UNetDenoiser(unet), 16)`), since guidance needs all its "
              f"{b:,} samples at the same step.", "",
              f"**The RFF alternative.** All-reducing the generated set's mean embedding "
              f"mu = (1/B) sum_j phi(z_j) instead of the points costs F floats: {phi_mu / 2**10:.0f} KiB "
              f"per step at F = {RFF_F:,}. But the repulsion gradient from mu alone is the feature "
              f"derivative J_phi(z_i)^T mu, whose relative error grows like {RFF_DERIVATIVE_C:g} sqrt(D / F) "
              f"(benchmarks/results/rff.md): {RFF_DERIVATIVE_C * math.sqrt(d / RFF_F):.1f} at D = {d:,}, F = {RFF_F:,} "
              f"(10 % would need F = {need:.0f} D = {need * d:.1e} features, a {need * d * d * 4 / 1e12:,.1f} TB "
              f"frequency matrix). The accurate RFF form needs M = (1/B) sum_j phi(z_j) z_j^T, F x D = "
              f"{phi_m / 1e9:.2f} GB per step, no smaller than the points at this B. So this module "
              "all-gathers the points, and with `rff_features` only the reference term uses RFF."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--sizes", type=positive_int, nargs="+", default=[256, 1024])
    ap.add_argument("--worlds", type=positive_int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=positive_int, default=2)
    args = ap.parse_args()
    for name in ("sizes", "worlds"):  # a repeat was measured again and listed twice
        values = getattr(args, name)
        if len(set(values)) < len(values):
            ap.error(f"argument --{name}: each value once; got {' '.join(map(str, values))}")
    if min(args.sizes) < max(args.worlds):  # every process needs a sample: it failed in the spawned processes
        ap.error(f"argument --sizes: each size must be >= the largest of --worlds ({max(args.worlds)}); "
                 f"got {' '.join(map(str, args.sizes))}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load = load_average()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = {w: measure(w, args.sizes, args.repeats, Path(tmp)) for w in args.worlds}
    for w, r in runs.items():
        print(w, r["rows"], flush=True)
    base = runs[args.worlds[0]]
    lines = report_header("Distributed batch-joint guidance: processes, throughput, communication",
                          command_line(), 1, load)
    lines += ["", "## Measured on CPU processes (gloo)", "",
              f"Global batch of n samples, shape {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} (D = {math.prod(SHAPE)}), "
              f"{STEPS} DDIM steps ({STEPS - 2} guided), exact 8-mode mixture denoiser, N_r = {N_REFS}; "
              "one torch thread per process (P processes use P cores; these cores are shared, so read "
              "the speed-ups with the load average above). Wall: the slowest process, best of "
              f"{args.repeats}. Comm: time inside the all-gathers (includes waiting for the slower "
              "process). CPU s: the largest process CPU time (time.process_time; one thread each), which "
              "the load of other users does not inflate: it shows the work each process does. Bytes "
              "per guided step, for one process. Max diff: largest |sample - the "
              f"P = {args.worlds[0]} sample| over the global batch.", "",
              "| n | reference term | P | wall s | samples/s | speed-up | CPU s / process | comm s | "
              "all-gathers | sent / step | received / step | max diff |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in args.worlds:
        for row in runs[w]["rows"]:
            b0 = next(r for r in base["rows"] if r["n"] == row["n"] and r["mode"] == row["mode"])
            key = f"{row['n']}/{row['mode']}"
            diff = float((torch.tensor(runs[w]["samples"][key]) - torch.tensor(base["samples"][key])).abs().max())
            lines.append(
                f"| {row['n']} | {row['mode']} | {w} | {row['wall_s']:.2f} | {row['n'] / row['wall_s']:.0f} | "
                f"{b0['wall_s'] / row['wall_s']:.2f} | {row['cpu_s']:.2f} | {row['comm_s']:.3f} | {row['gathers']} | "
                f"{row['sent_per_step'] / 1e3:.1f} kB | {row['received_per_step'] / 1e3:.1f} kB | {diff:.1e} |")
    lines += ["", "Per guided step each process sends its shard (b x D x 4 bytes, padded to the largest "
              "shard) and receives the others' ((P - 1) b D x 4 bytes); P = 1 moves nothing. The "
              "first guided step gathers once more (the data scale). With RFF the points are still "
              "gathered (the repulsion is exact), so the bytes are the same."]
    lines += cost_model()
    write_report(OUT, lines)
    OUT.with_suffix(".json").write_text(json.dumps({str(w): r["rows"] for w, r in runs.items()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
