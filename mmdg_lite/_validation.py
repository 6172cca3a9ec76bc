"""Input checks shared by every public function.

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong value)
with a message that names the argument, the value received and what would be valid.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}, device {value.device}"
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape}, dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:200]


def from_numpy(value: np.ndarray) -> Tensor:
    """``torch.from_numpy``, also for the arrays it refuses with an error that names no argument:
    a flipped view (``x[::-1]``, ``np.flip``: negative strides) or big-endian data are copied."""
    if any(stride < 0 for stride in value.strides) or not value.dtype.isnative:
        value = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("="))
    return torch.from_numpy(value)


def as_float_tensor(value: Any, name: str) -> Tensor:
    """Convert numpy arrays to tensors and reject non-floating dtypes (int, bool, complex)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":  # strings, objects: torch's own error names no argument
            raise TypeError(f"{name} must be an array of numbers; got a numpy array of dtype {value.dtype}")
        value = from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array; got {_describe(value)}")
    if not value.dtype.is_floating_point:
        raise TypeError(
            f"{name} has dtype {value.dtype}; pass a floating-point tensor "
            f"(float32 or float64), e.g. {name}.float()"
        )
    return value


def check_autograd(what: str) -> None:
    """Refuse to take a gradient under ``torch.inference_mode()``: autograd records nothing there
    (``enable_grad`` does not undo it), and torch's own error names no cause."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{what} takes its gradient with autograd, which torch.inference_mode() turns off; "
                           "call it outside inference_mode (torch.no_grad() around it is fine)")


def all_finite(x: Tensor) -> bool:
    """Whether every entry of x is finite. A finite sum proves it (NaN and Inf propagate), read
    as a Python float: 16 x 1024 float32 take 4 us, against 43 us for ``torch.isfinite(x).all()``
    and 10 us for ``torch.isfinite(x.sum())`` (a guided step runs four such checks). Only a sum
    that is not finite (a bad value, or an overflow of finite ones) is settled entry by entry."""
    if x.requires_grad:  # float() of a tensor with a graph (mmd2_grad with weights that require grad) warns
        x = x.detach()
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


def check_finite(x: Tensor, name: str) -> None:
    """Reject NaN/Inf without materialising full-size temporaries.

    ``torch.isfinite`` on a large tensor allocates several tensors of its size (abs, masks):
    about 1.7x the input for float32, which dominated the memory of chunked guidance against
    100k references. A finite sum proves every entry finite (NaN and Inf propagate); only when
    the sum is not finite (a bad value, or an overflow of finite ones) are entries counted,
    block by block.
    """
    if x.device.type == "meta" or x.numel() == 0:
        return
    if bool(torch.isfinite(x.sum())):
        return
    bad = sum(int((~torch.isfinite(block)).sum()) for block in x.reshape(-1).split(1 << 20))
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s); all entries must be finite")


def check_has_values(x: Tensor, name: str) -> None:
    """Refuse tensors on the 'meta' device: they carry a shape but no values to compute with
    (torch's own error, from deep inside a kernel, names neither the argument nor the device)."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is on device meta (shape {tuple(x.shape)}, dtype {x.dtype}): a meta tensor has "
                         "a shape but no values; pass the data on a real device, e.g. cpu or cuda")


def check_points(value: Any, name: str, *, min_count: int = 1, flatten: bool = True,
                 why: str = "") -> Tensor:
    """A set of points of shape (n, *S), n >= min_count; returned flattened to (n, D).

    ``why`` (optional) explains the minimum count in the error message.
    """
    x = as_float_tensor(value, name)
    if x.ndim < 1 or (x.ndim == 1 and flatten):
        raise ValueError(
            f"{name} must have shape (n, D) (or (n, *S) for images/latents); got shape {tuple(x.shape)}"
        )
    if x.shape[0] < min_count:
        raise ValueError(
            f"{name} holds {x.shape[0]} point(s) (shape {tuple(x.shape)}); at least {min_count} required"
            + (f" ({why})" if why else "")
        )
    if x[0].numel() == 0:
        raise ValueError(f"{name} has zero features per point (shape {tuple(x.shape)})")
    check_finite(x, name)
    # contiguous (a copy only for transposed / strided input): BLAS sums in an order that depends
    # on the memory layout, so the same values in a transposed array gave other last bits
    return x.reshape(x.shape[0], -1).contiguous() if flatten else x.contiguous()


def check_pair(x: Tensor, y: Tensor, x_name: str, y_name: str) -> tuple[Tensor, Tensor]:
    """Same device and feature dimension; dtypes are promoted to the wider float type."""
    if x.device != y.device:
        raise ValueError(
            f"{x_name} is on device {x.device} but {y_name} is on device {y.device}; "
            f"move both to one device, e.g. {y_name}.to({x_name}.device)"
        )
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"dimension mismatch: {x_name} has {x.shape[1:].numel()} features per point "
            f"(shape {tuple(x.shape)}) but {y_name} has {y.shape[1:].numel()} (shape {tuple(y.shape)}); "
            "both sets must live in the same space"
        )
    check_has_values(x, x_name)
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype)


def check_layouts(x: Any, y: Any, x_name: str, y_name: str) -> None:
    """Two image-shaped sets (n, *S), (m, *S') need S == S': flattening (B, H, W, C) points against
    (N, C, H, W) references (same size, other layout) compared unrelated pixels without a word.
    A flat (n, D) set against an image-shaped one is accepted (D = prod S is checked later)."""
    sx, sy = getattr(x, "shape", ()), getattr(y, "shape", ())
    if len(sx) > 2 and len(sy) > 2 and tuple(sx[1:]) != tuple(sy[1:]):
        raise ValueError(f"{x_name} has per-point shape {tuple(sx[1:])} but {y_name} has {tuple(sy[1:])} (shapes "
                         f"{tuple(sx)} and {tuple(sy)}); both sets must share one layout, e.g. channels first")


def is_real_number(value: Any) -> bool:
    """A Python or numpy int/float, not a bool (finiteness is the caller's check)."""
    return not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer))


def _as_float(value: Any) -> float:
    """float(value), inf for an int too large for a float (float() raised a bare OverflowError,
    'int too large to convert to float', naming no argument); the callers refuse inf by name."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def check_positive(value: Any, name: str) -> float:
    """A finite number > 0 (bandwidths, scales, constants)."""
    if not is_real_number(value):
        raise TypeError(f"{name} must be a positive number; got {_describe(value)}")
    v = _as_float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return v


def check_nonnegative(value: Any, name: str) -> float:
    if not is_real_number(value):
        raise TypeError(f"{name} must be a non-negative number; got {_describe(value)}")
    v = _as_float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return v


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_weights(value: Any, name: str, n: int, like: Tensor) -> Tensor | None:
    """Optional sample weights of shape (n,), non-negative, positive sum; returned normalised to 1."""
    if value is None:
        return None
    w = as_float_tensor(value, name)
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one weight per point; got shape {tuple(w.shape)}")
    if w.device != like.device:
        raise ValueError(f"{name} is on device {w.device} but the points are on {like.device}")
    check_finite(w, name)
    if bool((w < 0).any()):
        raise ValueError(f"{name} must be non-negative; got minimum {float(w.min()):.4g}")
    # half-precision weights are normalised in float32: in their own dtype bfloat16 thirds summed to
    # 1.002, and float16 weights whose sum passed 65,504 all became 0 (an MMD^2 without that set)
    if w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()
    total = float(w.detach().sum())
    if math.isinf(total):  # finite weights whose sum overflows: scale them down first
        w = w / w.detach().max()
        total = float(w.detach().sum())
    if total <= 0:
        raise ValueError(f"{name} must have a positive sum; got sum {total:.4g}")
    # weights that require grad are divided by their sum as a tensor, so autograd sees the
    # normalisation (a Python float total made d MMD^2 / d w miss it); others as before
    return (w / (w.sum() if w.requires_grad else total)).to(like.dtype)


def check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}; got {_describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value}")
    return int(value)


def check_bool(value: Any, name: str) -> bool:
    """A real bool (numpy's included, returned as bool): 1, "yes" or None would pass an ``if`` silently."""
    if isinstance(value, np.bool_):  # np.True_ (a mask's .all(), an array element) is a bool, as np.int64 is an int
        return bool(value)
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return value


def with_overrides(recipe: dict[str, Any], overrides: dict[str, Any], fn: str,
                   extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The recipe with ``overrides``; a key outside the recipe and ``extra`` (a typo such as
    ``step=``, which was silently ignored and trained the full recipe) raises a TypeError."""
    valid = set(recipe) | set(extra)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"{fn}() got unknown recipe key(s) {unknown}; valid: {sorted(valid)}")
    return {**recipe, **overrides}
