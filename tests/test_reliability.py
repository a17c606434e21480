"""Nothing lost, nothing run by accident: kills, signals, corrupt files, NaNs, unsafe pickles, stale data."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import jpeg_bytes

from facegan import checkpoint, cli, config, data, export, models, train

ROOT = Path(__file__).resolve().parents[1]
#: small32 on 256 faces, 16 steps an epoch, a checkpoint after every logged step, exact fp32, one thread.
RUN_FLAGS = ["--amp", "false", "--subset", "256", "--batch-size", "16", "--log-every", "1",
             "--checkpoint-minutes", "0.0002", "--seed", "1"]


def _cli(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "facegan", "train", "--out", str(out), *RUN_FLAGS, *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(out: Path, at_least: int, timeout: float = 120) -> int:
    """Poll the run's checkpoint until it holds ``at_least`` steps; return the step."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            step = checkpoint.read_checkpoint(out / "checkpoint.pt")["step"]
            if step >= at_least:
                return step
        except (FileNotFoundError, checkpoint.CheckpointError):
            pass  # not written yet, or caught between the two renames
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint with {at_least} steps in {out}")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = checkpoint.read_checkpoint(path)
    out = {f"D.{k}": v for k, v in ckpt["D"].items()} | {f"G.{k}": v for k, v in ckpt["G"].items()}
    for net in ("d_opt", "g_opt"):
        for i, s in ckpt[net]["state"].items():
            out |= {f"{net}.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)}
    return out


@pytest.mark.slow
def test_two_sigkills_and_resumes_end_with_the_same_weights_bit_for_bit(celeba_dir, tmp_path):
    steps = ["--max-steps", "40"]
    full = _cli(tmp_path / "full", *steps)
    assert full.wait(timeout=300) == 0, full.stdout.read()
    killed = tmp_path / "killed"
    run = _cli(killed, *steps)
    for kill_at in (6, 22):  # once in the first epoch, once in the second: both mid-epoch
        _wait_for_step(killed, kill_at)
        run.kill()  # SIGKILL: no handler runs, whatever was on disk is all there is
        run.wait()
        # A kill can land between the save's two renames, leaving only checkpoint.prev.pt: what a
        # resume reads is the newest readable checkpoint, so that is what must be mid-run.
        assert checkpoint.newest_checkpoint(killed)[0]["step"] < 40
        run = _cli(killed, "--resume", *steps)
    output = run.communicate(timeout=300)[0]
    assert run.returncode == 0 and "resumed from" in output, output
    a, b = _weights(tmp_path / "full" / "checkpoint.pt"), _weights(killed / "checkpoint.pt")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(celeba_dir, tmp_path):
    run = _cli(tmp_path, "--max-steps", "100000", "--checkpoint-minutes", "0")  # epoch-end checkpoints only
    chunks: list[str] = []  # the run's output, read as it comes
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: run.stdout.read(1), "")), daemon=True)
    reader.start()
    _wait_for_step(tmp_path, 16)  # the first epoch's checkpoint
    # Signal only once the progress bar reports a step of the second epoch: a fixed sleep can end
    # inside the epoch-end work (grid, first TensorBoard write) on a busy machine.
    end = time.time() + 120
    while max(map(int, re.findall(r"step=(\d+)", "".join(chunks))), default=0) <= 16:
        assert time.time() < end and run.poll() is None, "".join(chunks)
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    run.wait(timeout=120)
    reader.join(timeout=30)
    output = "".join(chunks)
    assert run.returncode == 130, output
    assert "Resume with: python helpers.py train --out" in output
    saved = checkpoint.read_checkpoint(tmp_path / "checkpoint.pt")["step"]
    assert f"checkpoint at step {saved}" in output and saved > 16  # saved at the stop, not the epoch end


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_named_and_resume_falls_back_to_the_previous(celeba_dir, tmp_path, capsys):
    cfg = config.make_config("small32", batch_size=16, subset=64, epochs=3, log_every=1, amp=False)
    train.train(cfg.replace(max_steps=8), tmp_path, progress=False)  # epoch ends at 4 and 8
    previous = checkpoint.read_checkpoint(tmp_path / checkpoint.PREVIOUS)["step"]
    assert previous == 4
    path = tmp_path / checkpoint.CHECKPOINT
    path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a full disk
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint.pt is truncated or corrupt"):
        checkpoint.read_checkpoint(path)
    state = train.train(cfg, tmp_path, resume=True, progress=False)
    out = capsys.readouterr().out
    assert "resuming from the previous checkpoint" in out and "checkpoint.prev.pt (step 4)" in out
    assert state.step == 12 and state.history["step"] == list(range(1, 13))


@pytest.mark.slow
def test_a_nan_stops_training_and_keeps_the_last_good_checkpoint(celeba_dir, tmp_path, nan_from_step_7):
    cfg = config.make_config("small32", batch_size=16, subset=64, epochs=5, log_every=3, amp=False,
                             checkpoint_minutes=0)
    message = r"diverged at step 9: d_loss is nan.*checkpoint \(step 4\) is kept"
    with pytest.raises(train.TrainingDiverged, match=message):
        train.train(cfg, tmp_path, progress=False)  # checked at 3, 6, 9
    kept = checkpoint.read_checkpoint(tmp_path / checkpoint.CHECKPOINT)
    assert kept["step"] == 4  # the epoch end; step 8's epoch end had a NaN weight and was not saved
    assert all(torch.isfinite(v).all() for v in kept["D"].values() if v.is_floating_point())


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "generator.pt"
    torch.save({"config": config.make_config("small32").to_dict(), "G": {}, "payload": _RunsCode(marker)}, evil)
    with pytest.raises(checkpoint.CheckpointError, match="generator.pt was refused: .*could run code"):
        export.load_generator(evil)
    assert not marker.exists()
    assert cli.main(["sample", "--generator", str(evil), "--n", "1", "--out", str(tmp_path / "s")]) == 2
    assert not marker.exists()


@pytest.mark.parametrize("wrong", ["README.md", "assets/generator_32px_fast32_samples.png",
                                   "assets/models/fast32/model.safetensors", "a data archive.zip"])
def test_a_file_that_is_not_a_checkpoint_gets_one_line_saying_what_was_expected(wrong, tmp_path, capsys):
    """Not torch.load's six lines about weights_only=False, and not 'corrupt': the path is simply wrong."""
    path = ROOT / wrong
    if wrong.endswith(".zip"):
        path = tmp_path / wrong
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("faces/000001.jpg", jpeg_bytes(1))
    for command in (["sample", "--generator", str(path), "--n", "1", "--out", str(tmp_path / "s")],
                    ["export", str(path), "--out", str(tmp_path / "x")]):
        assert cli.main(command) == 2
        error, hint = capsys.readouterr().err.strip().split("\n")
        assert error.startswith(f"error: {path} is ") and "not a checkpoint" in error and "--debug" in hint
        assert "weights_only" not in error and "corrupt" not in error
        expected = "pass its model folder, " if wrong.endswith(".safetensors") else "expected a run's checkpoint.pt"
        assert expected in error
    assert not (tmp_path / "s").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("cut", [0, 1000])
def test_a_truncated_checkpoint_keeps_its_own_message(cut, tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"config": config.make_config("small32").to_dict(), "G": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:cut])
    expected = "checkpoint.pt is empty (0 bytes)" if cut == 0 else "checkpoint.pt is truncated or corrupt"
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(expected)) as error:
        checkpoint.read_checkpoint(path)
    assert "EOFError: )" not in str(error.value) and "previous" not in str(error.value)  # no fallback here


def test_an_unreadable_file_gets_whole_sentences_and_the_fallback_only_where_one_exists(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"config": config.make_config("small32").to_dict(), "G": {"w": torch.zeros(1000)}}, good)
    cut = good.read_bytes()[:1000]
    run = tmp_path / "run"
    run.mkdir()
    (run / checkpoint.CHECKPOINT).write_bytes(cut)
    (run / checkpoint.PREVIOUS).write_bytes(good.read_bytes())
    (tmp_path / "generator.pt").write_bytes(cut)  # a standalone file: nothing to fall back to
    messages = {}
    for path in (run / checkpoint.CHECKPOINT, tmp_path / "generator.pt"):
        with pytest.raises(checkpoint.CheckpointError) as error:
            checkpoint.read_checkpoint(path)
        messages[path.name] = str(error.value)
    assert f"use the previous checkpoint, {run / checkpoint.PREVIOUS}" in messages[checkpoint.CHECKPOINT]
    assert "previous" not in messages["generator.pt"] and "export it again" in messages["generator.pt"]
    # torch's own text is a long paragraph: the message keeps its first sentence whole
    assert "(RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory.)" \
        in messages["generator.pt"]


@pytest.mark.parametrize("text", [
    "short.",
    "First sentence here. Second one is also here. " + "A third, much longer sentence " * 8,
    "one very long sentence without any full stop " * 6,
])
def test_error_gist_never_cuts_a_word(text):
    gist = checkpoint.error_gist(RuntimeError(text), limit=100)
    assert gist.startswith("RuntimeError: ") and len(gist) <= len("RuntimeError: ") + 104
    words = set(text.split())
    assert all(w in words for w in gist.removeprefix("RuntimeError: ").removesuffix(" ...").split())
    assert gist.endswith((".", " ...")), gist


def test_shipped_generators_load_safely():
    G, cfg = export.load_generator(ROOT / "assets" / "models" / "small32-ema")  # safetensors and JSON only
    assert cfg.arch == "linear-stem" and cfg.g_conv_dim == 32
    assert G(torch.zeros(1, cfg.z_size)).shape == (1, 3, 32, 32)


def test_generator_files_with_old_field_names_still_load(tmp_path):
    """Generators exported before the renames (arch "fc", g_dim, cpu_bf16) keep loading."""
    cfg = config.make_config("small32")
    saved = {**cfg.to_dict(), "arch": "fc", "cpu_bf16": True}
    saved["g_dim"], saved["d_dim"] = saved.pop("g_conv_dim"), saved.pop("d_conv_dim")
    G = models.build_models(cfg)[1]
    torch.save({"config": saved, "G": {k: v.half() if v.is_floating_point() else v
                                       for k, v in G.state_dict().items()}, "step": 1}, tmp_path / "old.pt")
    G2, cfg2 = export.load_generator(tmp_path / "old.pt")
    assert cfg2.arch == "linear-stem" and cfg2.g_conv_dim == 32
    assert G2(torch.zeros(1, cfg.z_size)).shape == (1, 3, 32, 32)


def test_a_changed_archive_is_extracted_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACEGAN_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "processed-celeba-small.zip"

    def write_archive(n: int) -> None:
        with zipfile.ZipFile(archive, "w") as zf:
            for i in range(n):
                zf.writestr(f"faces/{i:06d}.jpg", jpeg_bytes(i))

    write_archive(3)  # a wrong, partial archive
    assert len(data.list_images(data.resolve_image_dir(archive))) == 3
    write_archive(7)  # the good one, under the same name
    folder = data.resolve_image_dir(archive)
    assert len(data.list_images(folder)) == 7 and "extracting it again" in capsys.readouterr().out
    assert data.resolve_image_dir(archive) == folder and "again" not in capsys.readouterr().out  # reused
    os.utime(archive, (1e9, 1e9))  # a fresh copy of the same archive: new time, same contents
    assert data.resolve_image_dir(archive) == folder and "again" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_corrupt_image_is_one_short_cli_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FACEGAN_CACHE", str(tmp_path / "cache"))
    faces = tmp_path / "faces"
    faces.mkdir()
    for i in range(20):
        (faces / f"{i:03d}.jpg").write_bytes(jpeg_bytes(i))
    (faces / "007.jpg").write_bytes(b"not a jpeg")
    code = cli.main(["train", "--data", str(faces), "--batch-size", "4", "--max-steps", "1", "--out",
                     str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot read image" in err and "007.jpg" in err, err
    message = err[err.index("error:"):]  # what comes before it is the cache's progress bar
    assert "Traceback" not in err and len(message.strip().splitlines()) <= 2


def test_nested_folders_name_the_cli_flag(tmp_path):
    (tmp_path / "faces" / "sub").mkdir(parents=True)
    (tmp_path / "faces" / "sub" / "a.jpg").write_bytes(jpeg_bytes(0))
    with pytest.raises(data.DataError, match="--recursive true"):
        data.resolve_image_dir(tmp_path / "faces")


@pytest.mark.slow
def test_resuming_a_finished_run_says_so(celeba_dir, tmp_path, capsys):
    args = ["train", "--out", str(tmp_path), "--subset", "64", "--batch-size", "16", "--max-steps", "2"]
    assert cli.main(args) == 0
    capsys.readouterr()  # the first run's output; only the resume's counts below
    assert cli.main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "already complete at step 2" in out and "img/s" not in out


@pytest.mark.slow
def test_checkpoints_from_before_safe_loading_still_resume(celeba_dir, tmp_path):
    """They kept NumPy's random state as an array, which weights_only loading accepts only by allow-list."""
    import numpy as np

    cfg = config.make_config("small32", batch_size=16, subset=64, max_steps=2, log_every=1, amp=False)
    state = train.train(cfg, tmp_path, progress=False)
    old = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    old["rng"]["numpy"] = np.random.get_state()  # the earlier format: a tuple holding an ndarray
    torch.save(old, tmp_path / "checkpoint.pt")
    resumed = checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")
    assert resumed.step == state.step == 2


@pytest.mark.slow
def test_cli_resume_falls_back_to_the_previous_checkpoint_and_refuses_two_corrupt_ones(celeba_dir, tmp_path,
                                                                                      capsys):
    """The command line reads the checkpoint through the same fallback as train() (newest_checkpoint)."""
    flags = ["train", "--out", str(tmp_path), "--amp", "false", "--subset", "64", "--batch-size", "16",
             "--log-every", "1", "--checkpoint-minutes", "0"]
    assert cli.main([*flags, "--epochs", "2"]) == 0
    assert cli.main([*flags, "--epochs", "3", "--resume"]) == 0  # checkpoint.pt at step 12, .prev at 8
    primary = tmp_path / checkpoint.CHECKPOINT
    primary.write_bytes(primary.read_bytes()[:100_000])  # truncated
    capsys.readouterr()
    assert cli.main([*flags, "--epochs", "4", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "truncated or corrupt" in out and "resuming from the previous checkpoint" in out and "(step 8)" in out
    assert checkpoint.read_checkpoint(primary)["step"] == 16  # trained on from step 8
    assert (tmp_path / "checkpoint.corrupt.pt").is_file()  # set aside, not renamed over the good fallback
    assert cli.main([*flags, "--epochs", "5"]) == 2  # a fresh start over an existing run is refused
    assert "pass --resume" in capsys.readouterr().err
    assert checkpoint.read_checkpoint(primary)["step"] == 16
    assert cli.main([*flags, "--epochs", "5", "--resume", "--batch-size", "32"]) == 2  # other epochs: refused
    assert "--batch-size" in capsys.readouterr().err
    for path in (primary, tmp_path / checkpoint.PREVIOUS):
        path.write_bytes(b"not a checkpoint")
    assert cli.main([*flags, "--epochs", "5", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no readable checkpoint" in err and "--out" in err and len(err.splitlines()) <= 3


@pytest.mark.slow
def test_checkpoints_hold_no_sample_grids_and_stay_the_same_size(celeba_dir, tmp_path):
    cfg = config.make_config("small32", batch_size=16, subset=64, log_every=1, sample_every=1, amp=False)
    train.train(cfg.replace(epochs=1), tmp_path, progress=False)
    first = (tmp_path / checkpoint.CHECKPOINT).stat().st_size
    result = train.train(cfg.replace(epochs=4), tmp_path, resume=True, progress=False)
    ckpt = torch.load(tmp_path / checkpoint.CHECKPOINT, weights_only=False)
    assert "samples" not in ckpt
    # Only the history grows: 12 more records of a few floats each, against a 1.5 MB checkpoint.
    assert abs((tmp_path / checkpoint.CHECKPOINT).stat().st_size - first) < 20_000
    assert len(list((tmp_path / "samples").glob("step_*.png"))) == 16  # one PNG per sample point
    assert [s for s, _ in result.samples] == list(range(1, 17))
    assert result.samples[-1][1].shape == (64, 3, 32, 32) and result.samples[-1][1].dtype == torch.uint8
    assert (tmp_path / "progress.gif").is_file()


@pytest.mark.slow
def test_a_checkpoint_holding_sample_grids_still_resumes_and_its_grids_become_files(celeba_dir, tmp_path):
    cfg = config.make_config("small32", batch_size=16, subset=64, log_every=1, amp=False)
    train.train(cfg.replace(max_steps=2), tmp_path, progress=False)
    old = torch.load(tmp_path / checkpoint.CHECKPOINT, weights_only=True)
    old["samples"] = [(1, torch.full((64, 3, 32, 32), 7, dtype=torch.uint8))]  # the earlier format
    torch.save(old, tmp_path / checkpoint.CHECKPOINT)
    result = train.train(cfg.replace(max_steps=4), tmp_path, resume=True, progress=False)
    assert result.step == 4
    grids = dict(result.samples)
    assert sorted(grids) == [1, 2, 4] and bool((grids[1] == 7).all())


def test_the_progress_gif_is_capped(tmp_path):
    from PIL import Image

    from facegan import plots

    samples = [(s, torch.full((16, 3, 8, 8), s, dtype=torch.uint8)) for s in range(200)]
    path = plots.save_progress_gif(samples, tmp_path / "p.gif", max_frames=30)
    with Image.open(path) as gif:
        assert gif.n_frames <= 30 + 10  # the last frame is held for 10 more


@pytest.mark.slow
def test_the_progress_bar_shows_the_time_budget(celeba_dir, tmp_path, capsys):
    cfg = config.make_config("small32", batch_size=16, subset=64, epochs=50, max_minutes=0.05, log_every=10_000)
    result = train.train(cfg, tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "(0.05-min budget)" in err and "/3 s" in err and "step=" in err
    assert 0 < result.steps < result.state.total_steps  # the budget, not the step count, ended it
    assert result.history["step"] == [result.step]  # no step was due a log but the budget's last one


@pytest.mark.slow
def test_sigterm_stops_at_a_step_boundary_and_the_resume_is_bit_for_bit(celeba_dir, tmp_path):
    """The signal only sets a flag: the checkpoint saved on the way out holds whole steps."""
    steps = ["--max-steps", "40"]
    full = _cli(tmp_path / "full", *steps)
    assert full.wait(timeout=300) == 0, full.stdout.read()
    stopped = tmp_path / "stopped"
    run = _cli(stopped, *steps, "--checkpoint-minutes", "0")
    _wait_for_step(stopped, 16)  # the first epoch's checkpoint; the run goes on into the second
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 130
    assert 16 <= checkpoint.read_checkpoint(stopped / "checkpoint.pt")["step"] < 40
    run = _cli(stopped, "--resume", *steps)
    assert run.wait(timeout=300) == 0, run.stdout.read()
    a, b = _weights(tmp_path / "full" / "checkpoint.pt"), _weights(stopped / "checkpoint.pt")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_grids_read_back_keep_white_faces(tmp_path):
    from facegan import plots

    images = torch.randint(0, 255, (64, 3, 8, 8), dtype=torch.uint8)
    images[-9:] = 255  # saturated faces, as an early generator draws them
    plots.save_grid(images, plots.grid_path(tmp_path, 7))
    (step, back), = plots.read_grids(tmp_path, 8)
    assert step == 7 and torch.equal(back, images)


def test_load_generator_gives_gs_own_weights_when_asked(celeba_dir, tmp_path):
    cfg = config.make_config("small32", batch_size=16, subset=64, epochs=1, max_steps=3, ema_decay=0.9, amp=False)
    train.train(cfg, tmp_path, progress=False)
    saved = checkpoint.read_checkpoint(tmp_path / "checkpoint.pt")
    own, _ = checkpoint.load_generator(tmp_path / "checkpoint.pt", ema=False)
    ema, _ = checkpoint.load_generator(tmp_path / "checkpoint.pt")
    assert all(torch.equal(v.float(), saved["G"][k].float()) for k, v in own.state_dict().items())
    z = torch.randn(2, cfg.z_size)
    with torch.no_grad():
        assert not torch.equal(own(z), ema(z))  # the EMA copy is another generator


def _lock_holder(out: Path) -> int:
    """Wait until a process holds the run's lock and has logged a step; return its PID."""
    from facegan import runlock

    end = time.time() + 120
    while time.time() < end:
        facts = runlock.probe(out)
        if facts and "step" in facts and (out / checkpoint.CHECKPOINT).is_file():
            return facts["pid"]
        time.sleep(0.1)
    raise TimeoutError(f"no process took the lock of {out}")


@pytest.mark.slow
def test_a_second_writer_is_refused_in_one_line_and_a_kill_9_leaves_no_stale_lock(celeba_dir, tmp_path, capsys):
    from facegan import record, runlock

    holder = _cli(tmp_path, "--epochs", "0", "--max-steps", "100000")
    try:
        assert _lock_holder(tmp_path) == holder.pid
        second = subprocess.run([sys.executable, "-m", "facegan", "train", "--out", str(tmp_path), "--resume",
                                 *RUN_FLAGS], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and second.stdout == "", second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path} is in use: process {holder.pid} "), lines
        assert "kill -TERM" in lines[0] and "--resume" in lines[0] and "another --out folder" in lines[0]
        # train() itself refuses too (the notebook's way in), before touching the folder
        with pytest.raises(runlock.RunInUse, match=f"process {holder.pid} "):
            train.train(config.make_config("small32", subset=256, batch_size=16), tmp_path, progress=False)
        assert len(json.loads((tmp_path / record.RECORD).read_text())["sessions"]) == 1  # no trace of it
        # runs lists it as running, with its step, speed and last log
        capsys.readouterr()
        assert cli.main(["runs", str(tmp_path)]) == 0
        row = capsys.readouterr().out.splitlines()[1]
        assert re.search(r"running \([\d,]+ img/s, logged \d+ s ago\)$", row), row
        assert "continues with" not in row
    finally:
        holder.kill()  # SIGKILL: no handler runs, nothing is released by the program
        holder.wait()
    assert runlock.probe(tmp_path) is None  # the OS released the lock with the process
    step = checkpoint.newest_checkpoint(tmp_path)[0]["step"]
    resumed = _cli(tmp_path, "--resume", "--epochs", "0", "--max-steps", str(step + 3))
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0 and "resumed from" in output and f"done: step {step + 3}" in output, output


def test_evaluation_time_counts_neither_against_the_budget_nor_in_the_speed(capsys):
    """FID and grids run on a clock of their own: the budget, images/s and the progress bar see training alone."""
    from types import SimpleNamespace

    from facegan.clock import RunClock

    cfg = config.make_config("small32", max_minutes=0.005)  # a 0.3 s budget
    clock = RunClock(cfg, 0.0, torch.device("cpu"), evaluated_seconds=2.0)
    state = SimpleNamespace(config=cfg, step=3, total_steps=100)
    bar = train._Progress(state, clock, enabled=True)
    with clock.evaluating():
        time.sleep(0.5)  # longer than the whole budget
    assert clock.eval_seconds() >= 2.5 and clock.elapsed() < 0.3 and not clock.out_of_time()
    bar.show({"d_loss": 1.0, "d_real": 0.5, "d_fake": 0.5}, 100.0)
    assert bar.bar.format_dict["elapsed"] < 0.3  # the bar's rate and ETA are over training time
    assert clock.evaluate(lambda x: x + 1, 1) == 2 and clock.eval_seconds() >= 2.5
    bar.bar.close()
