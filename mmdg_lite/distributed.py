"""Batch-joint MMD guidance across processes and GPUs on torch.distributed (beyond the paper).

MMD guidance couples the batch: sample i's gradient (Eq. 6)

    grad_i = (2/B^2) sum_{j<=B} grad_1 k(z_i, z_j) - (2/(B N_r)) sum_{j<=N_r} grad_1 k(z_i, y_j)

sums over every other generated sample, so splitting the prompts across processes (accelerate's
``split_between_processes``) guides each shard toward the references on its own and changes the
result. Here each process holds a contiguous shard of the global batch and, at every guided
step, the processes all-gather the generated points (B x D numbers; an all-gather of the sizes
first lets shards differ by one). Each process then computes the gradient of its own rows
against the global batch and the (replicated) references, so every shard's gradient equals the
single-process gradient over the global batch, and the work of the O(B (B + N_r) D) gradient
divides by P. The data scale and the median bandwidths are read from the global batch too.

Launch with ``torchrun --nproc_per_node P script.py`` or ``accelerate launch script.py`` (they set
RANK, WORLD_SIZE, MASTER_ADDR, LOCAL_RANK); ``init_distributed`` joins that group (gloo on CPU,
nccl on GPU, with a timeout so a failed peer ends the run with an error instead of a hang), or
reuses one that accelerate or the caller already set up. Then::

    guidance = distributed_guidance(references, strength=1.0)      # any MMDGuidance argument
    out = sample_distributed(denoiser, 10_000, (4, 128, 128), guidance=guidance, seed=0)

``sample_distributed`` gives every sample its own generator seeded by (seed, global index)
(``sample(per_sample_seed=True)``), so P processes return the samples a single process would
(up to the float rounding of batched arithmetic: ~1e-12 in float64; in float32 the ~1e-7
differences can grow over the steps for a few samples, to ~1e-3 at 1,000 samples x 50 steps).

Not distributed: the reference code's memory mode (``generated_set="memory"``) guides one sample
at a time against the samples finished before it, which is inherently sequential; it is refused.
References are replicated on every process (each holds all N_r); sharding them is not done.
With ``rff_features`` the RFF reference summaries are built identically on every process and the
repulsion among the generated points stays exact (the points are still all-gathered).
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import socket
from datetime import timedelta
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ._validation import check_bool, check_int, check_positive
from .guidance.generated import BatchSet, _uniform
from .guidance.guide import MMDGuidance
from .kernels import GaussianKernel, Kernel, ProductKernel
from .mmd import _chunks, _gradw, _prompt_factors, _Prepared, _not_finite_advice
from .rff import RFFReferenceEmbedding
from .sampling import SampleResult, _check_device, _check_shape, check_prompt_inputs, guidance_hooks, sample
from .seeding import check_seed

__all__ = ["DistributedBatchSet", "DistributedGuidanceError", "distributed_guidance",
           "sample_distributed", "init_distributed", "all_gather_rows", "shard_bounds", "MicroBatched"]


class DistributedGuidanceError(RuntimeError):
    """A collective did not complete: another process failed, stalled, or disagrees on the run."""


def init_distributed(backend: str | None = None, timeout_s: float = 30.0) -> tuple[int, int]:
    """Join the process group torchrun / accelerate launch describe in the environment; (rank, world).

    backend: "nccl" when CUDA is available, else "gloo". ``timeout_s`` bounds every collective:
    a process whose peer died or hangs raises after that many seconds (gloo raises in the
    process; nccl's watchdog aborts it). An existing group (e.g. from ``accelerate.Accelerator()``)
    is reused as it is. Run without a launcher, it forms a 1-process group on this machine.
    """
    timeout_s = check_positive(timeout_s, "timeout_s")  # checked even when a group exists already
    if timeout_s < 1e-3:  # torch counts whole milliseconds: 0.0001 became a 0 ms rendezvous timeout
        raise ValueError(f"timeout_s must be at least 0.001 (torch's timeouts are whole milliseconds); "
                         f"got {timeout_s!r}")
    if backend is not None and backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' (CPU) or 'nccl' (GPU); got {backend!r}")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    backend = backend if backend is not None else ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():  # was a raw AttributeError (_cuda_setDevice)
        raise ValueError("backend='nccl' needs CUDA GPUs, and torch sees none; use backend='gloo' on CPU")
    if "WORLD_SIZE" in os.environ:  # a launcher's settings: a bad one waited out the timeout, then failed
        world = _env_int("WORLD_SIZE", 1)
        _env_int("RANK", 0, world)
        if "LOCAL_RANK" in os.environ:
            _env_int("LOCAL_RANK", 0, world)
    else:  # plain `python script.py`: a group of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    if backend == "nccl":
        local, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= gpus:  # e.g. 2 processes on a 1-GPU laptop: set_device's bare 'invalid device ordinal'
            raise ValueError(f"backend='nccl' runs one process per GPU, but this is LOCAL_RANK={local} and torch "
                             f"sees {gpus} GPU(s): start at most {gpus} process(es) per machine (torchrun "
                             "--nproc_per_node), or run on CPU with backend='gloo' (CUDA_VISIBLE_DEVICES= hides "
                             "the GPUs)")
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except RuntimeError as e:  # DistStoreError / DistNetworkError: a peer that never joined
        raise DistributedGuidanceError(
            f"process {os.environ.get('RANK')}: the process group of WORLD_SIZE={os.environ.get('WORLD_SIZE')} did "
            f"not form within timeout_s={timeout_s!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "start every process (torchrun --nproc_per_node), or give them longer to join") from e
    return dist.get_rank(), dist.get_world_size()


def _env_int(name: str, low: int, below: int | None = None) -> int:
    """The integer environment variable ``name`` (set by torchrun / accelerate), in [low, below)."""
    text = os.environ.get(name)
    if text is None:
        raise ValueError(f"environment variable {name} is not set; launch with torchrun or accelerate "
                         "launch, which set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT")
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (below is not None and value >= below):
        valid = f">= {low}" if below is None else f"in [{low}, {below}) (WORLD_SIZE={below})"
        raise ValueError(f"environment variable {name} must be an integer {valid}; got {text!r}")
    return value


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of the global indices 0..n-1 that process ``rank`` of ``world`` holds: contiguous
    shards in rank order whose sizes differ by at most one."""
    n, world = check_int(n, "n", 0), check_int(world, "world", 1)
    rank = check_int(rank, "rank", 0)
    if rank >= world:  # gave an empty or out-of-range shard, e.g. (7, 9) of n = 5
        raise ValueError(f"rank must be in [0, world) = [0, {world}); got rank={rank}")
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def _collective(fn: Callable[[], Any], what: str) -> None:
    try:
        fn()
    except RuntimeError as e:  # gloo: DistBackendError "Timed out waiting ... ms", "Connection closed"
        rank = dist.get_rank() if dist.is_initialized() else "?"
        raise DistributedGuidanceError(
            f"process {rank}: the all-gather of {what} did not complete ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Another process failed, stalled or "
            "runs a different number of guided steps; the process group's timeout "
            "(init_distributed(timeout_s=...)) bounds this wait") from e


def _group_rank(group: Any, who: str) -> tuple[int, int]:
    """(rank, world size) of this process in ``group``; a process outside it (torch says rank -1)
    failed later in a bare "max() arg is an empty sequence" or a rank check."""
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(f"{who}: this process (global rank {dist.get_rank()}) is not in the group of processes "
                         f"{_members(group)}; call it only on that group's processes (or with group=None, the whole "
                         "world)")
    return rank, dist.get_world_size(group)


_ROW_BITS = 40  # all_gather_rows' header: the row count in the low 40 bits, the rows' kind above


def _row_header(x: Tensor) -> int:
    """len(x) and a 22-bit digest of (shape[1:], dtype) in one int64, so the row-count all-gather
    also checks that every process sends rows of the same kind (at no extra bytes)."""
    if len(x) >> _ROW_BITS:
        raise ValueError(f"all_gather_rows takes fewer than 2**{_ROW_BITS} rows; got {len(x)}")
    kind = hashlib.sha256(f"{tuple(x.shape[1:])}{x.dtype}".encode()).digest()
    return len(x) | (int.from_bytes(kind[:3], "little") >> 2) << _ROW_BITS


def all_gather_rows(x: Tensor, group: Any = None, what: str = "a tensor",
                    traffic: dict[str, int] | None = None) -> tuple[Tensor, int]:
    """Every process's rows (n_r, *S) concatenated in rank order, (sum_r n_r, *S), and the row
    offset of this process's rows. Shards may differ in size (padded to the largest for the
    all-gather). ``traffic`` (optional) accumulates the bytes this process sends and receives."""
    if not isinstance(x, Tensor) or x.ndim < 1:
        got = "a 0-d tensor" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"all_gather_rows needs a tensor of rows, shape (n, ...); got {got}")
    rank, world = _group_rank(group, f"all_gather_rows of {what}")
    if world == 1:  # nothing to exchange
        return x, 0
    n = torch.tensor([_row_header(x)], dtype=torch.long, device=x.device)
    sizes_t = [torch.zeros_like(n) for _ in range(world)]
    _collective(lambda: dist.all_gather(sizes_t, n, group=group), f"the row counts of {what}")
    # a peer's rows of another width or dtype were read as garbage or aborted gloo (a C++ terminate)
    kinds = [int(s) >> _ROW_BITS for s in sizes_t]
    odd = [r for r, k in enumerate(kinds) if k != kinds[0]]
    if odd:
        raise DistributedGuidanceError(
            f"process {rank}: all_gather_rows of {what} got rows of another trailing shape or dtype on "
            f"process(es) {odd} than on process 0 (this process: {tuple(x.shape[1:])}, {x.dtype}); every "
            "process must pass rows of the same shape[1:] and dtype")
    sizes = [int(s) & ((1 << _ROW_BITS) - 1) for s in sizes_t]
    top = max(sizes)
    x = x.contiguous()
    pad = x if len(x) == top else torch.cat([x, x.new_zeros((top - len(x), *x.shape[1:]))])
    bufs = [torch.empty_like(pad) for _ in range(world)]
    _collective(lambda: dist.all_gather(bufs, pad, group=group), what)
    if traffic is not None:
        payload = pad.numel() * pad.element_size() + n.element_size()
        traffic["bytes_sent"] = traffic.get("bytes_sent", 0) + payload
        traffic["bytes_received"] = traffic.get("bytes_received", 0) + (world - 1) * payload
        traffic["gathers"] = traffic.get("gathers", 0) + 1
    return torch.cat([b[:s] for b, s in zip(bufs, sizes)]), sum(sizes[:rank])


class DistributedBatchSet(BatchSet):
    """The batch guided jointly across processes: the generated set is the all-gathered global
    batch; each process gets the gradient (Eq. 6 / Eq. 11) of its own rows.

    pool(z) -> the global (B, D) batch (data scale, median bandwidths); size(b) -> the global B
    (the strength scale); gradient(z_local, ...) -> (b, D) for the local rows. ``traffic`` counts
    this process's bytes sent / received and all-gathers in the current run.
    """

    sequential = False
    per_batch = False  # the global batch: sample() on a shard must not size it by the shard

    def __init__(self, group: Any = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DistributedBatchSet needs an initialised torch.distributed process "
                               "group: call mmdg_lite.distributed.init_distributed() (under torchrun "
                               "or accelerate launch) or torch.distributed.init_process_group first")
        self.group = group
        self.rank = dist.get_rank(group)  # -1 outside the group: refused where it gathers (_group_rank)
        self.world_size = dist.get_world_size(group)
        self.reset()

    def reset(self) -> None:
        self.traffic: dict[str, int] = {"bytes_sent": 0, "bytes_received": 0, "gathers": 0}
        self._sizes: tuple[int, int] | None = None  # (local rows, global rows) of the last gather

    def _gather(self, z: Tensor, what: str) -> tuple[Tensor, int]:
        g, offset = all_gather_rows(z, self.group, what, self.traffic)
        self._sizes = (len(z), len(g))
        return g, offset

    def pool(self, z: Tensor) -> Tensor:
        return self._gather(z, "the generated points (data scale)")[0]

    def size(self, batch: int) -> int:
        """The global B: known from this step's gather (else one all-gather of the row counts)."""
        if self._sizes is None or self._sizes[0] != batch:
            dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(self.group) == "nccl" \
                else torch.device("cpu")
            self._gather(torch.zeros(batch, 1, device=dev), "the batch sizes")
        assert self._sizes is not None
        return self._sizes[1]

    def gradient(self, z: Tensor, refs: Tensor, kernel, prompts: Tensor | None,
                 ref_prompts: Tensor | None, estimator: str, chunk_size: int | None,
                 prompt_weighting: str = "joint") -> Tensor:
        """Eq. 6 / Eq. 11 for the local rows z (b, D) against the global batch and the references,
        with the same weights and the same fused calls as ``mmd._grad``."""
        zg, off = self._gather(z, "the generated points")  # (B, D)
        pg = None if prompts is None else self._gather(prompts, "the sample prompts")[0]  # (B, P)
        B, b = len(zg), len(z)
        wx = _uniform(B, zg)  # (B,)
        wy = _uniform(len(refs), refs)  # (N_r,)
        mine = slice(off, off + b)
        Wxx = wx[mine, None] * wx[None, :]  # (b, B)
        if estimator == "unbiased":
            rows = torch.arange(b, device=z.device)
            Wxx[rows, rows + off] = 0.0
            Wxx = Wxx / (1.0 - (wx**2).sum())
        p = _Prepared(z, refs, wx[mine], wy, prompts, ref_prompts, kernel, z.shape)
        pull = None  # conditional weighting: per-row factors of the push and the pull, (b,) each
        if prompt_weighting == "conditional" and isinstance(kernel, ProductKernel):
            push, pull = _prompt_factors(kernel, prompts, pg, Wxx, ref_prompts, wy, chunk_size,
                                         estimator == "unbiased")
            Wxx = Wxx * push[:, None]
        x_ = z.detach()
        g = None
        for s in _chunks(len(refs), chunk_size):
            pts, W = refs[s].detach(), -wx[mine, None] * wy[None, s]  # (cs, D), (b, cs)
            if pull is not None:
                W = W * pull[:, None]
            pp = None if ref_prompts is None else ref_prompts[s]
            if g is None:  # first chunk: stacked with the global batch (repulsion)
                pts, W = torch.cat([zg.detach(), pts]), torch.cat([Wxx, W], dim=1)  # (B + cs, D)
                pp = None if pg is None else torch.cat([pg, pp])
                g = 2 * _gradw(p, x_, pts, W, prompts, pp)
            else:
                g = g + 2 * _gradw(p, x_, pts, W, prompts, pp)
        assert g is not None
        if not bool(torch.isfinite(g.sum())):
            raise FloatingPointError(
                f"the MMD^2 gradient is not finite on process {self.rank} (kernel "
                f"{type(kernel).__name__}); {_not_finite_advice(kernel)}")
        return g  # (b, D)

    def gradient_rff(self, z: Tensor, embedding: RFFReferenceEmbedding) -> Tensor:
        """``mmd2_grad_rff`` for the local rows: exact repulsion against the global batch, RFF
        reference term (the embedding is identical on every process: same seed, same refs)."""
        zg, _ = self._gather(z, "the generated points")  # (B, D)
        B = len(zg)
        W = z.new_full((len(z), B), 1.0 / B**2)  # (b, B)
        kernel = GaussianKernel(embedding.bandwidth)
        return 2 * kernel.grad_weighted(z, zg, W) - (2.0 / B) * embedding.cross_grad(z)


def _data_dependent(kernel: Any) -> bool:
    """A median bandwidth, also inside a FeatureKernel's base kernel."""
    if getattr(kernel, "bandwidth", 0.0) is None or getattr(kernel, "bandwidths", 0.0) is None:
        return True
    return isinstance(getattr(kernel, "base", None), Kernel) and _data_dependent(kernel.base)


def distributed_guidance(references: Tensor, *, group: Any = None, **kwargs: Any) -> MMDGuidance:
    """``MMDGuidance(references, generated_set=DistributedBatchSet(group), **kwargs)``: batch-joint
    guidance over the global batch of all processes in ``group`` (default: the whole world).

    Every process must build it with the same arguments and the same references. Refused:
    ``generated_set="memory"`` (sequential by nature) and a prompt kernel with a data-dependent
    bandwidth (it would be read from each process's own prompts; give it a fixed bandwidth).
    """
    gs = kwargs.pop("generated_set", "batch")
    if isinstance(gs, str) and gs == "memory" or getattr(gs, "sequential", False):
        raise ValueError("generated_set='memory' does not distribute: the reference code's memory "
                         "mode guides one sample at a time against the samples finished before it, "
                         "an inherently sequential loop. Use generated_set='batch' (the paper's "
                         "batch-joint guidance), which distributed_guidance all-gathers")
    if gs not in ("batch",) and not isinstance(gs, DistributedBatchSet):
        raise ValueError(f"distributed_guidance builds its own generated set; got generated_set={gs!r}")
    if isinstance(gs, DistributedBatchSet) and group is not None and group is not gs.group:
        raise ValueError("distributed_guidance got group= and a DistributedBatchSet of another group as "
                         "generated_set; pass one of them (the set's group was used, group= ignored)")
    pk = kwargs.get("prompt_kernel")
    if kwargs.get("reference_prompts") is not None and pk is not None and _data_dependent(pk):
        raise ValueError(f"distributed guidance needs a prompt kernel with a fixed bandwidth (a median "
                         f"bandwidth would be read from each process's prompts); got {pk!r}, e.g. "
                         "use GaussianKernel(0.3)")
    generated = gs if isinstance(gs, DistributedBatchSet) else DistributedBatchSet(group)
    return MMDGuidance(references, generated_set=generated, **kwargs)


def _distributed_hooks(guidance: Any) -> list[MMDGuidance]:
    hooks = guidance_hooks(guidance)  # a ChainedGuidance's hooks, nested chains included
    bad = [h for h in hooks if not (isinstance(h, MMDGuidance) and isinstance(h.generated, DistributedBatchSet))]
    if bad:
        raise ValueError("sample_distributed needs guidance built by distributed_guidance(...) (or a "
                         "ChainedGuidance of such hooks), so the batch is all-gathered; got "
                         f"{type(bad[0]).__name__}"
                         + (" with a local generated set" if isinstance(bad[0], MMDGuidance) else ""))
    return hooks


def sample_distributed(denoiser: Callable, n: int, shape: tuple[int, ...] | int, *,
                       guidance: Any = None, cond: Tensor | None = None, seed: int = 0,
                       group: Any = None, gather: bool = True, progress: bool = False,
                       **kwargs: Any) -> SampleResult:
    """Sample the global batch of n across the processes of ``group``; each process runs the
    contiguous shard ``shard_bounds(n, rank, world)`` of the global indices.

    Every sample has its own generator seeded by (seed, global index), so the result equals
    ``sample(denoiser, n, shape, guidance=<the same MMDGuidance built locally>, seed=seed,
    per_sample_seed=True)`` on one process. ``cond``: (n, C) for the global batch (each process
    passes all rows, or the same tensor) or None. ``gather=True`` returns all n samples (and the
    trajectory) on every process; else this process's shard. Other keyword arguments go to
    ``sample`` (scheduler, num_steps, device, dtype, eta, ...); ``batch_size``, ``generator``,
    ``per_sample_seed`` and ``first_index`` are set here. Every process must call it with the
    same arguments, guidance settings, references and cond: each is compared once at the start
    (by a digest; ``DistributedGuidanceError`` names the ones that differ).
    """
    n = check_int(n, "n", 1)
    gather, progress = check_bool(gather, "gather"), check_bool(progress, "progress")
    shape_t = _check_shape(shape)
    seed = check_seed(seed)
    device = kwargs.get("device")
    dev = _check_device(device) if device is not None else None
    for k in ("batch_size", "generator", "per_sample_seed", "first_index"):
        if k in kwargs:
            raise TypeError(f"sample_distributed sets {k} itself (each process runs its whole shard as "
                            "one batch with per-sample seeds); remove it")
    if not dist.is_initialized():
        raise RuntimeError("sample_distributed needs an initialised process group: call "
                           "mmdg_lite.distributed.init_distributed() first (under torchrun or "
                           "accelerate launch)")
    rank, world = _group_rank(group, "sample_distributed")
    if n < world:
        raise ValueError(f"n={n} is smaller than the number of processes ({world}); every process "
                         "needs at least one sample")
    hooks = _distributed_hooks(guidance) if guidance is not None else []
    members = _members(group)  # the processes the batch is sharded over must be those it is gathered from
    for h in hooks:
        if _members(h.generated.group) != members:  # each sub-group guided its part of the batch on its own
            raise ValueError(f"the guidance gathers over the processes {_members(h.generated.group)} but "
                             f"sample_distributed shards the batch over {members}; pass the same group to "
                             "distributed_guidance(group=...) and sample_distributed(group=...)")
    if cond is not None and (not isinstance(cond, Tensor) or cond.ndim < 1 or cond.shape[0] != n):
        got = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
        raise ValueError(f"cond must have one row per sample of the global batch, shape ({n}, C); "
                         f"got {got}")
    if guidance is not None:  # for the global batch, on every process: in sample() only the last shards would raise
        check_prompt_inputs(guidance, n, 0, cond)
    # every process must agree on the run: a mismatch would pair different collectives (a hang, a
    # gloo abort) or guide the shards differently, so each setting is compared once, by its digest
    fields = _run_fields(n, shape_t, seed, kwargs, cond, hooks, gather)
    digests = torch.tensor([_digest(v) for v in fields.values()], dtype=torch.long)
    dev = dev if dev is not None else _probe_device(denoiser)
    fps, _ = all_gather_rows(digests[None].to(dev), group, "the run's settings")
    differ = [k for k, col in zip(fields, fps.T) if not bool((col == col[0]).all())]
    if differ:
        raise DistributedGuidanceError(
            f"process {rank}: the processes disagree on {', '.join(differ)}; call distributed_guidance "
            "and sample_distributed with the same arguments (and the same references, prompts and "
            "cond) on every process")
    lo, hi = shard_bounds(n, rank, world)
    if cond is not None:
        cond = cond[lo:hi]
    if n < 2 and any(h.estimator == "unbiased" for h in hooks):  # sample() leaves the global batch to us
        raise ValueError("estimator='unbiased' leaves out the i = i' pairs, so the global batch needs at least 2 "
                         "samples; got n=1: draw n >= 2, or use estimator='biased'")
    res = sample(denoiser, hi - lo, shape, guidance=guidance, cond=cond, seed=seed,
                 per_sample_seed=True, first_index=lo, progress=progress and rank == 0, **kwargs)
    if not gather:
        return res
    samples, _ = all_gather_rows(res.samples, group, "the final samples")
    traj = None
    if res.trajectory is not None:
        traj = [all_gather_rows(x, group, "the trajectory")[0] for x in res.trajectory]
    return SampleResult(samples=samples, trajectory=traj, timesteps=res.timesteps)


def _members(group: Any) -> list[int]:
    """The global ranks of ``group`` (None: the whole world)."""
    return dist.get_process_group_ranks(group if group is not None else dist.group.WORLD)


def _describe(v: Any) -> str:
    """A description of a setting that is the same in every process that holds the same value
    (no object addresses); tensors by shape, dtype, two sums and a position-weighted sum."""
    if isinstance(v, np.generic):  # numpy scalars (num_steps=np.int64(50)) were described as 'int64' alone
        v = v.item()
    if v is None or isinstance(v, (bool, int, str)):
        return repr(v)
    if isinstance(v, float):
        return f"{v:.9g}"
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(_describe(x) for x in v) + ")"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_describe(x)}" for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))) + "}"
    if isinstance(v, (torch.dtype, torch.device)):
        return str(v)
    if isinstance(v, Tensor):
        d = v.detach()
        sums = (float(d.sum(dtype=torch.float64)), float(d.abs().sum(dtype=torch.float64))) if d.numel() else ()
        if d.ndim and d.numel():  # and a sum weighted by position: rows (prompts, cond) in another
            m = d.reshape(len(d), -1)  # order on one process had the same two sums
            col = torch.linspace(1, 2, m.shape[1], dtype=torch.float64, device=d.device)
            row = torch.cat([blk.double() @ col for blk in m.split(8192)])  # (N,), in blocks of rows
            sums += (float(row @ torch.linspace(1, 2, len(row), dtype=torch.float64, device=d.device)),)
        return f"T{tuple(d.shape)}{d.dtype}" + ",".join(f"{x:.6e}" for x in sums)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return type(v).__name__ + _describe({f.name: getattr(v, f.name) for f in dataclasses.fields(v)})
    if hasattr(v, "set_timesteps") and hasattr(v, "config"):  # a diffusers scheduler
        # (its private keys, e.g. _use_default_values, list a set in hash order)
        return type(v).__name__ + _describe({k: x for k, x in v.config.items() if not k.startswith("_")})
    if isinstance(v, Kernel):  # a user kernel that is no dataclass: its settings, not only its class name
        return type(v).__name__ + _describe(dict(vars(v)))
    return getattr(v, "__qualname__", type(v).__name__)  # a callable, a module: its name


_PER_PROCESS = ("guidance", "progress", "device", "generator", "batch_size", "per_sample_seed", "first_index")


def _hook_fields(h: MMDGuidance) -> dict[str, Any]:
    rff = h.rff and (h.rff.n_features, h.rff.bandwidth, h.rff.W)
    return dict(kernel=h.kernel, prompt_kernel=h.prompt_kernel, step_size=vars(h.step_size),
                options=(h.eval_point, h.estimator, h.bandwidth_update, h.chunk_size, h.prompt_weighting),
                rff_features=rff, references=h.reference_set.flat, reference_prompts=h.reference_prompts,
                sample_prompts=h.sample_prompts)


def _run_fields(n: int, shape: tuple[int, ...], seed: int, kwargs: dict[str, Any], cond: Tensor | None,
                hooks: list[MMDGuidance], gather: bool) -> dict[str, str]:
    """The settings every process must share, by name."""
    fields = {"n": n, "shape": shape, "seed": seed, "gather": gather, "cond": cond, "guidance hooks": len(hooks)}
    defaults = {k: p.default for k, p in inspect.signature(sample).parameters.items()
                if p.default is not inspect.Parameter.empty and k not in fields and k not in _PER_PROCESS}
    fields.update({k: kwargs.get(k, v) for k, v in defaults.items()})  # num_steps omitted = num_steps=100
    for i, h in enumerate(hooks):
        tag = "" if len(hooks) == 1 else f" (hook {i})"
        fields.update({f"guidance {k}{tag}": v for k, v in _hook_fields(h).items()})
    return {k: _describe(v) for k, v in fields.items()}


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little", signed=True)


class MicroBatched(torch.nn.Module):
    """Run ``denoiser`` on at most ``batch_size`` rows at a time and join the outputs.

    A process's shard (e.g. 1,250 SDXL latents) must be guided jointly at every step, but a UNet
    fits a few dozen at once: wrap it, and the guidance still sees the whole shard while the
    UNet sees micro-batches (``sample(batch_size=...)`` would split the guidance too).
    """

    def __init__(self, denoiser: Callable, batch_size: int) -> None:
        super().__init__()
        if not callable(denoiser):  # found at the first step otherwise: "'str' object is not callable"
            raise TypeError(f"denoiser must be callable as denoiser(x_t, t, cond); got {type(denoiser).__name__}")
        self.denoiser = denoiser
        self.batch_size = check_int(batch_size, "batch_size", 1)

    def forward(self, x: Tensor, t: Tensor | int, cond: Tensor | None = None) -> Tensor:
        """x (b, *S), t (b,) or one timestep for all rows (an int or a 0-d tensor), cond (b, C) or None."""
        outs = []
        per_row = isinstance(t, Tensor) and t.ndim > 0
        for s in range(0, len(x), self.batch_size):
            sl = slice(s, s + self.batch_size)
            out = self.denoiser(x[sl], t[sl] if per_row else t, None if cond is None else cond[sl])
            if not isinstance(out, Tensor):  # a bare diffusers UNet returns UNet2DOutput: torch.cat failed on it
                raise TypeError(f"MicroBatched's denoiser returned {type(out).__name__}, not a tensor of eps: "
                                "wrap a diffusers UNet as MicroBatched(mmdg_lite.images.UNetDenoiser(unet), rows)")
            outs.append(out)
        return torch.cat(outs)  # (b, *S)


def _probe_device(denoiser: Any) -> torch.device:
    from .sampling import _model_device
    dev = _model_device(denoiser)
    if dist.get_backend() == "nccl" and dev.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return dev
