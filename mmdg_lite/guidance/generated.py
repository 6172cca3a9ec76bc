"""The generated set that MMD^2 compares with the references.

* ``BatchSet``: the batch at the current step is guided jointly (paper, Algorithm 1).
* ``MemorySet``: one sample at a time against a memory of at most ``memory_size`` finished
  samples; the first sample (the first chunk: ``batch_size`` samples, 1 by default) is unguided
  (public reference code). It owns reset/remember, and the sampler drives it sequentially
  (``sequential = True``).

A ``BatchSet`` subclass instance may be passed to ``MMDGuidance(generated_set=...)``; e.g.
``mmdg_lite.distributed.DistributedBatchSet`` all-gathers the batch across processes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_int
from ..mmd import _grad, _Prepared
from ..rff import RFFReferenceEmbedding, mmd2_grad_rff

__all__ = ["BatchSet", "MemorySet", "GENERATED_SETS"]

GENERATED_SETS = ("batch", "memory")


def _uniform(n: int, like: Tensor) -> Tensor:
    return like.new_full((n,), 1.0 / n)


class BatchSet:
    """The generated set is the batch at the current step (paper, Algorithm 1): every sample's
    gradient (Eq. 6) sees the whole batch. Stateless; subclass it to change where the batch
    comes from (``DistributedBatchSet`` gathers it from every process)."""

    sequential = False
    per_batch = True  # the generated set is the sampler's batch (sample() checks its size up front)

    def reset(self) -> None:
        """Nothing to forget: the batch is the step's own."""

    def remember(self, x0: Tensor, prompts: Tensor | None = None) -> None:
        """Nothing to keep between chunks (memory mode keeps finished samples)."""

    def pool(self, z: Tensor) -> Tensor:
        """The generated points that set the data scale with the references: (B, D)."""
        return z

    def size(self, batch: int) -> int:
        """B in Eq. 6's 1/B factors: the number of generated samples each gradient compares."""
        return batch

    def gradient(self, z: Tensor, refs: Tensor, kernel, prompts: Tensor | None,
                 ref_prompts: Tensor | None, estimator: str, chunk_size: int | None,
                 prompt_weighting: str = "joint") -> Tensor | None:
        """grad of MMD^2(batch, references) w.r.t. each row of z (B, D) (Eq. 6 / Eq. 11; see
        ``mmd._grad`` for ``prompt_weighting``)."""
        if estimator == "unbiased" and len(z) < 2:
            raise ValueError(
                f"estimator='unbiased' needs at least 2 generated samples in each guided batch (it "
                f"leaves out the i = i' pairs); got a batch of {len(z)}: draw n >= 2 with batch_size "
                ">= 2, or use estimator='biased'")
        p = _Prepared(z, refs, _uniform(len(z), z), _uniform(len(refs), refs), prompts, ref_prompts,
                      kernel, z.shape)
        return _grad(p, estimator, chunk_size, prompt_weighting)

    def gradient_rff(self, z: Tensor, embedding: RFFReferenceEmbedding) -> Tensor:
        """The same with the RFF reference term (``rff_features``): (B, D)."""
        return mmd2_grad_rff(z, embedding)


class MemorySet(BatchSet):
    """The public reference code's generated set: each sample, alone, against a memory of at most
    ``memory_size`` finished samples (the run's first chunk, one sample by default, is unguided). The
    sampler drives it a chunk of ``batch_size`` at a time (one sample by default; ``sequential``),
    each row with the memory as its own set, and hands it each finished chunk (``remember``)."""

    sequential = True

    def __init__(self, memory_size: int = 99) -> None:
        self.memory_size = check_int(memory_size, "memory_size", 1)
        self.reset()

    def reset(self) -> None:
        """Forget the finished samples (the sampler calls this before a run)."""
        self.memory: Tensor | None = None  # (M, D)
        self.memory_prompts: Tensor | None = None  # (M, P)

    def remember(self, x0: Tensor, prompts: Tensor | None = None) -> None:
        """Append finished samples (n, *S), keeping the newest ``memory_size``."""
        flat = x0.detach().reshape(len(x0), -1)
        self.memory = (flat if self.memory is None else torch.cat([self.memory, flat]))[-self.memory_size:]
        if prompts is not None:
            mp = prompts if self.memory_prompts is None else torch.cat([self.memory_prompts, prompts])
            self.memory_prompts = mp[-self.memory_size:]

    def pool(self, z: Tensor) -> Tensor:
        """The current samples and the memory: (B + M, D)."""
        return z if self.memory is None else torch.cat([z, self.memory.to(z)])

    def size(self, batch: int) -> int:
        """1 + M: one sample and the memory form each generated set."""
        return 1 + (0 if self.memory is None else len(self.memory))

    def gradient(self, z, refs, kernel, prompts, ref_prompts, estimator, chunk_size,
                 prompt_weighting="joint"):
        """Each row with the memory is its own generated set; None while the memory is empty."""
        if self.memory is None:
            return None  # the first chunk (sample) is unguided, as in the reference code
        mem = self.memory.to(z)
        mp = None if self.memory_prompts is None or prompts is None else self.memory_prompts.to(prompts)
        rows = []
        for i in range(len(z)):
            gen = torch.cat([z[i:i + 1], mem])  # (1 + M, D)
            gp = None if prompts is None else torch.cat([prompts[i:i + 1], mp])
            rows.append(super().gradient(gen, refs, kernel, gp, ref_prompts, estimator, chunk_size,
                                        prompt_weighting)[0])
        return torch.stack(rows)  # (B, D)
