"""The stabilisers: least squares, lazy R1, ADA, a schedule that ends with the run, D's held-out view.

Each is checked against a reference computation written out here with plain autograd, in exact
fp32 and under bf16 autocast (forced on where the CPU only emulates bf16), and each resumes bit
for bit.
"""
from __future__ import annotations

import copy
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facegan import augment, batches, bench, checkpoint, clock, config, losses, models, step, train
from facegan import device as device_policy
from facegan.holdout import HeldOutView
from facegan.state import ema_decay_at, ema_update, make_state


@pytest.fixture(scope="module")
def real64(celeba_batch):
    return celeba_batch  # 16 real faces at 64x64


def _state(preset: str = "fast64", **overrides):
    cfg = config.make_config(preset, batch_size=16, **overrides)
    state = make_state(cfg, steps_per_epoch=100, device="cpu")
    state.d_opt = torch.optim.SGD(state.D.parameters(), lr=1.0)  # SGD at rate 1: the update is the gradient
    state.g_opt = torch.optim.SGD(state.G.parameters(), lr=1.0)
    return state


def _reference_d_grad(state, real: torch.Tensor, seed: int, r1_scale: float = 0.0) -> torch.Tensor:
    """D's gradient of the preset's loss written out by hand, plus ``r1_scale`` * R1, from a copy."""
    s = copy.deepcopy(state)
    cfg, D, G = s.config, s.D, s.G
    torch.manual_seed(seed)
    z = models.sample_latent(real.size(0), cfg)
    fake = G(z).detach()
    x = real.clone().requires_grad_(True)
    d_real, d_fake = D(x), D(fake)
    if cfg.loss == "lsgan":
        target = cfg.real_label[0]
        loss = 0.5 * ((d_real - target) ** 2).mean() + 0.5 * (d_fake**2).mean()
    else:  # bce with a fixed real label
        loss = -(cfg.real_label[0] * F.logsigmoid(d_real) + (1 - cfg.real_label[0]) * F.logsigmoid(-d_real)).mean() \
            - F.logsigmoid(-d_fake).mean()
    if r1_scale:
        (g,) = torch.autograd.grad(d_real.sum(), x, create_graph=True)
        loss = loss + r1_scale * (g**2).sum(dim=(1, 2, 3)).mean()
    grads = torch.autograd.grad(loss, list(D.parameters()))
    return torch.cat([g.flatten() for g in grads])


def _engine_d_update(state, real: torch.Tensor, seed: int) -> torch.Tensor:
    """Minus the change one ``train_step`` makes to D under SGD at rate 1: D's gradient."""
    s = copy.deepcopy(state)
    before = torch.cat([p.detach().flatten().clone() for p in s.D.parameters()])
    torch.manual_seed(seed)
    step.train_step(s, real)
    return before - torch.cat([p.detach().flatten() for p in s.D.parameters()])


def _set_rate(state, rate: float = 1.0) -> None:
    state.config = state.config.replace(lr_d=rate, lr_g=rate)


def test_least_squares_losses_are_their_formulas():
    real, fake = torch.tensor([1.5, 0.2, -0.3]), torch.tensor([0.4, -1.0, 2.0])
    expected_d = 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()
    assert losses.lsgan_d_loss(real, fake).item() == pytest.approx(expected_d.item())
    assert losses.lsgan_d_loss(real, fake, (0.9, 0.9)).item() == pytest.approx(
        (0.5 * ((real - 0.9) ** 2).mean() + 0.5 * (fake**2).mean()).item())
    assert losses.lsgan_g_loss(fake).item() == pytest.approx((0.5 * ((fake - 1) ** 2).mean()).item())
    # with smoothed real labels G aims where D's reals are (Mao et al.'s c = b)
    assert losses.lsgan_g_loss(fake, 0.9).item() == pytest.approx((0.5 * ((fake - 0.9) ** 2).mean()).item())
    # noisy labels: every real target lies in [lo, hi], so the loss lies between the two fixed-target ones
    lo_hi = [losses.lsgan_d_loss(torch.zeros(1000), torch.zeros(1000), (t, t)).item() for t in (0.7, 1.2)]
    noisy = losses.lsgan_d_loss(torch.zeros(1000), torch.zeros(1000), (0.7, 1.2)).item()
    assert lo_hi[0] < noisy < lo_hi[1]


@pytest.mark.parametrize("kind", ["lsgan", "r1-due", "r1-lazy-skip"])
def test_stabilised_d_update_matches_the_reference_in_fp32(kind, real64):
    overrides = {"lsgan": dict(loss="lsgan", real_label=(1.0, 1.0)),
                 "r1-due": dict(r1_gamma=2.0, r1_every=4), "r1-lazy-skip": dict(r1_gamma=2.0, r1_every=4)}[kind]
    state = _state(amp=False, channels_last=False, **overrides)
    _set_rate(state)
    cfg = state.config
    state.step = 1 if kind == "r1-lazy-skip" else 8  # R1 is due when step % r1_every == 0
    # lazy regularisation: gamma/2 * R1, times r1_every, on due steps only
    r1_scale = cfg.r1_gamma / 2 * cfg.r1_every if kind == "r1-due" else 0.0
    engine = _engine_d_update(state, real64, seed=3)
    reference = _reference_d_grad(state, real64, seed=3, r1_scale=r1_scale)
    assert torch.allclose(engine, reference, atol=1e-5, rtol=1e-3)
    if kind != "lsgan":  # and the penalty is not negligible: without it the update differs
        plain = _reference_d_grad(state, real64, seed=3, r1_scale=cfg.r1_gamma / 2 * cfg.r1_every if
                                  kind == "r1-lazy-skip" else 0.0)
        assert not torch.allclose(engine, plain, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("overrides", [dict(loss="lsgan"), dict(r1_gamma=1.0),
                                       dict(diffaug="color,translation,cutout", ada_target=0.6),
                                       dict(diffaug="rotation,lighting", ada_target=0.6),
                                       dict(feature_matching=1.0), dict(progressive="10,10")],
                         ids=["lsgan", "r1", "ada", "rotation-lighting", "feature-matching", "growing-half-size"])
def test_stabilised_step_in_bf16_stays_within_minibatch_noise(overrides, real64, monkeypatch):
    """bf16 rounds conv and matmul operands: the update it makes must differ from fp32's by a small
    fraction of what another minibatch changes (the criterion of the presets' own bf16 test)."""
    state = make_state(config.make_config("fast64", batch_size=16, **overrides), 100, "cpu")
    if state.ada is not None:
        state.ada.p = 0.5  # half the images augmented, by the same draws in both precisions
    monkeypatch.setattr(device_policy, "native_bf16", lambda device_type: True)  # bf16 even where emulated
    assert device_policy.training_precision(state.config, state.device) == "bf16"
    ratios = bench.bf16_rounding_vs_batch_noise(state, real64, real64.flip(3))
    assert all(0 < r < 0.2 for r in ratios.values()), ratios  # 0: the same fp32 computation twice


def test_r1_penalty_is_the_squared_input_gradient():
    """For D(x) = sum(w * x) the input gradient is w everywhere: R1 = |w|^2 for every image."""
    w = torch.randn(3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    out = (x * w).sum(dim=(1, 2, 3))
    assert losses.r1_penalty(out, x).item() == pytest.approx((w**2).sum().item(), rel=1e-5)


def test_augmentation_probability_applies_each_op_to_that_share_of_images():
    x = torch.rand(2000, 3, 8, 8) * 2 - 1
    assert torch.equal(augment.diff_augment(x, "color", p=0.0), x)
    torch.manual_seed(0)
    full = augment.diff_augment(x, "color")
    torch.manual_seed(0)
    assert torch.equal(augment.diff_augment(x, "color", p=1.0), full)
    changed = (augment.diff_augment(x, "color", p=0.3) != x).flatten(1).any(1).float().mean().item()
    assert changed == pytest.approx(0.3, abs=0.04)


def test_ada_moves_p_towards_its_target_by_the_images_seen():
    ada = augment.AdaState(target=0.6, kimg=1.0)
    for _ in range(ada.interval - 1):
        ada.observe(torch.ones(16), 0.0)
        assert ada.adjust() is None  # not yet an interval
    ada.observe(torch.ones(16), 0.0)
    assert ada.adjust() == 1.0 and ada.p == pytest.approx(64 / 1000)  # D calls every real real: p rises
    for _ in range(ada.interval):
        ada.observe(-torch.ones(16), 0.0)
    assert ada.adjust() == -1.0 and ada.p == 0.0  # now none: p falls, and stays in [0, 1]
    for _ in range(ada.interval):  # the centre moves the line: scores of 0.4 against 0.5 are "fake"
        ada.observe(torch.full((16,), 0.4), 0.5)
    assert ada.adjust() == -1.0
    saved = ada.state_dict()
    again = augment.AdaState(0.6, 1.0)
    again.load_state_dict(saved)
    assert again.state_dict() == saved


def test_ada_raises_p_when_d_memorises_a_small_set(celeba_dir):
    """16 faces, seen again and again, against a G that barely learns: D soon calls every real
    face real, r_t > 0.6, and p must rise (by 64/500 per interval of 4 steps of 16 images)."""
    cfg = config.make_config("small32", subset=16, batch_size=16, epochs=40, log_every=4, lr_g=1e-6,
                             diffaug="translation", ada_target=0.6, ada_kimg=0.5)
    result = train.train(cfg, None, progress=False)
    p = result.history["ada_p"]
    assert len(p) == len(result.history["step"]) == 10
    assert p[-1] > 0.5 and result.state.ada.p > 0.5 and p[-1] > p[0]


def test_held_out_scores_leave_d_and_the_random_streams_untouched(real64):
    for preset in ("fast64", "hinge_sn64", "improved64"):  # BatchNorm, spectral norm, dropout
        state = make_state(config.make_config(preset, batch_size=8), 100, "cpu")
        view = HeldOutView(((real64[:8].permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy(),
                           ((real64[8:].permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy(), "cpu", True)
        buffers = [b.clone() for b in state.D.buffers()]
        rng = torch.get_rng_state()
        scores = view.scores(state)
        assert set(scores) == {"d_holdout", "d_real_fixed"} and all(math.isfinite(v) for v in scores.values())
        assert all(torch.equal(a, b) for a, b in zip(buffers, state.D.buffers(), strict=True)), preset
        assert torch.equal(rng, torch.get_rng_state()), preset
        assert scores["d_holdout"] != scores["d_real_fixed"]  # two different sets of faces


def test_held_out_faces_never_reach_training(celeba_dir):
    cfg = config.make_config("small32", subset=200, holdout=40, batch_size=16)
    b = batches.training_batches(cfg)
    everything = batches.training_batches(cfg.replace(holdout=0))
    assert len(b.images) == 160 and len(b.held_out) == 40
    assert (b.held_out == everything.images[160:]).all() and (b.images == everything.images[:160]).all()
    with pytest.raises(batches.DataError, match="holdout=190 leaves 10 of 200 images"):
        batches.training_batches(cfg.replace(holdout=190))


class _MemorisingD(torch.nn.Module):
    """A D that has learnt its training faces by heart: logit +8 for a face it stores, -8 for any other."""

    def __init__(self, faces: torch.Tensor):
        super().__init__()
        self.register_buffer("faces", faces.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exact = "donot_use_mm_for_euclid_dist"  # the matmul shortcut is off by more than 0 for equal images
        seen = torch.cdist(x.flatten(1).float(), self.faces, compute_mode=exact).min(dim=1).values < 1e-2
        return torch.where(seen, 8.0, -8.0).view(-1, 1)


def test_held_out_view_parts_for_a_d_that_memorised_its_training_faces(celeba_dir):
    """The view must score the held-out faces and fixed *training* faces: for a D that knows only
    its training faces, D(x) is ~1 on those and ~0 on the held-out ones."""
    cfg = config.make_config("small32", subset=96, holdout=32, batch_size=16, channels_last=False)
    data = batches.training_batches(cfg)
    state = make_state(cfg, len(data), "cpu")
    state.D = _MemorisingD(batches.uint8_to_model_range(torch.from_numpy(np.array(data.images))))
    view = HeldOutView(data.held_out, data.images, state.device, channels_last=False)
    scores = view.scores(state)
    assert scores["d_real_fixed"] == pytest.approx(torch.sigmoid(torch.tensor(8.0)).item(), abs=1e-3)
    assert scores["d_holdout"] == pytest.approx(torch.sigmoid(torch.tensor(-8.0)).item(), abs=1e-3)


def _tiny(**overrides):
    base = dict(subset=96, batch_size=16, epochs=3, log_every=1, loss="lsgan", r1_gamma=1.0, r1_every=2,
                diffaug="color,translation", ada_target=0.6, ada_kimg=0.2, holdout=32, lr_schedule="linear",
                ema_decay=0.9, ema_rampup=0.5)
    return config.make_config("small32", **{**base, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_every_stabiliser_resumes_bit_for_bit(amp, celeba_dir, tmp_path, monkeypatch):
    if amp:
        monkeypatch.setattr(device_policy, "native_bf16", lambda device_type: True)
    full = train.train(_tiny(amp=amp), tmp_path / "full", progress=False)
    assert full.step == 12
    cfg = _tiny(amp=amp)  # stopped as Ctrl-C stops it: the schedule still plans for 12 steps
    part = train.train(cfg, tmp_path / "split", progress=False, batches=_StopAfter(batches.training_batches(cfg), 5))
    assert part.interrupted and part.step == 5
    resumed = train.train(_tiny(amp=amp), tmp_path / "split", resume=True, progress=False)
    for key in ("d_loss", "g_loss", "r1", "ada_p", "d_holdout", "d_real_fixed"):
        assert resumed.history[key] == full.history[key], key
    assert resumed.state.ada.p == full.state.ada.p > 0
    for p, q in zip(resumed.G.parameters(), full.G.parameters(), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(resumed.state.ema.parameters(), full.state.ema.parameters(), strict=True):
        assert torch.equal(p, q)  # the ramped EMA's decay follows its update count, which resumes


def test_ema_rampup_averages_over_a_growing_share_of_the_steps():
    """Decay 0.9 (horizon 10 steps), ramp-up 0.5: the horizon is half the updates so far, at least 1.
    Update t uses d_t = 1 - 1/max(1, t/2) up to d = 0.9, so updates 1-2 copy G, the 3rd keeps 1/3 of
    the average, the 4th 1/2 ... and from the 20th on 0.9.  The reference is written out by hand."""
    decays = [0.0, 0.0, 1 / 3, 1 / 2, 3 / 5, 2 / 3] + [1 - 2 / t for t in range(7, 20)] + [0.9] * 5
    net = torch.nn.Linear(3, 2)
    ema = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=ema_update(0.9, 0.5), use_buffers=True)
    expected = None
    for t, d in enumerate(decays, start=1):
        with torch.no_grad():
            net.weight.copy_(torch.full((2, 3), float(t * t)))  # a trajectory whose average shows each d
        ema.update_parameters(net)
        expected = net.weight.clone() if expected is None else d * expected + (1 - d) * net.weight
        assert torch.allclose(ema.module.weight, expected, rtol=1e-6), t
    assert ema_decay_at(10**6, 0.999, 0.05) == 0.999 and ema_decay_at(2000, 0.999, 0.0) == 0.999
    assert ema_decay_at(2000, 0.999, 0.05) == pytest.approx(0.99)  # horizon 100 steps, not 1,000


def test_a_time_budget_plans_the_run_length_from_the_measured_speed(monkeypatch):
    """Speed over steps HORIZON_WARMUP..HORIZON_STEPS of the call, times the budget left, capped by the plan."""
    now = [100.0]
    monkeypatch.setattr(clock.time, "perf_counter", lambda: now[0])
    c = clock.RunClock(config.make_config("small32", max_minutes=1.0), 0.0, torch.device("cpu"))
    assert c.plan_steps(step=10, steps_this_call=10, total_steps=10**6) is None  # still warming up
    assert c.plan_steps(step=20, steps_this_call=clock.HORIZON_WARMUP, total_steps=10**6) is None
    now[0] = 118.0  # 180 steps in 18 s: 10 steps/s, and 60 - 18 = 42 s of the budget left
    assert c.plan_steps(step=200, steps_this_call=clock.HORIZON_STEPS, total_steps=10**6) == 200 + 420
    assert c.plan_steps(step=200, steps_this_call=clock.HORIZON_STEPS, total_steps=300) == 300  # the plan caps it
    no_budget = clock.RunClock(config.make_config("small32"), 0.0, torch.device("cpu"))
    no_budget.plan_steps(20, clock.HORIZON_WARMUP, 10**6)
    assert no_budget.plan_steps(200, clock.HORIZON_STEPS, 10**6) is None


@pytest.mark.slow
def test_a_planned_horizon_ends_the_run_and_resume_keeps_it(celeba_dir, tmp_path, monkeypatch):
    """The run ends at the planned step with the rate decayed to 0; the plan is saved, kept by a resume
    under the same limits and made again under new ones.  (The plan itself is fixed here, so that a busy
    machine cannot end the budget first; the test above checks how it is computed.)"""
    monkeypatch.setattr(clock.RunClock, "plan_steps", lambda self, step, n, total: 10 if n == 6 else None)
    cfg = _tiny(epochs=100, max_minutes=5.0, r1_gamma=0.0, ada_target=0.0, diffaug="", holdout=0)
    run = train.train(cfg, tmp_path / "run", progress=False)
    state = run.state
    assert state.horizon_fixed and state.total_steps == 10
    assert state.step == state.total_steps  # the run ended where its schedule did...
    assert state.g_opt.param_groups[0]["lr"] == 0.0  # ...with the rate decayed to 0
    saved = checkpoint.read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["horizon"] == {"steps": 10, "for": [100, 0, 5.0]}
    again = train.train(cfg, tmp_path / "run", resume=True, progress=False)
    assert again.steps == 0 and again.state.total_steps == 10
    longer = train.train(cfg.replace(max_minutes=6.0), tmp_path / "run", resume=True, progress=False)
    assert longer.steps == 6 and longer.state.total_steps == 16  # planned again, 6 steps into the new call


@pytest.mark.slow
def test_a_fixed_horizon_resumes_bit_for_bit(celeba_dir, tmp_path, monkeypatch):
    """With the plan fixed at step 6 of the run, a run stopped after it and resumed equals the
    uninterrupted one: the schedule is a function of the step, not of the clock."""
    monkeypatch.setattr(clock.RunClock, "plan_steps", lambda self, step, n, total: 14 if n == 6 else None)
    cfg = _tiny(epochs=100, max_minutes=60.0)
    full = train.train(cfg, tmp_path / "full", progress=False)
    assert full.step == 14 and full.state.horizon_fixed
    shutil.copytree(tmp_path / "full", tmp_path / "copy")
    part = train.train(cfg.replace(), tmp_path / "split", progress=False,
                       batches=_StopAfter(batches.training_batches(cfg), 9))
    assert part.interrupted and part.step == 9 and part.state.total_steps == 14
    resumed = train.train(cfg, tmp_path / "split", resume=True, progress=False)
    assert resumed.step == 14 and resumed.history["d_loss"] == full.history["d_loss"]
    for p, q in zip(resumed.D.parameters(), full.D.parameters(), strict=True):
        assert torch.equal(p, q)


class _StopAfter:
    """Training batches that stop the run (as Ctrl-C does) once ``n`` batches were drawn."""

    def __init__(self, inner, n: int):
        self.inner, self.n, self.drawn = inner, n, 0
        self.images, self.held_out = inner.images, inner.held_out

    def __len__(self) -> int:
        return len(self.inner)

    def epoch(self, epoch: int, start: int = 0):
        for x in self.inner.epoch(epoch, start):
            if self.drawn == self.n:
                raise KeyboardInterrupt
            self.drawn += 1
            yield x


@pytest.mark.parametrize("bad, message", [
    (dict(loss="ls"), "choose one of bce, hinge, wgan-gp, lsgan"),
    (dict(r1_gamma=-1.0), "r1_gamma=-1.0: must be 0 or positive"),
    (dict(r1_every=0), "r1_every=0: must be a positive integer"),
    (dict(ada_target=0.6), "none is set; add e.g. --diffaug"),
    (dict(ada_target=1.5, diffaug="color"), "ada_target=1.5"),
    (dict(ada_kimg=0.0, ada_target=0.6, diffaug="color"), "ada_kimg=0.0"),
    (dict(holdout=-5), "holdout=-5: must be 0 or positive"),
    (dict(holdout=100, fast_data=False), "held-out faces come from the uint8 cache"),
    (dict(r1_gamma=1.0, compile=True), "double backward, which torch.compile does not support"),
    (dict(ema_rampup=1.5), "ema_rampup=1.5"),
    (dict(ema_rampup=0.05, ema_decay=0.0), "none is set; add e.g. --ema-decay 0.999"),
])
def test_bad_stabiliser_settings_name_the_field_and_the_fix(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        config.make_config("fast64", **bad)


def test_the_stabiliser_benchmark_measures_valid_configurations():
    """``python helpers.py bench --stabilisers`` times these; each must be a valid fast64 variant, the first plain."""
    plain = config.make_config("fast64", **bench.STABILISERS[0][1])
    assert plain.r1_gamma == 0 and plain.loss == "bce" and not plain.diffaug and plain.ada_target == 0
    for label, overrides in bench.STABILISERS[1:]:
        cfg = config.make_config("fast64", **overrides)
        assert cfg != plain, label


# --- feature matching (Salimans et al. 2016)

def test_feature_matching_loss_is_the_mean_squared_gap_of_the_batch_means():
    real = torch.randn(16, 10)
    assert losses.feature_matching_loss(real.clone(), real.mean(0)).item() == 0  # fakes that match: no loss
    shuffled = real[torch.randperm(16)]
    assert losses.feature_matching_loss(shuffled, real.mean(0)).item() == pytest.approx(0, abs=1e-12)
    fake = torch.zeros(8, 10)
    fake[:, 0] = 2.0  # means differ by 2 in one feature of 10, plus the reals' own means
    expected = ((fake.mean(0) - real.mean(0)) ** 2).mean()
    assert losses.feature_matching_loss(fake, real.mean(0)).item() == pytest.approx(expected.item(), rel=1e-6)


def _g_update(state, real: torch.Tensor, seed: int) -> torch.Tensor:
    """Minus the change one ``train_step`` makes to G under SGD at rate 1 (D at rate 0): G's gradient."""
    s = copy.deepcopy(state)
    before = torch.cat([p.detach().flatten().clone() for p in s.G.parameters()])
    torch.manual_seed(seed)
    step.train_step(s, real)
    return before - torch.cat([p.detach().flatten() for p in s.G.parameters()])


def _fm_state(weight: float):
    state = _state(amp=False, channels_last=False, r1_gamma=0.0, feature_matching=weight)
    state.d_opt = torch.optim.SGD(state.D.parameters(), lr=0.0)  # D holds still: G's step sees the D of the D step
    return state


def test_feature_matching_g_update_matches_the_reference_in_fp32(real64):
    """G's gradient = that of -log D(G(z)) + w * mean_j (E f_j(x) - E f_j(G(z)))^2, written out by hand."""
    state = _fm_state(2.0)
    engine = _g_update(state, real64, seed=5)
    s = copy.deepcopy(state)
    torch.manual_seed(5)
    fake = s.G(models.sample_latent(real64.size(0), s.config))
    real_features = s.D.net[:-1](real64).flatten(1).detach()
    fake_features = s.D.net[:-1](fake)
    out = s.D.net[-1](fake_features).flatten(1)
    loss = -F.logsigmoid(out).mean() + 2.0 * ((real_features.mean(0) - fake_features.flatten(1).mean(0)) ** 2).mean()
    reference = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(s.G.parameters()))])
    assert torch.allclose(engine, reference, atol=1e-6, rtol=1e-3)
    plain = _g_update(_fm_state(0.0), real64, seed=5)
    assert not torch.allclose(engine, plain, atol=1e-6, rtol=1e-3)  # the added term reaches G


def test_feature_matching_at_weight_0_changes_nothing_and_leaves_d_s_update_alone(real64, monkeypatch):
    states = {w: make_state(config.make_config("fast64", batch_size=16, feature_matching=w), 100, "cpu")
              for w in (0.0, 1.0)}
    asked = []
    forward = type(states[0.0].D).forward

    def recording(self, x, with_features=False):
        asked.append(with_features)
        return forward(self, x, with_features)

    monkeypatch.setattr(type(states[0.0].D), "forward", recording)
    for w, state in states.items():
        torch.manual_seed(7)
        metrics = step.train_step(state, real64)
        assert ("feature_matching" in metrics) == (w > 0)
        if w == 0:
            assert not any(asked)  # weight 0: D is never asked for features, the step is the one without them
            asked.clear()
    assert any(asked)
    for p, q in zip(states[0.0].D.parameters(), states[1.0].D.parameters(), strict=True):
        assert torch.equal(p, q)  # handing out the features does not change D's own update, bit for bit
    assert any(not torch.equal(p, q) for p, q in zip(states[0.0].G.parameters(), states[1.0].G.parameters(),
                                                      strict=True))


@pytest.mark.parametrize("bad, message", [
    (dict(feature_matching=-1.0), "feature_matching=-1.0: give the loss's weight"),
    (dict(progressive="0.25"), "give two comma-separated numbers"),
    (dict(progressive="half,0.2"), "give two comma-separated numbers"),
    (dict(progressive="1.5,10"), "give two comma-separated numbers"),
    (dict(progressive="0.6,0.6"), "add up to at most 1"),
    (dict(progressive="0.25,0.25", compile=True), "recompile"),
])
def test_bad_feature_matching_and_growing_settings_name_the_field_and_the_fix(bad, message):
    with pytest.raises(ValueError, match=message):
        config.make_config("fast64", **{"r1_gamma": 0.0, **bad})
    with pytest.raises(ValueError, match="built for the dcgan models"):
        config.make_config("small32", progressive="0.25,0.25")


# --- progressive growing (Karras et al. 2018)

def test_the_growth_schedule_follows_from_the_configuration_and_the_step():
    cfg = config.make_config("fast64", progressive="0.25,0.25")
    assert cfg.growth_steps(100) == (25, 50)  # fractions of the run's planned length
    assert config.make_config("fast64", progressive="10,20").growth_steps(100) == (10, 30)  # or whole steps
    state = make_state(cfg.replace(max_steps=100), 100, "cpu")
    alphas = []
    for s in (0, 24, 25, 30, 45, 49, 50, 99):
        state.step = s
        alphas.append(step.growth_alpha(state))
    assert alphas == pytest.approx([0, 0, 0, 0.2, 0.8, 0.96, 1, 1])
    assert config.make_config("fast64").growth_steps(100) == (0, 0)


def test_growing_trains_the_half_size_layers_first_then_fades_in_the_full_size_ones(real64):
    state = make_state(config.make_config("fast64", batch_size=16, progressive="3,2", max_steps=8), 100, "cpu")
    g_out, d_in = state.G.net[-2].weight.detach().clone(), state.D.net[0].weight.detach().clone()
    to_rgb = state.G.grow.conv.weight.detach().clone()
    for _ in range(3):
        step.train_step(state, real64)
        assert state.G.grow.alpha == state.D.grow.alpha == state.ema.module.grow.alpha == 0
    assert torch.equal(state.G.net[-2].weight, g_out) and torch.equal(state.D.net[0].weight, d_in)  # unused yet
    assert not torch.equal(state.G.grow.conv.weight, to_rgb)  # the half-size stage learns
    for alpha in (0.0, 0.5, 1.0):  # step 3 starts the fade at 0, step 4 is halfway, step 5 is at full size
        step.train_step(state, real64)
        assert state.G.grow.alpha == state.ema.module.grow.alpha == alpha
    assert not torch.equal(state.G.net[-2].weight, g_out) and not torch.equal(state.D.net[0].weight, d_in)


@pytest.mark.slow
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_growing_with_feature_matching_and_rotation_resumes_bit_for_bit(amp, celeba_dir, tmp_path, monkeypatch):
    """Stopped in the fade and resumed: the same alphas, losses and weights as a run that never stopped."""
    if amp:
        monkeypatch.setattr(device_policy, "native_bf16", lambda device_type: True)

    def cfg():
        return config.make_config("fast64", subset=96, batch_size=16, epochs=2, log_every=1, progressive="4,4",
                                  feature_matching=1.0, diffaug="rotation,lighting", ada_target=0.6, ada_kimg=0.2,
                                  amp=amp)

    full = train.train(cfg(), tmp_path / "full", progress=False)
    assert full.step == 12 and full.G.grow.alpha == 1.0
    stop = _StopAfter(batches.training_batches(cfg()), 6)
    part = train.train(cfg(), tmp_path / "split", progress=False, batches=stop)
    assert part.interrupted and part.step == 6 and part.G.grow.alpha == 0.25  # stopped in the fade
    resumed = train.train(cfg(), tmp_path / "split", resume=True, progress=False)
    for key in ("d_loss", "g_loss", "feature_matching", "ada_p"):
        assert resumed.history[key] == full.history[key], key
    for p, q in zip(resumed.G.parameters(), full.G.parameters(), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(resumed.state.ema.parameters(), full.state.ema.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.slow
def test_a_grown_generator_exports_loads_and_samples_as_a_fast64_generator(celeba_dir, tmp_path):
    from facegan import export

    cfg = config.make_config("fast64", subset=64, batch_size=16, max_steps=6, progressive="2,2", log_every=1)
    result = train.train(cfg, tmp_path / "run", progress=False)
    folder = export.export_model(tmp_path / "run" / "checkpoint.pt", tmp_path / "model", dtype="fp32")
    G, loaded = export.load_generator(folder)
    assert loaded.progressive == "2,2" and G.grow.alpha == 1.0
    z = result.state.fixed_z[:4]
    assert torch.allclose(G(z), result.sampler.eval()(z), atol=1e-5)
    _, plain = models.build_models(config.make_config("fast64"))  # the grown layout is fast64's
    plain.load_state_dict({k: v for k, v in G.state_dict().items() if not k.startswith("grow.")})
    assert torch.equal(plain.eval()(z), G(z))
    with pytest.raises(ValueError, match="cannot resume.*progressive"):
        train.train(cfg.replace(progressive=""), tmp_path / "run", resume=True, progress=False)


def test_growing_your_own_models_without_a_half_size_stage_is_refused_clearly(real64):
    cfg = config.make_config("fast64", batch_size=16, progressive="0.25,0.25")
    state = make_state(cfg, 100, "cpu", models=models.build_models(config.make_config("fast64")))
    with pytest.raises(ValueError, match="needs models with a half-size stage"):
        step.train_step(state, real64)
