"""Prompt-aware guidance (paper Sec. 5, Eq. 10-11): encoders, product kernel, toy world, model."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmdg_lite.guidance import MMDGuidance
from mmdg_lite.kernels import GaussianKernel, ProductKernel
from mmdg_lite.mmd import mmd2_grad, mmd2_grad_autograd
from mmdg_lite.toys import CATEGORIES, PAIRED_STYLES, load_or_train_cond_2d, toy_world
from mmdg_lite.prompts import (CallableEncoder, CoverageGate, TableEncoder, prompt_aware_guidance,
                               prompt_weights, reference_coverage, sample_with_prompts)
from mmdg_lite.sampling import sample


class ConstantKernel(GaussianKernel):
    """k_p = 1 for every pair (an infinitely wide prompt kernel)."""

    def gram(self, x, y):
        return torch.ones(len(x), len(y), dtype=x.dtype)


def _state(B=6, D=2, seed=0, cond=None):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(B, D, generator=g, dtype=torch.float64)
    return SimpleNamespace(x_t=x_t, x_prev=0.9 * x_t, eps=torch.zeros_like(x_t), t=500, step_index=3,
                           num_steps=10, alpha_bar_t=0.5, alpha_bar_prev=0.6, denoiser=None,
                           cond=cond, sample_index=torch.arange(B))


@pytest.fixture(scope="module")
def world():
    return toy_world()


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_or_train_cond_2d()[0]


def test_constant_prompt_kernel_reduces_to_plain_guidance(world):
    enc = world.encoder()
    refs, rprompts = world.references(PAIRED_STYLES, 5, seed=0)
    refs = refs.double()
    st = _state(B=6)
    sp = ["cat", "dog", "car", "cat", "dog", "car"]
    plain = MMDGuidance(refs, kernel=GaussianKernel(0.7), strength=0.5)(st)
    aware = MMDGuidance(refs, kernel=GaussianKernel(0.7), strength=0.5,
                        reference_prompts=enc.encode(rprompts).double(),
                        sample_prompts=enc.encode(sp).double(), prompt_kernel=ConstantKernel(1.0))(st)
    torch.testing.assert_close(aware, plain, rtol=0, atol=1e-12)
    # a huge prompt bandwidth is plain guidance up to exp(-2 / (2 * 1e4^2)) ~ 1 - 1e-8
    wide = prompt_aware_guidance(refs, rprompts, enc, sp, prompt_bandwidth=1e4,
                                 kernel=GaussianKernel(0.7), strength=0.5)(st)
    torch.testing.assert_close(wide, plain, rtol=1e-6, atol=1e-7)


def test_constant_prompt_kernel_reduces_to_plain_through_the_sampler(world, model):
    enc = world.encoder()
    refs, rprompts = world.references(PAIRED_STYLES, 10, seed=0)
    prompts = [c for c in CATEGORIES for _ in range(8)]
    cond = enc.encode(prompts)
    kw = dict(kernel=GaussianKernel(0.75), strength=1.0)
    plain = sample(model, len(prompts), (2,), cond=cond, num_steps=20, seed=3,
                   guidance=MMDGuidance(refs, **kw)).samples
    aware = sample(model, len(prompts), (2,), cond=cond, num_steps=20, seed=3,
                   guidance=MMDGuidance(refs, reference_prompts=enc.encode(rprompts),
                                        prompt_kernel=ConstantKernel(1.0), **kw)).samples  # cond fallback
    torch.testing.assert_close(aware, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prompt_bw", [0.3, 1.0])
def test_product_kernel_closed_form_gradient_equals_autograd(prompt_bw):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 2, generator=g, dtype=torch.float64), torch.randn(9, 2, generator=g, dtype=torch.float64)
    px, py = torch.randn(7, 8, generator=g, dtype=torch.float64), torch.randn(9, 8, generator=g, dtype=torch.float64)
    k = ProductKernel(GaussianKernel(prompt_bw), GaussianKernel(0.8))
    for est in ("biased", "unbiased"):
        closed = mmd2_grad(x, y, k, x_prompts=px, y_prompts=py, estimator=est)
        auto = mmd2_grad_autograd(x, y, k, x_prompts=px, y_prompts=py, estimator=est)
        torch.testing.assert_close(closed, auto, rtol=1e-9, atol=1e-12)


def test_errors_name_the_argument(world):
    enc = world.encoder()
    refs, rprompts = world.references(PAIRED_STYLES, 4, seed=0)
    with pytest.raises(ValueError, match=r"reference_prompts has 11 prompts but references has 12"):
        prompt_aware_guidance(refs, rprompts[:-1], enc)
    with pytest.raises(ValueError, match=r"reference_prompts must hold at least one prompt"):
        prompt_aware_guidance(refs, [], enc)
    with pytest.raises(ValueError, match=r"sample_prompts must hold at least one prompt"):
        prompt_aware_guidance(refs, rprompts, enc, sample_prompts=[])
    with pytest.raises(TypeError, match=r"sample_prompts must be a list of prompt strings"):
        prompt_aware_guidance(refs, rprompts, enc, sample_prompts="cat")
    with pytest.raises(ValueError, match=r"unknown prompt\(s\) \['horse'\].*known prompts: \['cat', 'dog', 'car'\]"):
        enc.encode(["cat", "horse"])
    with pytest.raises(ValueError, match=r"prompt_bandwidth must be a finite number > 0; got 0"):
        prompt_aware_guidance(refs, rprompts, enc, prompt_bandwidth=0)
    # prompt features of the wrong dimension (sampler cond of another size)
    g = prompt_aware_guidance(refs, rprompts, enc, kernel=GaussianKernel(0.7))
    with pytest.raises(ValueError, match=r"sample prompts have 3 features but reference_prompts have 8"):
        g(_state(B=4, cond=torch.randn(4, 3, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"sample_prompts"):
        MMDGuidance(refs, reference_prompts=enc.encode(rprompts), sample_prompts=torch.randn(5, 3))
    # prompt count vs sample count
    g = prompt_aware_guidance(refs, rprompts, enc, ["cat"] * 4)
    with pytest.raises(ValueError, match=r"holds 4 sample_prompts but prompts has 6"):
        sample_with_prompts(lambda x, t, c: torch.zeros_like(x), ["cat"] * 6, enc, guidance=g)
    # same count, other prompts: the guidance would weight each sample by the wrong prompt
    g = prompt_aware_guidance(refs, rprompts, enc, ["cat", "cat", "dog", "cat"])
    with pytest.raises(ValueError, match=r"sample_prompts differ from prompts \(first at row 2: prompts\[2\] = 'cat'\)"):
        sample_with_prompts(lambda x, t, c: torch.zeros_like(x), ["cat"] * 4, enc, guidance=g)
    x = sample_with_prompts(lambda x, t, c: torch.zeros_like(x), ["cat", "cat", "dog", "cat"], enc, guidance=g,
                            num_steps=3, seed=0)  # the prompts it was built for
    assert x.shape == (4, 2)
    with pytest.raises(ValueError, match=r"every table entry must have the same length"):
        TableEncoder({"a": [1.0, 0.0], "b": [1.0, 0.0, 0.0]})
    bad = CallableEncoder(lambda ps: torch.zeros(len(ps), 5), dim=4, name="text")
    with pytest.raises(ValueError, match=r"text encoder returned shape \(2, 5\) for 2 prompt\(s\); expected \(2, 4\)"):
        bad.encode(["a", "b"])


def test_absent_prompts_get_vanishing_finite_corrections():
    table = {"cat": [1.0, 0.0, 0.0], "dog": [0.0, 1.0, 0.0], "far": [0.0, 0.0, 1.0]}
    enc = TableEncoder(table)
    g = torch.Generator().manual_seed(0)
    refs = torch.randn(20, 2, generator=g, dtype=torch.float64) + 3.0
    rprompts = ["cat"] * 10 + ["dog"] * 10
    w = prompt_weights(["far"], rprompts, enc, prompt_bandwidth=0.3)
    assert bool(torch.isfinite(w).all()) and float(w.max()) < 1e-4
    st = _state(B=3)
    kw = dict(prompt_bandwidth=0.3, kernel=GaussianKernel(2.0), strength=1.0, prompt_weighting="joint")
    far = prompt_aware_guidance(refs, rprompts, enc, ["cat", "dog", "far"], **kw)(st)
    near = prompt_aware_guidance(refs, rprompts, enc, ["cat", "dog", "cat"], **kw)(st)
    step_far, step_near = (st.x_prev - far)[2].norm(), (st.x_prev - near)[2].norm()
    assert bool(torch.isfinite(far).all())
    assert float(step_far) < 1e-4 * float(step_near)  # same point, far prompt: ~no correction
    # smooth in the bandwidth: the far sample's correction grows continuously from 0, never NaN
    steps = [float((st.x_prev - prompt_aware_guidance(
        refs, rprompts, enc, ["cat", "dog", "far"], **{**kw, "prompt_bandwidth": bw})(st))[2].norm())
        for bw in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)]
    assert all(map(lambda v: v == v, steps)) and steps[0] < 1e-100
    assert all(a <= b for a, b in zip(steps, steps[1:]))
    # a group of absent-prompt samples still repels itself in Eq. 11; the coverage gate stops it
    st = _state(B=4)
    g2 = prompt_aware_guidance(refs, rprompts, enc, ["cat", "dog", "far", "far"], kernel=GaussianKernel(1.0),
                               prompt_weighting="joint")
    assert float((st.x_prev - g2(st))[2:].norm()) > 1e-3
    rho = reference_coverage(g2, g2.sample_prompts)
    torch.testing.assert_close(rho[:2], torch.ones(2, dtype=rho.dtype))
    assert float(rho[2:].max()) < 1e-4
    gated = CoverageGate(g2)(st)
    ungated = float((st.x_prev - g2(st))[2:].norm())
    assert float((st.x_prev - gated)[2:].norm()) < 1e-4 * ungated  # scaled by rho < 1e-4
    torch.testing.assert_close(gated[:2], g2(st)[:2])


def test_conditional_model_follows_its_prompt(world, model):
    prompts = [c for c in CATEGORIES for _ in range(100)]
    x = sample_with_prompts(model, prompts, world.encoder(), num_steps=50, seed=0)
    table, cols = world.style_table(x, prompts)
    assert cols[-1] == "other category"
    assert float(table[:, -1].max()) <= 0.02  # samples for prompt c land in c's region
    assert float((table[:, 0] - 0.7).abs().max()) < 0.12  # mostly photo, at the base rate
    for c in range(3):  # every style is present (guidance can only reach what the model makes)
        assert float(table[c, 1:4].min()) > 0.02


def test_world_checks_points_and_pairing(world):
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\).*got shape \(4, 3\)"):
        world.assign(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        world.off_mode(torch.randn(4, 3))
    x, prompts = torch.randn(3, 2), ["cat", "dog", "car"]
    with pytest.raises(ValueError, match=r"pairing\['cat'\] must be one of 'photo', 'anime', .*got 'animee'"):
        world.pairing_scores(x, prompts, {"cat": "animee"})
    with pytest.raises(ValueError, match=r"pairing key must be one of 'cat', 'dog', 'car'; got 'cta'"):
        world.pairing_scores(x, prompts, {"cta": "anime"})
    with pytest.raises(TypeError, match="pairing must be a mapping"):
        world.pairing_scores(x, prompts, ["cat"])


def test_coverage_is_one_for_every_prompt_with_references_whatever_its_share():
    # a mean over the references gave "car", with 10 of 40 references, rho 0.4: CoverageGate then
    # cut its guidance by 60 %; the oracle is max_j k_p(p_i, p_j^r) computed by hand
    from mmdg_lite.toys import toy_world

    w = toy_world()
    enc = w.encoder()
    refs, rp = w.references({"cat": "anime"}, 30)
    r2, rp2 = w.references({"car": "pixar"}, 10, seed=1)
    g = prompt_aware_guidance(torch.cat([refs, r2]), rp + rp2, enc, prompt_weighting="joint")
    sp = enc.encode(["cat", "car", "dog"])
    rho = reference_coverage(g, sp)
    torch.testing.assert_close(rho[:2], torch.ones(2, dtype=rho.dtype))
    pk = g._kernel()
    u, v = pk._prep(sp), pk._prep(g.reference_prompts)
    sigma = pk.prompt_kernel.resolve(u, v).bandwidth
    oracle = torch.exp(-torch.cdist(u, v) ** 2 / (2 * sigma**2)).amax(1)
    torch.testing.assert_close(rho, oracle.to(rho.dtype))
    assert float(rho[2]) < 0.5
    with pytest.raises(ValueError, match=r"sample_prompts must be a tensor \(n, \d+\)"):
        reference_coverage(g, ["cat"])


def test_prompt_helpers_name_bad_entries():
    from mmdg_lite.toys import toy_world

    with pytest.raises(TypeError, match=r"table\['cat'\] must be a 1-D vector of numbers"):
        TableEncoder({"cat": "meow"})
    with pytest.raises(TypeError, match=r"table\['cat'\] must be a 1-D vector of real numbers; got dtype torch.complex"):
        TableEncoder({"cat": [1 + 2j, 0j]})
    w = toy_world()
    with pytest.raises(ValueError, match="generator must be a torch.Generator or a seed.*got 1.5"):
        w.sample(["cat"], 1.5)
    assert torch.equal(w.sample(["cat"], np.int64(3))[0], w.sample(["cat"], 3)[0])
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\); got -1"):
        w.references({"cat": "anime"}, seed=-1)
    with pytest.raises(TypeError, match="styles must be a list of style names.*one str 'anime'"):
        w.sample(["cat", "dog"], 0, styles="anime")
    with pytest.raises(TypeError, match="pairing must be a mapping"):
        w.references(["cat"])
    with pytest.raises(ValueError, match=r"pairing must name at least one category -> style.*got \{\}"):
        w.references({})  # named 'prompts', an argument references() does not have
    enc = w.encoder()
    model = lambda x, t, c=None: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(TypeError, match="do not pass cond= as well"):
        sample_with_prompts(model, ["cat"], enc, cond=enc.encode(["cat"]), num_steps=2)


def test_prompt_kernel_refuses_zero_prompts_and_the_gate_forwards_settings():
    g = torch.Generator().manual_seed(0)
    y, z = torch.randn(6, 2, generator=g), torch.randn(4, 2, generator=g)
    py = torch.randn(6, 3, generator=g)
    zero = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"^prompts must be non-zero vectors .*row\(s\) \[0, 1, 2, 3\]"):
        MMDGuidance(y, reference_prompts=py).gradient(z, zero)  # normalised to 0: a fake prompt
    cond = torch.randn(4, 3, generator=g)
    cond[2] = 0.0  # the sampler's cond, read as the prompt features: named, at the step it reaches the guidance
    with pytest.raises(ValueError, match=r"^cond \(the samples' prompt features.*non-zero vectors.*row\(s\) \[2\]"):
        sample(lambda x, t, c=None: torch.zeros_like(x), 4, (2,), cond=cond, num_steps=3,
               guidance=MMDGuidance(y, reference_prompts=py))
    cond[2, 0] = float("nan")  # refused by name, not as a non-finite gradient blamed on the points and bandwidths
    with pytest.raises(ValueError, match=r"^cond \(the samples' prompt features.*contains NaN or Inf"):
        sample(lambda x, t, c=None: torch.zeros_like(x), 4, (2,), cond=cond, num_steps=3,
               guidance=MMDGuidance(y, reference_prompts=py))
    guide = MMDGuidance(y, reference_prompts=py, sample_prompts=py[:4], prompt_weighting="joint")
    with pytest.raises(ValueError, match="sample_prompts"):
        reference_coverage(guide, torch.full((2, 3), float("nan")))  # returned NaN
    gate = CoverageGate(guide)
    gate.strength = 3.0  # read back 3.0 while the guidance kept 1.0
    gate.track = True
    assert guide.strength == 3.0 and guide.track is True and gate.strength == 3.0


def test_coverage_gate_copies_and_pickles_and_guides_as_the_original(world, model):
    """copy.copy, copy.deepcopy and pickle built a bare gate whose __getattr__ raised KeyError."""
    import copy
    import pickle

    prompts = [CATEGORIES[i % len(CATEGORIES)] for i in range(8)]
    refs, _ = world.sample(prompts[:4], 0)
    enc = world.encoder()
    gate = CoverageGate(prompt_aware_guidance(refs, prompts[:4], enc, sample_prompts=prompts,
                                              prompt_weighting="joint"))
    run = lambda g: sample_with_prompts(model, prompts, enc, guidance=g, num_steps=4, seed=1)  # noqa: E731
    want = run(gate)
    for clone in (copy.copy(gate), copy.deepcopy(gate), pickle.loads(pickle.dumps(gate))):
        assert isinstance(clone, CoverageGate) and torch.equal(run(clone), want)


def test_prompt_world_refuses_parts_that_disagree():
    # rates not summing to 1 were renormalised by multinomial, a short means raised IndexError at sample time,
    # a negative std sampled happily
    from mmdg_lite.toys import PromptWorld, toy_world

    w = toy_world()
    parts = dict(categories=w.categories, styles=w.styles, means=w.means, base_rates=w.base_rates, std=w.std,
                 embeddings=w.embeddings)
    for change, match in ((dict(base_rates=torch.tensor([[0.5, 0.1, 0.1, 0.1]] * 3)), "row summing to 1"),
                          (dict(means=w.means[:2]), r"means must be a float tensor of shape \(3, 4, 2\)"),
                          (dict(std=-0.1), "std must be a finite number > 0"),
                          (dict(embeddings=w.embeddings[:2]), r"embeddings must have shape \(3, P\)"),
                          # a repeated name: the encoder gave 'cat' row 1's embedding, sample() row 0's modes
                          (dict(categories=("cat", "cat", "car")), r"categories must be a tuple of distinct name "
                                                                   r"strings.*got \('cat', 'cat', 'car'\)"),
                          (dict(styles=("photo", "anime", "anime", "pixar")), "styles must be a tuple of distinct"),
                          (dict(categories="abc"), "categories must be a tuple of distinct")):
        with pytest.raises(ValueError, match=match):
            PromptWorld(**{**parts, **change})
    assert torch.equal(PromptWorld(**parts).sample(["cat", "car"], 3)[0], w.sample(["cat", "car"], 3)[0])


def test_sample_with_prompts_checks_the_prompts_of_a_chained_guidance_members(world):
    """Only the guidance itself (or a gate's inner guidance) was compared with the sampled prompts:
    a ChainedGuidance of a hook built for another prompt order guided every sample toward the
    references of another prompt, silently."""
    from mmdg_lite.guidance import ChainedGuidance

    enc = world.encoder()
    refs, rprompts = world.references(PAIRED_STYLES, 3)
    prompts = ["cat", "cat", "car", "dog"]
    model = lambda x, t, c=None: torch.zeros_like(x)  # noqa: E731
    other = prompt_aware_guidance(refs, rprompts, enc, prompts[::-1])
    for guide in (ChainedGuidance(other), ChainedGuidance(CoverageGate(other)),
                  ChainedGuidance(ChainedGuidance(other))):
        with pytest.raises(ValueError, match=r"sample_prompts differ from prompts \(first at row 0: prompts\[0\] = 'cat"):
            sample_with_prompts(model, prompts, enc, guidance=guide, num_steps=2)
    with pytest.raises(ValueError, match=r"the guidance holds 3 sample_prompts but prompts has 4"):
        sample_with_prompts(model, prompts, enc, num_steps=2,
                            guidance=ChainedGuidance(prompt_aware_guidance(refs, rprompts, enc, prompts[:3])))
    same = prompt_aware_guidance(refs, rprompts, enc, prompts, kernel=GaussianKernel(0.7))
    assert sample_with_prompts(model, prompts, enc, guidance=ChainedGuidance(same), num_steps=2).shape == (4, 2)


def test_prompt_aware_guidance_names_a_scalar_reference_tensor(world):
    """A 0-d references tensor raised torch's bare 'len() of a 0-d tensor' before MMDGuidance's check."""
    enc = world.encoder()
    _, rprompts = world.references(PAIRED_STYLES, 2)
    with pytest.raises(ValueError, match=r"^references must have shape \(n, D\).*got shape \(\)"):
        prompt_aware_guidance(torch.tensor(1.0), rprompts, enc)


def test_coverage_gate_history_records_the_step_it_applies():
    """With track=True the history's step_norm ("the step as applied") was the wrapped guidance's
    ungated step: samples whose prompt has no references moved ~0 while it read 0.15 per step."""
    table = {"cat": [1.0, 0.0, 0.0], "dog": [0.0, 1.0, 0.0], "far": [0.0, 0.0, 1.0]}
    enc = TableEncoder(table)
    g = torch.Generator().manual_seed(0)
    refs = torch.randn(20, 2, generator=g, dtype=torch.float64) + 3.0
    st = _state(B=4)
    for sp in (["far"] * 4, ["cat", "dog", "far", "far"]):
        guide = prompt_aware_guidance(refs, ["cat"] * 10 + ["dog"] * 10, enc, sp, kernel=GaussianKernel(1.0),
                                      prompt_weighting="joint", track=True)
        gate = CoverageGate(guide)
        out = gate(st)
        assert len(gate.history) == 1
        applied = float((st.x_prev - out).norm(dim=1).mean())
        assert gate.history[0]["step_norm"] == pytest.approx(applied, rel=1e-12, abs=1e-15)
        ungated = float((st.x_prev - guide(st)).norm(dim=1).mean())
        assert len(guide.history) == 2 and guide.history[1]["step_norm"] == pytest.approx(ungated, rel=1e-12)
    assert gate.history[0]["step_norm"] < 0.9 * ungated  # the two far samples are held back


def test_a_user_encoder_is_held_to_the_protocol(world):
    """PromptEncoder is a protocol anyone may implement; its output went unchecked: one row per distinct
    prompt made sample_with_prompts(['cat', 'cat', 'dog']) return 2 samples, prompt_weights a (1, N_r)
    matrix for 2 prompts, prompt_aware_guidance blame 'reference_prompts has 3 prompts but references has
    6'; NaN features gave NaN weights and a list a bare AttributeError."""
    table = world.encoder()

    class Distinct:  # a caching slip: one row per distinct prompt
        dim = 8

        def encode(self, prompts):
            return table.encode(list(dict.fromkeys(prompts)))

    class Listed(Distinct):
        def encode(self, prompts):
            return table.encode(prompts).tolist()

    class NaN(Distinct):
        def encode(self, prompts):
            return table.encode(prompts) * float("nan")

    class Wide(Distinct):
        dim = 4  # says 4, returns 8

        def encode(self, prompts):
            return table.encode(prompts)

    refs, rprompts = world.references(PAIRED_STYLES, 2)
    model = lambda x, t, c=None: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match=r"^Distinct\.encode output has shape \(2, 8\) for 3 prompts; .*\(3, 8\)"):
        sample_with_prompts(model, ["cat", "cat", "dog"], Distinct(), num_steps=2)
    with pytest.raises(ValueError, match=r"^Distinct\.encode output has shape \(3, 8\) for 6 reference_prompts"):
        prompt_aware_guidance(refs, rprompts, Distinct())
    with pytest.raises(ValueError, match=r"^Distinct\.encode output has shape \(1, 8\) for 2 sample_prompts"):
        prompt_weights(["cat", "cat"], rprompts, Distinct())
    with pytest.raises(TypeError, match=r"^Listed\.encode output must be a torch\.Tensor or numpy array; got list"):
        prompt_weights(["cat"], rprompts, Listed())
    with pytest.raises(ValueError, match=r"^NaN\.encode output contains 8 NaN"):
        prompt_weights(["cat"], rprompts, NaN())
    with pytest.raises(ValueError, match=r"^Wide\.encode output has shape \(1, 8\) for 1 prompts; .*\(1, 4\)"):
        sample_with_prompts(model, ["cat"], Wide(), num_steps=2)
    # a protocol-abiding encoder of its own class: the same numbers as the table it wraps
    class Same(Distinct):
        def encode(self, prompts):
            return table.encode(prompts).numpy()

    torch.testing.assert_close(prompt_weights(["cat", "car"], rprompts, Same()),
                               prompt_weights(["cat", "car"], rprompts, table), rtol=0, atol=0)
