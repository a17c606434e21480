"""Multi-process training: torchrun, two gloo processes on the CPU, real faces.

This file is also the worker torchrun runs (``python -m torch.distributed.run --standalone
--nproc_per_node 2 tests/test_distributed.py MODE OUT``): the ``checks`` mode trains every
preset a few steps with DDP and writes what it measured to ``OUT/results.json``, which the
tests below read; ``die`` kills rank 1 mid-run.  The command-line tests run ``helpers.py``
under torchrun, as users do.
"""
from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facegan import batches, checkpoint, config, distributed, losses, runlock, runlog, step, train  # noqa: E402
from facegan import device as device_policy  # noqa: E402
from facegan.state import bare, make_state  # noqa: E402

pytestmark = [pytest.mark.slow,  # every test here starts processes
              pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                 reason="needs torch.distributed with the gloo backend")]
#: Small widths keep each preset's step to tens of milliseconds on one CPU thread; the
#: architectures (layers, norms, losses) are the presets' own.
TINY = dict(g_conv_dim=16, d_conv_dim=16, batch_size=4, subset=64, amp=False, log_every=1, device="cpu")


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- the worker (runs under torchrun)

def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten() for t in tensors])


def _spread(vec: torch.Tensor) -> float:
    """Largest difference between this rank's vector and rank 0's (a collective)."""
    copies = [torch.empty_like(vec) for _ in range(dist.get_world_size())]
    dist.all_gather(copies, vec)
    return max((c - copies[0]).abs().max().item() for c in copies)


def _cached(cfg: config.Config, batch_size: int, rank: int = 0, world: int = 1) -> batches.CachedBatches:
    from facegan import data

    files = data.list_images(data.ensure_celeba())[:cfg.subset]
    with distributed.local_main_first() if world > 1 else contextlib.nullcontext():  # build once, then read
        images = batches.build_image_cache(files, cfg.image_size, num_workers=0)
    return batches.CachedBatches(images, batch_size, "cpu", cfg.seed, rank=rank, world_size=world)


def _ddp_state(cfg: config.Config):
    data_ = _cached(cfg, cfg.batch_size, distributed.rank(), distributed.world_size())
    state = make_state(cfg, len(data_), "cpu")
    distributed.seed_ranks(cfg.seed)
    state.D, state.G = distributed.wrap_models(state.D, state.G, state.device)
    return state, data_


def _preset_run(preset: str, **overrides) -> dict:
    """A few DDP steps; after each, how far every rank's weights are from rank 0's, and how
    many gradient buckets D and G all-reduced in that step."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    cfg = config.make_config(preset, **{**TINY, "ema_decay": 0.9, **overrides})
    state, data_ = _ddp_state(cfg)
    reduced = {"D": 0, "G": 0}

    def counting(name):
        def hook(group, bucket):
            reduced[name] += 1
            return default_hooks.allreduce_hook(group, bucket)
        return hook

    state.D.register_comm_hook(None, counting("D"))
    state.G.register_comm_hook(None, counting("G"))
    before = _flat(state.G.parameters())
    steps = []
    for real in list(data_.epoch(0))[:max(3, cfg.n_critic + 1)]:
        g_turn = (state.step + 1) % cfg.n_critic == 0
        counts = dict(reduced)
        metrics = step.train_step(state, real)
        bare_d = bare(state.D)
        steps.append({
            "g_turn": g_turn, "finite": all(torch.isfinite(v).item() for v in metrics.values()),
            "d_reduced": reduced["D"] - counts["D"], "g_reduced": reduced["G"] - counts["G"],
            "D": _spread(_flat(state.D.parameters())), "G": _spread(_flat(state.G.parameters())),
            "ema": _spread(_flat(state.ema.module.parameters())),
            # spectral norm's u and v, BatchNorm's step counters: all must agree; BatchNorm's
            # running statistics are each rank's own (not broadcast) and are left out.
            "D_buffers": _spread(_flat([b for k, b in bare_d.named_buffers() if "running_" not in k] or
                                       [torch.zeros(1)])),
        })
    moved = (_flat(state.G.parameters()) - before).abs().max().item()
    return {"steps": steps, "g_moved": moved}


class PerRankBatchNorm(torch.nn.Module):
    """G on a batch of 2B as two batches of B: what two ranks' BatchNorm layers compute."""

    def __init__(self, G: torch.nn.Module, chunks: int):
        super().__init__()
        self.G, self.chunks = G, chunks

    def forward(self, z):
        return torch.cat([self.G(c) for c in z.chunk(self.chunks)])


def _equivalence(preset: str) -> dict:
    """One DDP step on 2 ranks x B against one process on 2B, plain SGD, fp32: the relative
    difference of the updates of D and G (rank 0 computes the single-process reference)."""
    cfg = config.make_config(preset, **{**TINY, "n_critic": 1})  # n_critic 1: a D and a G update
    rank, world, B = distributed.rank(), distributed.world_size(), cfg.batch_size
    gen = torch.Generator().manual_seed(5)
    z_all = step.sample_latent(world * B, cfg, generator=gen)
    eps_all = torch.rand(world * B, 1, 1, 1, generator=gen)

    def run(state, real, r):
        n = real.size(0)
        state.d_opt = torch.optim.SGD(state.D.parameters(), lr=0.05)
        state.g_opt = torch.optim.SGD(state.G.parameters(), lr=0.05)
        latents, penalty = step.sample_latent, step.gradient_penalty
        step.sample_latent = lambda n_, cfg_, device: z_all[r * n:(r + 1) * n]
        step.gradient_penalty = lambda D, x, f: losses.gradient_penalty(D, x, f, eps=eps_all[r * n:(r + 1) * n])
        d0, g0 = _flat(state.D.parameters()), _flat(state.G.parameters())
        try:
            step.train_step(state, real)
        finally:
            step.sample_latent, step.gradient_penalty = latents, penalty
        return _flat(state.D.parameters()) - d0, _flat(state.G.parameters()) - g0

    state, data_ = _ddp_state(cfg)
    real = next(data_.epoch(0))
    shards = [torch.empty_like(real) for _ in range(world)]
    dist.all_gather(shards, real)
    dd, dg = run(state, real, rank)
    result = {}
    if rank == 0:
        whole = next(_cached(cfg, world * B).epoch(0))
        result["global_batch_is_the_shards"] = torch.equal(whole, torch.cat(shards))
        for name, chunks in (("per_rank_bn", world), ("whole_batch_bn", 1)):
            ref = make_state(cfg, 10, "cpu")
            ref.G = PerRankBatchNorm(ref.G, chunks)
            rd, rg = run(ref, whole, 0)
            result[name] = {"D": ((dd - rd).abs().max() / rd.abs().max()).item(),
                            "G": ((dg - rg).abs().max() / rg.abs().max()).item()}
    dist.barrier()
    return result


def _resume_runs(out: Path) -> dict:
    """train() for 6 steps at once, and 3 + 3 with a resume in between: the same weights?"""
    cfg = config.make_config("small32", subset=64, batch_size=4, log_every=1, device="cpu", ema_decay=0.9)
    whole = train.train(cfg.replace(max_steps=6), out / "whole", progress=False)
    train.train(cfg.replace(max_steps=3), out / "split", progress=False)
    split = train.train(cfg.replace(max_steps=6), out / "split", resume=True, progress=False)
    return {"same_G": _flat(whole.G.parameters()).equal(_flat(split.G.parameters())),
            "same_ema": _flat(whole.sampler.parameters()).equal(_flat(split.sampler.parameters())),
            "same_losses": whole.history["d_loss"] == split.history["d_loss"], "step": split.step,
            "spread": _spread(_flat(split.G.parameters())), "samples": len(split.samples)}


def worker(mode: str, out: Path) -> None:
    faulthandler.dump_traceback_later(200, exit=True)  # a hang shows where it is, then ends the test
    distributed.setup("cpu")
    if mode == "die":  # rank 1 dies at step 3; rank 0 must not wait for it forever
        real_step = step.train_step

        def dying(state, real):
            if distributed.rank() == 1 and state.step == 3:
                os._exit(3)
            return real_step(state, real)

        train.train_step = dying
        train.train(config.make_config("small32", **{**TINY, "max_steps": 50}), out, progress=False)
        return
    results = {p: _preset_run(p) for p in config.PRESETS}
    results["dcgan64 n_critic=2"] = _preset_run("dcgan64", n_critic=2)
    precision, device_policy.training_precision = device_policy.training_precision, lambda cfg, device: "bf16"
    results["dcgan64 bf16"] = _preset_run("dcgan64")  # the autocast path, even where bf16 is emulated
    device_policy.training_precision = precision
    results["equivalence"] = {p: _equivalence(p) for p in ("wgangp64", "hinge_sn64")}
    results["resume"] = _resume_runs(out)
    if distributed.is_main():
        (out / "results.json").write_text(json.dumps(results, indent=1))
    distributed.teardown()


# ---------------------------------------------------------------- the tests (run by pytest)

@pytest.fixture(scope="module")
def ddp_results(celeba_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp")
    run = torchrun(__file__, "checks", str(out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("preset", [*config.PRESETS, "dcgan64 n_critic=2", "dcgan64 bf16"])
def test_every_preset_trains_with_identical_weights_on_both_ranks(ddp_results, preset):
    run = ddp_results[preset]
    assert run["g_moved"] > 0
    for s in run["steps"]:
        assert s["finite"], s
        # bit for bit: every rank applies the same all-reduced gradient to the same weights
        assert s["D"] == s["G"] == s["ema"] == s["D_buffers"] == 0.0, s


@pytest.mark.parametrize("preset", [*config.PRESETS, "dcgan64 n_critic=2"])
def test_frozen_d_reduces_nothing_in_the_g_step(ddp_results, preset):
    """D's gradients are all-reduced in the D step only, G's in G turns only: freezing D
    (requires_grad False) in the G step needs no find_unused_parameters, and the G forward
    under no_grad on critic-only steps starts no reduction."""
    steps = ddp_results[preset]["steps"]
    if preset in ("wgangp64", "dcgan64 n_critic=2"):
        assert any(not s["g_turn"] for s in steps)
    d_buckets = {s["d_reduced"] for s in steps}
    assert len(d_buckets) == 1 and d_buckets.pop() > 0, steps  # the same with and without a G step
    for s in steps:
        assert (s["g_reduced"] > 0) == s["g_turn"], s


@pytest.mark.parametrize("preset", ["wgangp64", "hinge_sn64"])
def test_two_ranks_of_b_make_the_update_of_one_process_with_2b(ddp_results, preset):
    """D without BatchNorm (layer norm + gradient penalty; spectral norm): DDP's averaged
    gradient is the gradient of the global batch.  G has BatchNorm, whose statistics come
    from each rank's own batch: the reference computes G per half-batch, and the same step
    with statistics over the whole 2B differs well beyond rounding."""
    res = ddp_results["equivalence"][preset]
    assert res["global_batch_is_the_shards"]
    assert max(res["per_rank_bn"].values()) < 1e-4, res
    assert res["whole_batch_bn"]["G"] > 1e-3, res


def test_resume_continues_exactly_with_the_same_world_size(ddp_results):
    res = ddp_results["resume"]
    assert res["step"] == 6 and res["spread"] == 0.0
    assert res["same_G"] and res["same_ema"] and res["same_losses"], res


def test_cached_batches_shard_each_global_batch():
    images = torch.randint(0, 256, (50, 8, 8, 3), dtype=torch.uint8).numpy()
    whole = batches.CachedBatches(images, 6, seed=3)
    shards = [batches.CachedBatches(images, 3, seed=3, rank=r, world_size=2) for r in range(2)]
    assert len(whole) == len(shards[0]) == 8
    for b, (x0, x1, xw) in enumerate(zip(*(s.epoch(1) for s in shards), whole.epoch(1), strict=True)):
        assert torch.equal(torch.cat([x0, x1]), xw), b
    assert torch.equal(next(shards[1].epoch(1, start=2)), list(shards[1].epoch(1))[2])  # resumable mid-epoch


def test_cli_under_torchrun_writes_one_run_and_resumes(celeba_dir, tmp_path):
    flags = ["helpers.py", "train", "--preset", "dcgan64", "--out", str(tmp_path), "--subset", "32",
             "--batch-size", "4", "--g-conv-dim", "16", "--d-conv-dim", "16", "--log-every", "1", "--device", "cpu"]
    first = torchrun(*flags, "--max-steps", "2")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert first.stdout.count("training dcgan64") == 1 and "x 2 processes (global batch 8)" in first.stdout
    assert first.stdout.count("done: step 2") == 1  # rank 0 alone prints
    names = sorted(p.name for p in tmp_path.iterdir())
    events = [n for n in names if n.startswith("events.out.tfevents.") and n != runlog.HPARAMS_FILE]
    assert len(events) == 1 and runlog.HPARAMS_FILE in names  # TensorBoard: rank 0 alone writes
    assert [n for n in names if n not in events] == ["checkpoint.pt", runlog.HPARAMS_FILE, "losses.png", "run.json",
                                                     "samples", "train.lock"]
    assert json.loads((tmp_path / "run.json").read_text())["sessions"][0]["world_size"] == 2
    ckpt = checkpoint.read_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng_per_rank"]) == 2
    again = torchrun(*flags, "--max-steps", "4", "--resume")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert again.stdout.count("resumed from") == 1 and "done: step 4" in again.stdout
    # One process cannot continue a two-process run: refused, saying why.
    single = subprocess.run([sys.executable, "helpers.py", *flags[1:], "--max-steps", "6", "--resume"], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert single.returncode == 2 and "written by 2 process(es) and this run has 1" in single.stderr, single.stderr


def test_sigterm_stops_every_rank_at_the_same_step_with_one_checkpoint(celeba_dir, tmp_path):
    """torchrun forwards SIGTERM to each worker; the ranks agree on it at the next logged step,
    save there together (rank 0 writes) and stop."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "helpers.py", "train", "--preset", "small32", "--out", str(tmp_path), "--subset", "64",
                            "--batch-size", "4", "--epochs", "0", "--max-steps", "100000", "--log-every", "1",
                            "--checkpoint-minutes", "0.0002", "--device", "cpu"],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.time() + 120
    while time.time() < end:  # wait for a checkpoint a few steps in
        try:
            if checkpoint.read_checkpoint(tmp_path / "checkpoint.pt")["step"] >= 3:
                break
        except (FileNotFoundError, checkpoint.CheckpointError):
            pass
        time.sleep(0.1)
    run.send_signal(signal.SIGTERM)
    log = run.communicate(timeout=60)[0]
    stopped = [line for line in log.splitlines() if line.startswith("stopped at step")]
    assert len(stopped) == 1, log[-3000:]  # rank 0 alone reports
    n = int(stopped[0].split()[3].rstrip(";"))
    assert f"checkpoint at step {n} in" in stopped[0] and "torchrun (the same 2 processes)" in stopped[0]
    ckpt = checkpoint.read_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == n and ckpt["world_size"] == 2


def test_the_ranks_of_one_run_share_one_lock_and_a_second_writer_is_refused(celeba_dir, tmp_path):
    """Rank 0 takes the run folder's lock and the other ranks train under it (were each to take it, they
    would refuse one another); a second train on the folder names rank 0's process; once torchrun has
    stopped, a resume takes the lock again."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    flags = ["helpers.py", "train", "--preset", "small32", "--out", str(tmp_path), "--subset", "64", "--batch-size",
             "4", "--epochs", "0", "--log-every", "1", "--checkpoint-minutes", "0.0002", "--device", "cpu"]
    run = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            *flags, "--max-steps", "100000"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        end, facts = time.time() + 120, None
        while time.time() < end and not (facts and facts.get("step", 0) >= 3):
            facts = runlock.probe(tmp_path)
            time.sleep(0.1)
        assert facts and facts.get("step", 0) >= 3, facts
        holder = facts["pid"]
        status = Path(f"/proc/{holder}/status")
        if status.is_file():  # Linux: the holder is one of torchrun's workers, not torchrun itself
            assert f"PPid:\t{run.pid}\n" in status.read_text()
        second = subprocess.run([sys.executable, *flags, "--max-steps", "6", "--resume"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.startswith(f"error: {tmp_path} is in use: process {holder} "), second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        run.send_signal(signal.SIGTERM)  # torchrun forwards it: the ranks save and stop together
        log = run.communicate(timeout=60)[0]
    assert "is in use" not in log and log.count("stopped at step") == 1, log[-3000:]  # rank 1 took no lock
    assert runlock.probe(tmp_path) is None
    step = checkpoint.read_checkpoint(tmp_path / "checkpoint.pt")["step"]
    again = torchrun(*flags, "--max-steps", str(step + 2), "--resume")
    assert again.returncode == 0 and f"done: step {step + 2}" in again.stdout, again.stdout[-2000:] + again.stderr


def test_a_rank_that_dies_stops_the_others_with_an_error(celeba_dir, tmp_path):
    t0 = time.perf_counter()
    run = torchrun(__file__, "die", str(tmp_path), timeout=120)
    elapsed = time.perf_counter() - t0
    assert run.returncode != 0
    assert "exitcode  : 3" in run.stderr and "rank      : 1" in run.stderr, run.stderr[-3000:]
    assert elapsed < 60, elapsed  # torchrun notices the dead worker and stops the rest; nothing hangs
    print(f"\n{elapsed:.1f}s; torchrun's report:\n" + run.stderr[run.stderr.find("Root Cause"):][:600])


if __name__ == "__main__":  # the worker, under torchrun
    worker(sys.argv[1], Path(sys.argv[2]))
