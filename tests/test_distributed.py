"""Distributed batch-joint guidance: 2 gloo processes (torch.multiprocessing spawn) return the
samples of 1 process to 1e-6; a stalled peer ends the run with a clear error, not a hang."""
from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from mmdg_lite import GaussianKernel, MMDGuidance, sample
from mmdg_lite.denoisers import GaussianMixtureDenoiser
from mmdg_lite.sampling import make_scheduler, sample_generators
from mmdg_lite.toys.mixtures import circle_mixture, draw_references

pytestmark = [pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="torch.distributed with gloo is not available"),
              pytest.mark.usefixtures("one_thread")]  # conftest.py


N = 11  # odd: shards of 6 and 5 rows (padded all-gather)
F64 = torch.float64
STEPS = 12


def _setup():
    """Denoiser, references and the run configurations, the same in every process."""
    mix = circle_mixture(8, radius=2.0, std=0.1)
    den = GaussianMixtureDenoiser.from_mixture(mix, make_scheduler("ddpm").alphas_cumprod)
    # float64 throughout: the shards' gradients sum in another order than the single process's,
    # and float32 rounding (a few ulps per step) would hide what the 1e-6 equality checks
    refs = draw_references(circle_mixture(2, radius=2.0, std=0.1), 40, seed=1).double()  # 2 of the modes
    ref_prompts = torch.nn.functional.one_hot(torch.arange(40) % 2, 2).double()  # (40, 2)
    prompts = torch.nn.functional.one_hot(torch.arange(N) % 2, 2).double()  # (N, 2)
    configs = {
        # the default: two-scale median kernel fixed once per run from the global batch, clipped
        "default_ddpm": (dict(), dict(scheduler="ddpm", dtype=F64)),
        # data-dependent bandwidth re-read every step, unbiased estimator, stochastic DDIM
        "step_unbiased_ddim": (dict(kernel=GaussianKernel(), bandwidth_update="step", estimator="unbiased",
                                    strength=2.0, chunk_size=16), dict(scheduler="ddim", eta=0.5, dtype=F64)),
        # prompt-aware product kernel (one prompt per global sample index), x0_hat evaluation
        "prompts_x0hat": (dict(reference_prompts=ref_prompts, sample_prompts=prompts, eval_point="x0_hat"),
                          dict(scheduler="ddpm", dtype=F64)),
        # RFF reference term, exact repulsion over the global batch
        "rff": (dict(kernel=GaussianKernel(0.8), rff_features=64, strength=0.5), dict(scheduler="ddpm", dtype=F64)),
    }
    return den, refs, configs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int, timeout_s: float):
    from mmdg_lite.distributed import init_distributed

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    if Path("/sys/class/net/lo").exists():  # gloo on loopback, whatever the hostname resolves to
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return init_distributed("gloo", timeout_s=timeout_s)


class _StallingDenoiser(torch.nn.Module):
    """A denoiser that hangs at its ``stall_at``-th call (a stuck GPU, a dead data loader)."""

    def __init__(self, inner: torch.nn.Module, stall_at: int | None) -> None:
        super().__init__()
        self.inner, self.stall_at, self.calls = inner, stall_at, 0

    def forward(self, x, t, cond=None):
        self.calls += 1
        if self.stall_at is not None and self.calls == self.stall_at:
            time.sleep(60)
        return self.inner(x, t, cond)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """Both tests' processes: the equality runs, then a run in which process 1 stalls at step 4."""
    from mmdg_lite.distributed import DistributedGuidanceError, distributed_guidance, sample_distributed

    _join(rank, world, port, 30.0)
    den, refs, configs = _setup()
    results = {}
    for name, (gkw, skw) in configs.items():
        g = distributed_guidance(refs, **gkw)
        res = sample_distributed(den, N, (2,), guidance=g, num_steps=STEPS, seed=5, **skw)
        results[name] = res.samples.contiguous()
        results[name + "/bytes_received"] = torch.tensor([g.generated.traffic["bytes_received"]])
    save_file(results, str(Path(out) / f"rank{rank}.safetensors"))
    _settings_runs(rank, out)
    # a group whose collectives time out after 3 s; process 1's denoiser hangs at step 4
    short = dist.new_group(timeout=timedelta(seconds=3))
    stalling = _StallingDenoiser(den, stall_at=4 if rank == 1 else None)
    t0 = time.monotonic()
    try:
        sample_distributed(stalling, N, (2,), guidance=distributed_guidance(refs, group=short),
                           group=short, num_steps=STEPS, seed=5)
    except DistributedGuidanceError as e:
        (Path(out) / "error.txt").write_text(f"{time.monotonic() - t0:.2f}\n{e}")
        raise  # ends this process; spawn then ends the stalled one
    (Path(out) / f"no_error{rank}.txt").write_text("finished")


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """One 2-process gloo run (spawn) for the equality and the failure tests; (folder, error, s)."""
    out = tmp_path_factory.mktemp("distributed")
    t0 = time.monotonic()
    ctx = mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=False)
    err = None
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() - t0 > 300:  # a bug that hangs must not hang CI
                for proc in ctx.processes:
                    proc.kill()
                raise AssertionError("the 2-process run hung for 300 s")
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:  # the failure test inspects it
        err = e
    return out, err, time.monotonic() - t0


def test_two_processes_match_one_process(spawned):
    """The 2-process run (shards 6 + 5) equals the 1-process run to 1e-6 for every configuration."""
    out, err, _ = spawned
    if not (out / "rank1.safetensors").exists():
        raise AssertionError(f"the 2-process run failed before saving its samples: {err}")
    den, refs, configs = _setup()
    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]
    worst = 0.0
    for name, (gkw, skw) in configs.items():
        single = sample(den, N, (2,), guidance=MMDGuidance(refs, **gkw), num_steps=STEPS, seed=5,
                        per_sample_seed=True, **skw).samples
        unguided = sample(den, N, (2,), num_steps=STEPS, seed=5, per_sample_seed=True, **skw).samples
        assert (single - unguided).abs().max() > 1e-2, f"{name}: guidance did nothing; a vacuous test"
        for r in range(2):
            diff = float((ranks[r][name] - single).abs().max())
            worst = max(worst, diff)
            assert diff <= 1e-6, f"{name}: process {r} differs from the 1-process run by {diff:.3g}"
            assert int(ranks[r][name + "/bytes_received"]) > 0  # the batch was really all-gathered
    print(f"max |2-process - 1-process| over {len(configs)} configurations: {worst:.3g}")


def test_stalled_peer_ends_the_run_with_a_clear_error(spawned):
    """Process 1 hangs mid-run; process 0 raises DistributedGuidanceError after the group's 3 s
    timeout (naming the all-gather), and the whole run ends instead of hanging."""
    out, err, elapsed = spawned
    assert err is not None and "DistributedGuidanceError" in str(err)
    assert not (out / "no_error0.txt").exists()
    waited, message = (out / "error.txt").read_text().split("\n", 1)
    assert "process 0" in message and "generated points" in message and "timeout" in message
    assert 2.5 <= float(waited) < 30.0, f"waited {waited} s for a 3 s timeout"
    assert elapsed < 120, f"the run took {elapsed:.0f} s to end: the stalled process was not ended"
    print(f"process 0 raised after {waited} s (run ended after {elapsed:.1f} s): {message}")


def test_local_guidance_per_shard_differs_from_the_joint_batch():
    """The oracle the equality test guards against: guiding each shard alone (accelerate's
    split_between_processes) is not the batch-joint result."""
    den, refs, configs = _setup()
    gkw, skw = configs["default_ddpm"]
    joint = sample(den, N, (2,), guidance=MMDGuidance(refs, **gkw), num_steps=STEPS, seed=5,
                   per_sample_seed=True, **skw).samples
    shards = [sample(den, hi - lo, (2,), guidance=MMDGuidance(refs, **gkw), num_steps=STEPS, seed=5,
                     per_sample_seed=True, first_index=lo, **skw).samples for lo, hi in ((0, 6), (6, N))]
    assert float((torch.cat(shards) - joint).abs().max()) > 1e-3


def test_per_sample_seeds_do_not_depend_on_the_split():
    """Sample i's x_T and noise come from its own generator: a shard run equals the rows of the
    full run, unguided, for DDPM and stochastic DDIM; the default path is unchanged."""
    den, _, _ = _setup()
    for skw in (dict(scheduler="ddpm"), dict(scheduler="ddim", eta=0.7)):
        full = sample(den, 7, (2,), num_steps=8, seed=3, per_sample_seed=True, **skw).samples
        part = sample(den, 4, (2,), num_steps=8, seed=3, per_sample_seed=True, first_index=3, **skw).samples
        chunked = sample(den, 7, (2,), num_steps=8, seed=3, per_sample_seed=True, batch_size=3, **skw).samples
        assert torch.allclose(full[3:], part, atol=1e-6, rtol=0) and torch.allclose(full, chunked, atol=1e-6, rtol=0)
    from mmdg_lite.distributed import MicroBatched, shard_bounds

    micro = sample(MicroBatched(den, 2), 7, (2,), num_steps=8, seed=3, per_sample_seed=True).samples
    assert torch.allclose(micro, sample(den, 7, (2,), num_steps=8, seed=3, per_sample_seed=True).samples,
                          atol=1e-6, rtol=0)
    assert [shard_bounds(11, r, 3) for r in range(3)] == [(0, 4), (4, 8), (8, 11)]
    g = sample_generators(3, [0, 1])
    assert not torch.equal(torch.randn(4, generator=g[0]), torch.randn(4, generator=g[1]))
    with pytest.raises(ValueError, match="per_sample_seed"):
        sample(den, 2, (2,), per_sample_seed=True, generator=torch.Generator())


def test_memory_mode_and_data_dependent_prompt_kernel_are_refused(tmp_path):
    from mmdg_lite.distributed import distributed_guidance

    refs = torch.randn(10, 2)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="memory.*sequential"):
            distributed_guidance(refs, generated_set="memory")
        with pytest.raises(ValueError, match="fixed bandwidth"):
            distributed_guidance(refs, reference_prompts=torch.randn(10, 3), prompt_kernel=GaussianKernel())
        # a world of one is the plain single-process guidance
        den, refs2, configs = _setup()
        from mmdg_lite.distributed import sample_distributed
        one = sample_distributed(den, N, (2,), guidance=distributed_guidance(refs2), num_steps=STEPS, seed=5,
                                 dtype=F64)
        plain = sample(den, N, (2,), guidance=MMDGuidance(refs2), num_steps=STEPS, seed=5, per_sample_seed=True,
                       dtype=F64)
        assert float((one.samples - plain.samples).abs().max()) <= 1e-6
        with pytest.raises(ValueError, match="distributed_guidance"):
            sample_distributed(den, N, (2,), guidance=MMDGuidance(refs2), num_steps=STEPS)
    finally:
        dist.destroy_process_group()


def test_sample_distributed_checks_its_arguments_first():
    """device, shape and seed are checked as ``sample`` checks them, before any collective
    (they were raw torch errors, or an error about the missing process group)."""
    from mmdg_lite.distributed import sample_distributed

    den, _, _ = _setup()
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="device must be a torch device or its name.*got 'cpuu'"):
        sample_distributed(den, N, (2,), device="cpuu")
    with pytest.raises(ValueError, match="shape must be a positive int or a tuple of positive ints.*got 'ab'"):
        sample_distributed(den, N, "ab")
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\); got '0'"):
        sample_distributed(den, N, (2,), seed="0")
    with pytest.raises(RuntimeError, match="initialised process group"):  # valid arguments get this far
        sample_distributed(den, N, 2, seed=0, device="cpu")


def test_init_distributed_checks_its_arguments_even_when_a_group_exists(monkeypatch):
    # with a group already formed they were ignored: init_distributed("mpi") returned (0, 1)
    from mmdg_lite.distributed import init_distributed

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda *a: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 1)
    with pytest.raises(ValueError, match="backend must be 'gloo' .* got 'mpi'"):
        init_distributed("mpi")
    with pytest.raises(ValueError, match="timeout_s"):
        init_distributed(timeout_s=-1)
    assert init_distributed() == (0, 1)


@pytest.mark.parametrize("scale", [1e2, 1e3])
def test_distributed_imq_gradient_holds_in_float32_when_c_is_far_below_the_spacing(scale):
    # DistributedBatchSet stacks the global batch with the references in one weighted-gradient call,
    # so the IMQ repulsion kept its i = i pairs (left out only where y is x): for c far below the
    # spacing they cancelled the float32 gradient away (55 % off at 1e2, 100 % at 1e3); a group of one
    from mmdg_lite.distributed import DistributedBatchSet
    from mmdg_lite.guidance.generated import BatchSet
    from mmdg_lite.kernels import InverseMultiquadricKernel

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=g) * scale
    y = torch.randn(20, 8, generator=g) * scale + 0.5 * scale
    k = InverseMultiquadricKernel()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        for chunk in (None, 7):
            got = DistributedBatchSet().gradient(x, y, k, None, None, "biased", chunk)  # float32
            oracle = BatchSet().gradient(x.double(), y.double(), k, None, None, "biased", None)
            assert float((got.double() - oracle).norm() / oracle.norm()) < 1e-5
    finally:
        dist.destroy_process_group()


def _settings_runs(rank: int, out: str) -> None:
    """Runs that went wrong on some processes only (in ``_worker``, before the stall): an unbiased
    estimator with a shard of one row (refused by that shard's sample(), while process 0 waited in
    an all-gather), processes that disagree on a setting, and sample_prompts with fewer rows than
    n. Each process writes what it returned or raised."""
    from mmdg_lite.distributed import distributed_guidance, sample_distributed

    den, refs, _ = _setup()

    def attempt(name, make_guidance, **kw):
        try:
            res = sample_distributed(den, kw.pop("n", N), (2,), guidance=make_guidance(), num_steps=6, seed=5, **kw)
            save_file({"samples": res.samples.contiguous()}, str(Path(out) / f"{name}{rank}.safetensors"))
        except Exception as e:  # noqa: BLE001 - the test reads what each process raised
            (Path(out) / f"{name}{rank}.txt").write_text(f"{type(e).__name__}: {e}")

    attempt("unbiased", lambda: distributed_guidance(refs, estimator="unbiased", kernel=GaussianKernel()), n=3,
            dtype=F64)
    attempt("dtype", lambda: distributed_guidance(refs), dtype=F64 if rank == 1 else torch.float32)
    attempt("stop", lambda: distributed_guidance(refs, stop=0.5 if rank == 1 else 0.9), dtype=F64)
    attempt("scheduler", lambda: distributed_guidance(refs), scheduler="ddim" if rank == 1 else "ddpm", dtype=F64)
    attempt("references", lambda: distributed_guidance(refs[: 30 if rank == 1 else 40]), dtype=F64)
    rp = torch.nn.functional.one_hot(torch.arange(40) % 2, 2).double()
    attempt("short_prompts", lambda: distributed_guidance(refs, reference_prompts=rp, sample_prompts=rp[:N - 2]),
            dtype=F64)
    sp = torch.nn.functional.one_hot(torch.arange(N) % 2, 2).double()  # process 1: the same rows in another
    attempt("prompt_order", lambda: distributed_guidance(refs, reference_prompts=rp,  # order (same sums)
                                                         sample_prompts=sp.roll(1, 0) if rank == 1 else sp), dtype=F64)
    groups = [dist.new_group([r]) for r in range(2)]  # each process a group of its own, given to
    attempt("own_group", lambda: distributed_guidance(refs, group=groups[rank]), dtype=F64)  # the guidance alone
    attempt("outside", lambda: None, group=groups[1 - rank], dtype=F64)  # a group this process is not in
    from mmdg_lite.distributed import all_gather_rows
    for name, rows in (("width", torch.ones(3, 2 + rank)), ("row_dtype", torch.ones(3, 2, dtype=(F64, torch.float32)[rank]))):
        try:  # each process's rows of another kind: gloo aborted process 0 (a C++ terminate)
            got, _ = all_gather_rows(rows)  # and process 1 returned uninitialised memory as rows
            save_file({"rows": got}, str(Path(out) / f"{name}{rank}.safetensors"))
        except Exception as e:  # noqa: BLE001
            (Path(out) / f"{name}{rank}.txt").write_text(f"{type(e).__name__}: {e}")


@pytest.fixture(scope="module")
def settings_run(spawned):
    return spawned[0]


def test_unbiased_estimator_runs_with_a_shard_of_one_row(settings_run):
    """n=3 on 2 processes: shards of 2 and 1 rows, a global batch of 3. sample() refused the
    one-row shard (its own batch of 1) while process 0 waited in the all-gather; now both
    return the 1-process samples."""
    den, refs, _ = _setup()
    g = MMDGuidance(refs, estimator="unbiased", kernel=GaussianKernel())
    single = sample(den, 3, (2,), guidance=g, num_steps=6, seed=5, per_sample_seed=True, dtype=F64).samples
    unguided = sample(den, 3, (2,), num_steps=6, seed=5, per_sample_seed=True, dtype=F64).samples
    assert (single - unguided).abs().max() > 1e-2
    for r in range(2):
        path = settings_run / f"unbiased{r}.safetensors"
        assert path.exists(), (settings_run / f"unbiased{r}.txt").read_text() if (settings_run / f"unbiased{r}.txt").exists() else "no result"
        assert float((load_file(str(path))["samples"] - single).abs().max()) <= 1e-6


@pytest.mark.parametrize("name,setting", [("dtype", "dtype"), ("stop", "guidance step_size"),
                                          ("scheduler", "scheduler"), ("references", "guidance references"),
                                          ("prompt_order", "guidance sample_prompts")])
def test_processes_that_disagree_on_a_setting_both_raise_naming_it(settings_run, name, setting):
    """Only (n, seed, num_steps, shape) were compared: another dtype aborted process 0 inside gloo,
    another guidance window or scheduler returned mixed samples without an error."""
    for r in range(2):
        path = settings_run / f"{name}{r}.txt"
        assert path.exists(), f"process {r} raised nothing for a different {name}"
        text = path.read_text()
        assert text.startswith("DistributedGuidanceError") and f"disagree on {setting}" in text, text


def test_short_sample_prompts_are_refused_on_every_process(settings_run):
    # only process 1 (rows 6..10) raised, inside its first guided step; process 0 waited for it
    for r in range(2):
        text = (settings_run / f"short_prompts{r}.txt").read_text()
        assert text.startswith("ValueError") and f"sample_prompts has {N - 2} rows" in text and f"n={N}" in text


def test_a_process_outside_the_group_is_told_so(settings_run):
    # torch gives such a process rank -1: it failed in a bare "max() arg is an empty sequence"
    for r in range(2):
        text = (settings_run / f"outside{r}.txt").read_text()
        assert text.startswith(f"ValueError: sample_distributed: this process (global rank {r}) is not in the "
                               f"group of processes [{1 - r}]"), text


@pytest.mark.parametrize("env,message", [
    (dict(WORLD_SIZE="2", RANK="2"), r"RANK must be an integer in \[0, 2\) \(WORLD_SIZE=2\); got '2'"),
    (dict(WORLD_SIZE="1", RANK="-1"), r"RANK must be an integer in \[0, 1\)"),
    (dict(WORLD_SIZE="two", RANK="0"), r"WORLD_SIZE must be an integer >= 1; got 'two'"),
    (dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="x"), r"LOCAL_RANK must be an integer"),
])
def test_init_distributed_names_a_bad_launcher_variable(monkeypatch, env, message):
    # RANK >= WORLD_SIZE waited out the timeout and raised DistNetworkError with a C++ stack;
    # WORLD_SIZE='two' was "invalid literal for int()" naming no variable
    from mmdg_lite.distributed import init_distributed

    for k, v in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), **env).items():
        monkeypatch.setenv(k, v)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=message):
        init_distributed("gloo", timeout_s=2.0)
    assert time.monotonic() - t0 < 1.0 and not dist.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_init_distributed_refuses_nccl_without_cuda():
    # was AttributeError: module 'torch._C' has no attribute '_cuda_setDevice'
    from mmdg_lite.distributed import init_distributed

    with pytest.raises(ValueError, match="backend='nccl' needs CUDA GPUs.*backend='gloo'"):
        init_distributed("nccl")
    assert not dist.is_initialized()


def test_init_distributed_names_more_nccl_processes_than_gpus(monkeypatch):
    # torchrun --nproc_per_node 2 on a 1-GPU machine picked nccl and failed in torch.cuda.set_device(1):
    # a bare 'CUDA error: invalid device ordinal'
    from mmdg_lite.distributed import init_distributed

    def set_device(index):
        raise RuntimeError("CUDA error: invalid device ordinal")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    for k, v in dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(_free_port())).items():
        monkeypatch.setenv(k, v)
    for backend in ("nccl", None):  # None: nccl, as CUDA is available
        with pytest.raises(ValueError, match=r"LOCAL_RANK=1 and torch sees 1 GPU\(s\).*backend='gloo'"):
            init_distributed(backend, timeout_s=2.0)
    assert not dist.is_initialized()


def test_a_median_bandwidth_inside_a_feature_prompt_kernel_is_refused():
    # FeatureKernel(base=GaussianKernel()) passed: its bandwidth was read from each process's own
    # prompts, so the shards were guided with different prompt kernels
    from mmdg_lite.distributed import distributed_guidance
    from mmdg_lite.kernels import FeatureKernel

    rp = torch.randn(10, 3)
    with pytest.raises(ValueError, match="fixed bandwidth"):
        distributed_guidance(torch.randn(10, 2), reference_prompts=rp,
                             prompt_kernel=FeatureKernel(torch.tanh, (3,), GaussianKernel()))


def test_distributed_guidance_refuses_a_group_its_generated_set_does_not_use():
    # group= was silently ignored when generated_set was a DistributedBatchSet of another group
    from mmdg_lite.distributed import DistributedBatchSet, distributed_guidance

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        other = dist.new_group([0])
        refs = torch.randn(10, 2)
        with pytest.raises(ValueError, match="group= and a DistributedBatchSet of another group"):
            distributed_guidance(refs, group=other, generated_set=DistributedBatchSet())
        g = distributed_guidance(refs, group=other, generated_set=DistributedBatchSet(other))
        assert g.generated.group is other
    finally:
        dist.destroy_process_group()


def test_a_nested_chain_of_distributed_hooks_is_accepted(tmp_path):
    # sample() accepts nested ChainedGuidance (sampling.guidance_hooks); sample_distributed looked
    # one level deep and refused the inner chain as "not built by distributed_guidance"
    from mmdg_lite import ChainedGuidance
    from mmdg_lite.distributed import distributed_guidance, sample_distributed

    den, refs, _ = _setup()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        def chain(make):
            return ChainedGuidance(make(kernel=GaussianKernel(0.3)), ChainedGuidance(make(kernel=GaussianKernel(2.0))))
        got = sample_distributed(den, 5, (2,), guidance=chain(lambda **k: distributed_guidance(refs, **k)),
                                 num_steps=6, seed=1, dtype=F64).samples
    finally:
        dist.destroy_process_group()
    want = sample(den, 5, (2,), guidance=chain(lambda **k: MMDGuidance(refs, **k)), num_steps=6, seed=1,
                  per_sample_seed=True, dtype=F64).samples
    assert float((got - want).abs().max()) <= 1e-9


def test_micro_batched_checks_its_denoiser_and_takes_one_timestep_for_all_rows():
    # MicroBatched('unet', 4) was built and failed at the first step with "'str' object is not
    # callable"; an int or 0-d timestep (diffusers-style calls) raised "invalid index of a 0-dim tensor"
    from mmdg_lite.distributed import MicroBatched
    with pytest.raises(TypeError, match=r"denoiser must be callable .* got str"):
        MicroBatched("unet", 4)
    seen = []
    den = lambda x, t, cond=None: seen.append(len(x)) or x * torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1) / 100
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    micro = MicroBatched(den, 3)
    for t in (25, torch.tensor(25)):
        assert torch.equal(micro(x, t), den(x, t)) and seen[-4:] == [3, 3, 1, 7]
    assert torch.equal(micro(x, torch.arange(7)), den(x, torch.arange(7)))


@pytest.mark.parametrize("name", ["width", "row_dtype"])
def test_all_gather_rows_of_another_shape_or_dtype_raise_on_every_process(settings_run, name):
    for r in range(2):
        path = settings_run / f"{name}{r}.txt"
        assert path.exists(), f"process {r} raised nothing for rows of another {name}"
        text = path.read_text()
        assert text.startswith("DistributedGuidanceError") and "process(es) [1] than on process 0" in text, text


def test_shard_bounds_cover_0_to_n_and_refuse_a_rank_outside_the_world():
    from mmdg_lite.distributed import shard_bounds
    for n, world in [(0, 1), (5, 2), (7, 3), (3, 5)]:
        bounds = [shard_bounds(n, r, world) for r in range(world)]
        assert [b[0] for b in bounds[1:]] == [b[1] for b in bounds[:-1]] and bounds[0][0] == 0 and bounds[-1][1] == n
    with pytest.raises(ValueError, match=r"rank must be in \[0, world\) = \[0, 2\); got rank=3"):
        shard_bounds(5, 3, 2)  # was (7, 9): outside 0..4, silently
    with pytest.raises(ValueError, match="world must be an integer >= 1; got 0"):
        shard_bounds(5, 0, 0)  # was ZeroDivisionError
    with pytest.raises(ValueError, match="rank must be an integer >= 0; got -1"):
        shard_bounds(5, -1, 2)
    with pytest.raises(TypeError, match="n must be an integer"):
        shard_bounds(2.5, 0, 2)


def test_all_gather_rows_names_a_tensor_without_rows():
    from mmdg_lite.distributed import all_gather_rows
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(TypeError, match="tensor of rows, shape \\(n, ...\\); got a 0-d tensor"):
            all_gather_rows(torch.tensor(1.0))  # was 'len() of a 0-d tensor' on every process
        x = torch.ones(3, 2)
        assert all_gather_rows(x) == (x, 0)
    finally:
        dist.destroy_process_group()


def test_init_distributed_names_its_timeout_when_the_group_does_not_form(monkeypatch):
    from mmdg_lite.distributed import DistributedGuidanceError, init_distributed
    with pytest.raises(ValueError, match=r"timeout_s must be at least 0.001 .*got 0.0001"):
        init_distributed("gloo", timeout_s=0.0001)  # was a 0 ms rendezvous: "timed out after 0ms"
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # process 0 of 2, whose peer never starts
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    for k, v in dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0").items():
        monkeypatch.setenv(k, v)
    with pytest.raises(DistributedGuidanceError, match=r"WORLD_SIZE=2 did not form within timeout_s=0.5"):
        init_distributed("gloo", timeout_s=0.5)  # was torch's bare DistStoreError
    assert not dist.is_initialized()


def test_guidance_of_another_group_than_the_sharding_is_refused(settings_run):
    # the batch was sharded over the world but each shard gathered only its own group (itself):
    # every shard was guided on its own, silently (no setting differed)
    for r in range(2):
        text = (settings_run / f"own_group{r}.txt").read_text() if (settings_run / f"own_group{r}.txt").exists() else "ran"
        assert text.startswith("ValueError") and f"gathers over the processes [{r}]" in text and "[0, 1]" in text, text


def test_settings_digest_tells_apart_a_user_kernels_settings():
    """A Kernel subclass that is not a dataclass was described by its class name alone, so processes
    guiding with MyKernel(1.0) and MyKernel(2.0) passed the settings check and guided the shards with
    different kernels, silently."""
    from mmdg_lite.distributed import _run_fields
    from mmdg_lite.kernels import Kernel

    class MyKernel(Kernel):
        def __init__(self, s: float) -> None:
            self.s = s

        def gram(self, x, y):
            return torch.exp(-torch.cdist(x, y) ** 2 / self.s)

    refs = torch.randn(8, 2)

    def field(kernel):
        return _run_fields(4, (2,), 0, {}, None, [MMDGuidance(refs, kernel=kernel)], True)["guidance kernel"]

    assert field(MyKernel(1.0)) != field(MyKernel(2.0))
    assert field(MyKernel(1.0)) == field(MyKernel(1.0))


def test_settings_digest_tells_apart_numpy_scalars_by_value():
    """num_steps=np.int64(10) on one process and np.int64(12) on the other were both described as
    'int64': the check passed, process 0 returned after 10 steps with the other shard's mid-run points
    as its samples; eta=np.float32(0.0) vs np.float32(1.0) mixed two samplers' shards silently."""
    import numpy as np

    from mmdg_lite.distributed import _run_fields

    def fields(**kwargs):
        return _run_fields(4, (2,), 0, kwargs, None, [], True)

    assert fields(num_steps=np.int64(10))["num_steps"] != fields(num_steps=np.int64(12))["num_steps"]
    assert fields(eta=np.float32(0.0))["eta"] != fields(eta=np.float32(1.0))["eta"]
    assert fields(num_steps=np.int64(10))["num_steps"] == fields(num_steps=10)["num_steps"]
    assert fields(eta=np.float64(0.5))["eta"] == fields(eta=0.5)["eta"]


def test_micro_batched_names_a_bare_diffusers_unet_and_the_wrapper_it_needs():
    # README said "Wrap a large UNet in MicroBatched(unet, 16)": a bare UNet2DModel returns
    # UNet2DOutput and sampling failed in torch.cat ("expected Tensor as element 0 ... UNet2DOutput")
    from diffusers import UNet2DModel

    from mmdg_lite.distributed import MicroBatched
    from mmdg_lite.images import UNetDenoiser
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 500)
    with pytest.raises(TypeError, match=r"returned UNet2DOutput.*UNetDenoiser\(unet\)"):
        MicroBatched(unet, 2)(x, t)
    with torch.no_grad():  # the README's wrapping: rows in blocks of 2 give the whole batch's eps
        assert torch.allclose(MicroBatched(UNetDenoiser(unet), 2)(x, t), UNetDenoiser(unet)(x, t), atol=1e-5)
