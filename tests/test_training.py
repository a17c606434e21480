"""Training: steps on real faces for every preset, single-batch overfitting, checkpoints, resume, CLI."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facegan import batches, bench, checkpoint, cli, config, data, export, models, sampling, step, train
from facegan import device as device_policy
from facegan.state import TrainState, make_state
from facegan.updates import discriminator_step, generator_step, lr_factor, make_optimizers


@pytest.fixture(scope="module")
def real_batches(celeba_batch):
    """16 real faces at 64x64 and (antialiased down-sampling) 32x32."""
    return {64: celeba_batch, 32: F.interpolate(celeba_batch, size=32, mode="area")}


def _state(preset: str, **overrides) -> TrainState:
    cfg = config.make_config(preset, batch_size=16, **overrides)
    return make_state(cfg, steps_per_epoch=100, device="cpu")


@pytest.mark.parametrize("preset", list(config.PRESETS))
def test_three_steps_on_real_faces_change_parameters(preset, real_batches):
    state = _state(preset)
    real = real_batches[state.config.image_size]
    d0 = copy.deepcopy(state.D.state_dict())
    g0 = copy.deepcopy(state.G.state_dict())
    for _ in range(max(3, state.config.n_critic)):  # a WGAN critic takes n_critic steps per G step
        metrics = step.train_step(state, real)
        assert all(torch.isfinite(v) for v in metrics.values()), metrics
    for before, model in ((d0, state.D), (g0, state.G)):
        after = model.state_dict()
        assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
        assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(config.PRESETS))
def test_discriminator_overfits_a_single_batch(preset, real_batches):
    """D alone must learn to tell one fixed real batch from a fixed G's samples within 40 steps.

    G does not step here (n_critic is larger than the run): with G training too, D's loss after
    40 steps at small32's lr 0.002 depends on a chaotic two-player game, and came out above or
    below its start depending on the CPU's fp32 kernels (AVX2 against AVX-512) and on bf16.
    With G frozen, a working D step separates the two sets by a wide margin in every precision.
    """
    torch.manual_seed(0)
    state = _state(preset, n_critic=1000)
    g0 = [p.detach().clone() for p in state.G.parameters()]
    real = real_batches[state.config.image_size]
    history = [step.train_step(state, real) for _ in range(40)]
    assert all(torch.equal(a, b) for a, b in zip(g0, state.G.parameters(), strict=True))  # G's weights never moved
    first, last = history[0], history[-10:]
    gap = sum((m["d_real"] - m["d_fake"]).item() for m in last) / len(last)
    d_loss = sum(m["d_loss"].item() for m in last) / len(last)
    # BCE reports probabilities (gap up to 1, 0.9 with labels 0.9; measured >= 0.89 for every
    # preset in fp32 and bf16); hinge and Wasserstein critics report raw scores (measured > 3).
    assert gap > (0.7 if state.config.loss == "bce" else 2.0), gap
    # measured: each preset's loss falls by 0.8 or more (BCE from about 1.3-2.1 to under 0.45)
    assert d_loss < first["d_loss"].item() - 0.5, (d_loss, first["d_loss"].item())


def test_train_step_detaches_fakes_in_the_d_step(real_batches):
    state = _state("small32", n_critic=2)  # the first step is a D-only step
    step.train_step(state, real_batches[32])
    assert all(p.grad is None for p in state.G.parameters())


def test_critic_only_steps_report_no_g_loss(real_batches):
    state = _state("small32", n_critic=2)
    assert "g_loss" not in step.train_step(state, real_batches[32])  # D only
    assert torch.isfinite(step.train_step(state, real_batches[32])["g_loss"])  # D, then G


def test_logged_g_loss_is_the_mean_over_g_steps_only(celeba_dir, tmp_path):
    """With n_critic 3 and a log every step, G's loss is NaN until G first steps, then held between G steps.

    Averaging zeros of critic-only steps in would log a third of the real G loss.
    """
    history = train.train(_tiny_config(n_critic=3, max_steps=7), tmp_path, progress=False).state.history
    g = history["g_loss"]
    assert len(g) == len(history["step"]) == 7
    assert math.isnan(g[0]) and math.isnan(g[1])
    assert math.isfinite(g[2]) and g[2] == g[3] == g[4] != g[5] and g[5] == g[6]
    assert all(math.isfinite(v) for v in history["d_loss"])


def test_textbook_steps_match_the_training_step(real_batches):
    """train_step (plain BCE) computes the same D update as discriminator_step."""
    real = real_batches[32]
    a = _state("classic32", amp=False)
    b = copy.deepcopy(a)
    torch.manual_seed(1)
    step.train_step(a, real)
    torch.manual_seed(1)
    z = models.sample_latent(16, b.config)
    discriminator_step(b.D, b.G, b.d_opt, real, z, smooth=0.9)
    for p, q in zip(a.D.parameters(), b.D.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_lr_schedules_and_ema(real_batches):
    state = _state("small32", lr_schedule="cosine", ema_decay=0.9)
    state.total_steps = 4
    for _ in range(2):
        step.train_step(state, real_batches[32])
    assert state.g_opt.param_groups[0]["lr"] == pytest.approx(0.002 * 0.5)  # cosine at half-way
    ema_w = state.ema.module.fc.weight
    assert not torch.equal(ema_w, state.G.fc.weight)  # the average lags behind G
    assert lr_factor("linear", 3, 4) == pytest.approx(0.25)
    assert lr_factor("constant", 3, 4) == 1.0


def _tiny_config(**overrides):
    return config.make_config("small32", batch_size=16, subset=128, epochs=2, log_every=1, **overrides)


@pytest.mark.slow
def test_checkpoint_resume_continues_exactly(celeba_dir, tmp_path):
    full = train.train(_tiny_config(), tmp_path / "full", progress=False)
    assert full.step == 16 and full.epoch == 2
    part = train.train(_tiny_config(max_steps=5), tmp_path / "split", progress=False)
    assert part.step == 5 and len(part.history["step"]) == 5
    (tmp_path / "split" / "samples" / "step_0000005.png").unlink()  # the stop's grid: not in the whole run
    resumed = train.train(_tiny_config(), tmp_path / "split", resume=True, progress=False)
    assert resumed.step == 16 and resumed.history["step"] == list(range(1, 17))
    assert resumed.history["d_loss"] == pytest.approx(full.history["d_loss"], rel=1e-5)
    for p, q in zip(resumed.G.parameters(), full.G.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)
    assert [step for step, _ in resumed.samples] == [8, 16]  # one fixed-latent grid per epoch


@pytest.mark.slow
def test_checkpoint_rebuilds_models_from_its_configuration(celeba_dir, tmp_path):
    cfg = config.make_config("dcgan64", batch_size=8, subset=16, max_steps=1, ema_decay=0.99)
    state = train.train(cfg, tmp_path, progress=False).state
    G, loaded_cfg = export.load_generator(tmp_path / "checkpoint.pt")
    assert loaded_cfg == cfg
    z = state.fixed_z[:4]
    assert torch.allclose(G(z), sampling.generate(state.sampler, z), atol=1e-5)
    again = checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")
    assert again.step == 1 and again.config == cfg


@pytest.mark.slow
def test_resume_refuses_another_architecture(celeba_dir, tmp_path):
    train.train(_tiny_config(max_steps=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="cannot resume"):
        train.train(config.make_config("classic32", subset=128, batch_size=16), tmp_path, resume=True,
                      progress=False)


@pytest.mark.slow
def test_cli_dry_run_writes_a_run_and_resumes(celeba_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--dry-run", "--out", str(out), "--seed", "3"]) == 0
    assert (out / "checkpoint.pt").is_file() and (out / "losses.png").is_file()
    assert list((out / "samples").glob("*.png"))
    assert "img/s" in capsys.readouterr().out
    cli.main(["train", "--dry-run", "--out", str(out), "--resume", "--max-steps", "8"])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 8 and ckpt["config"]["seed"] == 3 and ckpt["history"]["step"][-1] == 8


def test_cli_rejects_bad_values_in_one_line(tmp_path, capsys):
    assert cli.main(["train", "--dry-run", "--out", str(tmp_path), "--d-optimizer", "rmsprop"]) == 2
    err = capsys.readouterr().err
    assert "d_optimizer='rmsprop': choose one of adam, sgd" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2
    with pytest.raises(ValueError, match="d_optimizer"):  # --debug: the full traceback
        cli.main(["train", "--debug", "--dry-run", "--out", str(tmp_path), "--d-optimizer", "rmsprop"])


@pytest.mark.parametrize("preset", ["small32", "dcgan64"])
def test_fast_step_equals_the_textbook_steps(preset, real_batches):
    """The project's step (channels_last, one G forward, D frozen in the G step) computes the same
    gradients as the plain textbook D step and G step.  Plain SGD applies them as they are, so the
    parameters must agree to float tolerance (Adam would amplify float noise in tiny gradients)."""
    fast = _state(preset, amp=False)  # bf16 has its own test below
    assert fast.config.channels_last
    plain = make_state(fast.config.replace(channels_last=False), 100, "cpu")
    for s in (fast, plain):
        _use_sgd(s)
    real = real_batches[fast.config.image_size]
    for _ in range(2):
        torch.manual_seed(5)
        step.train_step(fast, real.contiguous(memory_format=torch.channels_last))
        torch.manual_seed(5)
        z = models.sample_latent(real.size(0), plain.config)
        discriminator_step(plain.D, plain.G, plain.d_opt, real, z, smooth=plain.config.real_label[0])
        generator_step(plain.D, plain.G, plain.g_opt, z)
    for name, a, b in (("D", fast.D, plain.D), ("G", fast.G, plain.G)):
        for (key, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), f"{name}.{key} differs"


def _use_sgd(state: TrainState) -> None:
    """Plain SGD applies gradients as they are (train_step sets its learning rates from the config)."""
    state.d_opt = torch.optim.SGD(state.D.parameters(), lr=state.config.lr_d)
    state.g_opt = torch.optim.SGD(state.G.parameters(), lr=state.config.lr_g)


@pytest.mark.parametrize("preset", ["small32", "dcgan64", "hinge_sn64"])
def test_bf16_step_makes_nearly_the_fp32_update(preset, real_batches, monkeypatch):
    """bf16 autocast keeps weights, optimiser and losses in fp32 and rounds only the conv and
    matmul operands to 8 mantissa bits: the update must point the same way as fp32's, at the same size."""
    state = _state(preset)
    real = real_batches[state.config.image_size]
    assert device_policy.training_precision(state.config.replace(amp=False), state.device) == "fp32"
    monkeypatch.setattr(device_policy, "native_bf16", lambda device_type: True)  # bf16 even where emulated
    assert device_policy.training_precision(state.config, state.device) == "bf16"
    a, b = (torch.cat(list(bench.sgd_update(state, real, seed=5, amp=amp).values())) for amp in (False, True))
    assert F.cosine_similarity(a.double(), b.double(), dim=0) > 0.99
    assert abs(b.norm() / a.norm() - 1) < 0.02
    # ...and that is a real difference, not the same fp32 computation twice
    assert not torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["small32", "dcgan64", "hinge_sn64"])
def test_bf16_rounding_is_small_beside_minibatch_noise(preset, real_batches, monkeypatch):
    """Every SGD step already follows a noisy estimate of the gradient: another batch of faces
    and latents would move the weights differently.  What bf16 adds to an update must be a small
    fraction of that difference, or it would change training beyond what reseeding does."""
    monkeypatch.setattr(device_policy, "native_bf16", lambda device_type: True)  # bf16 even where emulated
    state = _state(preset)
    real = real_batches[state.config.image_size]
    before = copy.deepcopy(state.G.state_dict())
    ratios = bench.bf16_rounding_vs_batch_noise(state, real, real.flip(3))  # mirrored faces: another batch
    assert set(ratios) == {"D", "G"} and all(0 < r < 0.2 for r in ratios.values()), ratios
    assert all(torch.equal(before[k], v) for k, v in state.G.state_dict().items())  # state untouched
    monkeypatch.setattr(device_policy, "native_bf16", lambda device_type: False)
    with pytest.raises(RuntimeError, match="not native"):
        bench.bf16_rounding_vs_batch_noise(state, real, real.flip(3))


def test_fused_adam_makes_the_same_update_as_plain_adam():
    cfg = config.make_config("dcgan64")
    D1, G1 = models.build_models(cfg)
    D2, G2 = copy.deepcopy(D1), copy.deepcopy(G1)
    fused = make_optimizers(D1, G1, cfg)
    plain = make_optimizers(D2, G2, cfg.replace(fused_adam=False))
    assert fused[0].defaults.get("fused") and not plain[0].defaults.get("fused")
    torch.manual_seed(0)
    for _ in range(3):
        pairs = zip([*D1.parameters(), *G1.parameters()], [*D2.parameters(), *G2.parameters()], strict=True)
        for p, q in pairs:
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        for opt in fused + plain:
            opt.step()
    for p, q in zip(G1.parameters(), G2.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


@pytest.mark.parametrize("preset", list(config.PRESETS))
def test_bf16_autocast_path_runs_for_every_preset(preset, real_batches, monkeypatch):
    """The CUDA path trains under bf16 autocast; exercise the same code on the CPU's bf16 autocast."""
    monkeypatch.setattr(device_policy, "native_bf16", lambda device_type: True)  # bf16 even where emulated
    state = _state(preset)
    assert device_policy.training_precision(state.config, state.device) == "bf16"
    real = real_batches[state.config.image_size]
    before = [p.detach().clone() for p in state.G.parameters()]
    for _ in range(state.config.n_critic):
        metrics = step.train_step(state, real)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in metrics.values())
    assert all(p.dtype == torch.float32 for p in state.G.parameters())  # master weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, state.G.parameters(), strict=True))


def test_cached_batches_in_channels_last_hold_the_same_values(celeba_dir, tmp_path):
    files = data.list_images(celeba_dir)[:64]
    cache = batches.build_image_cache(files, 32, cache_dir=tmp_path)
    plain = next(batches.CachedBatches(cache, 32, seed=1).epoch(0))
    nhwc = next(batches.CachedBatches(cache, 32, seed=1, channels_last=True).epoch(0))
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain, nhwc)
    # the device-resident copy (what a GPU uses) gives the same batches as the memory map
    resident = batches.CachedBatches(cache, 32, seed=1, preload=True)
    assert resident.resident is not None and torch.equal(next(resident.epoch(0)), plain)


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["classic", "fast", "fast-fp32", "fast-bf16", "fast+compile"])
def test_benchmark_worker_measures_every_pipeline(pipeline, celeba_dir):
    import queue
    import shutil

    if pipeline == "fast+compile" and not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("torch.compile on a CPU needs a C++ compiler")

    out = queue.Queue()
    bench._bench_worker("small32", pipeline, 2, 1, 192, "cpu", out)
    result = out.get_nowait()
    assert result["img_s"] > 0 and result["peak_mb"] > 0
    native = device_policy.native_bf16("cpu")
    bf16 = "bf16" if native else "fp32"  # the default, like fast-bf16, is bf16 where the CPU has it
    expected = {"classic": "fp32", "fast-fp32": "fp32", "fast": bf16, "fast-bf16": bf16, "fast+compile": bf16}
    assert result["precision"] == expected[pipeline]
    if pipeline == "fast+compile":  # the warm-up step compiles: it takes far longer than a step
        assert result["warmup_s"] > 20 * 64 / result["img_s"]


def test_training_precision_follows_the_config_and_the_hardware(monkeypatch):
    cfg, cpu, cuda = config.make_config("dcgan64"), torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(device_policy, "native_bf16", lambda device_type: True)
    assert device_policy.training_precision(cfg, cuda) == "bf16"  # bf16 by default where native
    assert device_policy.training_precision(cfg, cpu) == "bf16"
    assert device_policy.training_precision(cfg.replace(amp=False), cuda) == "fp32"  # exact fp32 on request
    assert device_policy.training_precision(cfg.replace(amp=False), cpu) == "fp32"
    monkeypatch.setattr(device_policy, "native_bf16", lambda device_type: False)  # e.g. an AVX2-only CPU
    assert device_policy.training_precision(cfg, cpu) == "fp32"
    # FACEGAN_BF16=0 makes a bf16 machine train as an AVX2-only one does (CI checks fp32 that way)
    monkeypatch.undo()
    device_policy.native_bf16.cache_clear()
    monkeypatch.setenv("FACEGAN_BF16", "0")
    assert not device_policy.native_bf16("cpu") and device_policy.training_precision(cfg, cpu) == "fp32"
    device_policy.native_bf16.cache_clear()
    monkeypatch.delenv("FACEGAN_BF16")
    # checkpoints written while CPUs had a separate switch still load
    assert config.Config.from_dict({**cfg.to_dict(), "cpu_bf16": False}) == cfg


def test_step_flops_match_a_hand_count_for_the_generator_stem():
    # small32 per image: forward + backward ~ 3x forward; G's linear stem alone is 2 * 100 * 2048 FLOPs.
    flops = bench.step_flops(config.make_config("small32"), 16) / 16
    assert flops > 3 * 2 * 100 * 2048
    assert bench.step_flops(config.make_config("dcgan64"), 16) / 16 > 10 * flops  # 64px nets cost far more


@pytest.mark.slow
def test_peak_gflops_is_a_plausible_rate():
    # a 2-core laptop manages tens of GFLOP/s, an H100 hundreds of thousands: a wrong FLOP
    # formula or unit would land far outside
    assert 1 < bench.peak_gflops(torch.device("cpu"), repeats=1) < 1e6


@pytest.mark.slow
def test_the_ema_generator_uses_batchnorm_statistics_of_its_own_weights(real_batches):
    """Averaging BatchNorm's running statistics with the weights gives statistics of no network
    (dark, washed-out samples early in a run): the sampler re-estimates them for the EMA weights."""
    state = _state("dcgan64", ema_decay=0.9, amp=False)
    for _ in range(3):
        step.train_step(state, real_batches[64])
    averaged = {k: v.clone() for k, v in state.ema.module.state_dict().items() if "running_var" in k}
    rng = torch.get_rng_state()
    G = state.sampler
    assert torch.equal(rng, torch.get_rng_state())  # the training's random stream is untouched
    norms = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda m, x: inputs.append(x[0].clone())) for m in norms]
    with torch.no_grad():
        G.eval()(models.sample_latent(512, state.config))
    for h in hooks:
        h.remove()
    for bn, x in zip(norms, inputs, strict=True):
        assert torch.allclose(bn.running_var, x.var(dim=(0, 2, 3)), rtol=0.2)
    refreshed = {k: v for k, v in G.state_dict().items() if "running_var" in k}
    assert any(not torch.allclose(averaged[k], refreshed[k], rtol=0.2) for k in averaged)


@pytest.mark.slow
def test_train_returns_a_result_apart_from_the_state(celeba_dir, tmp_path):
    result = train.train(_tiny_config(max_steps=3), tmp_path, progress=False)
    assert isinstance(result, train.TrainResult) and isinstance(result.state, TrainState)
    assert result.steps == 3 and result.images_per_second > 0 and not result.interrupted
    assert not hasattr(result.state, "images_per_second") and not hasattr(result.state, "samples")
    again = train.train(_tiny_config(max_steps=3), tmp_path, resume=True, progress=False)
    assert again.steps == 0 and again.step == 3  # nothing left to do


ROOT = Path(__file__).resolve().parents[1]
ALIGNED_SAMPLE = ROOT.parent / "shared" / "data" / "img-align-celeba-sample.zip"


@pytest.mark.slow
@pytest.mark.skipif(not ALIGNED_SAMPLE.is_file(), reason="needs ../shared/data/img-align-celeba-sample.zip")
def test_a_128px_dcgan_trains_on_aligned_celeba_cropped(tmp_path, monkeypatch, capsys):
    """The command the README gives for bigger images, on the 3,000 aligned originals (178x218)."""
    monkeypatch.setenv("FACEGAN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run128"
    code = cli.main(["train", "--preset", "dcgan64", "--image-size", "128", "--data", str(ALIGNED_SAMPLE),
                     "--crop", "160", "--subset", "32", "--batch-size", "8", "--max-steps", "3",
                     "--g-conv-dim", "8", "--d-conv-dim", "8", "--log-every", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    G, cfg = export.load_generator(out / "checkpoint.pt")
    assert cfg.image_size == 128 and cfg.crop == 160
    assert G(models.sample_latent(2, cfg)).shape == (2, 3, 128, 128)
    grids = sorted((out / "samples").glob("step_*.png"))
    assert grids and grids[-1].name == "step_0000003.png"


def test_every_run_of_the_64x64_improvement_study_is_a_valid_train_command():
    """bench/search64.py's IMPROVE runs pass their flags to ``helpers.py train``: each must parse and validate."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("search64", Path(__file__).parents[1] / "bench" / "search64.py")
    search64 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(search64)
    parser = cli.build_parser()
    configs = {}
    for name, (_, flags) in search64.IMPROVE.items():
        args = parser.parse_args(["train", *flags, *search64.COMMON, "--max-steps", "10"])
        configs[name] = cli.config_from_args(args)
    assert configs["rot_light"].diffaug == "rotation,lighting"
    assert configs["feat_match"].feature_matching == 1.0
    assert configs["progressive"].growth_steps(10_000) == (2500, 5000)
    assert all(c.preset == "fast64" for c in configs.values())
