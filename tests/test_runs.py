"""``python helpers.py runs``: the table of runs, their states, and the FID curves in one figure."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from facegan import cli, config, evaluation, models, runlog


def fake_run(folder: Path, step: int, steps_per_epoch: int = 4, fids: dict | None = None, seconds: float = 90.0,
             world_size: int = 1, with_weights: bool = False, **overrides) -> Path:
    """A run folder whose checkpoint holds what ``runs`` reads (and G's weights when asked)."""
    cfg = config.make_config("small32", batch_size=16, **{"epochs": 2, **overrides})
    G = models.build_models(cfg)[1].state_dict() if with_weights else {}
    history = {"step": list(range(1, step + 1)), "seconds": [seconds * s / step for s in range(1, step + 1)],
               "eval_seconds": [30.0 * s / step for s in range(1, step + 1)]}
    if fids:
        history.update(fid_step=list(fids), fid=list(fids.values()))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg.to_dict(), "G": G, "step": step, "epoch": step // steps_per_epoch,
                "batch_in_epoch": step % steps_per_epoch, "steps_per_epoch": steps_per_epoch,
                "history": history, "world_size": world_size}, folder / "checkpoint.pt")
    return folder


def table(capsys, *args: str) -> dict[str, list[str]]:
    """The printed table as {run folder name: its cells}."""
    assert cli.main(["runs", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("run "))  # --score prints its progress first
    assert lines[header].split() == ["run", "preset", "steps", "images", "seen", "train", "min", "eval", "min", "last",
                                     "FID", "state"]
    return {Path(line.split()[0]).name: line.split() for line in lines[header + 1:] if line.startswith("/")}


def test_the_table_has_a_row_per_run_with_its_figures_and_state(tmp_path, capsys):
    fake_run(tmp_path / "done", step=8, fids={4: 300.0, 8: 250.5}, fid_samples=256)
    fake_run(tmp_path / "half", step=5, world_size=2)
    fake_run(tmp_path / "budget", step=3, max_minutes=1.0, seconds=61.0)  # out of time before its epochs
    fake_run(tmp_path / "nested" / "deeper", step=8, epochs=0, max_steps=8)
    rows = table(capsys, str(tmp_path))
    assert set(rows) == {"done", "half", "budget", "deeper"}
    assert rows["done"][1:6] == ["small32", "8", "128", "1.5", "0.5"] and rows["done"][-1] == "finished"
    assert "250.5" in rows["done"] and "(N=256," in rows["done"]
    assert rows["half"][2:4] == ["5", "160"] and rows["half"][-1] == "stopped"  # 5 steps x 16 x 2 processes
    assert rows["half"][6] == "-"  # no FID measured
    assert rows["budget"][-1] == "finished" and rows["deeper"][-1] == "finished"


def test_a_diverged_run_says_so_until_a_resume_checkpoints_again(tmp_path, capsys):
    run = fake_run(tmp_path / "nan", step=5)
    runlog.mark_diverged(run, 7, "d_loss is nan")
    assert table(capsys, str(run))["nan"][-1] == "diverged"
    fake_run(run, step=7)  # resumed with a lower learning rate: a newer checkpoint
    marker = run / runlog.DIVERGED
    os.utime(marker, (marker.stat().st_mtime - 10,) * 2)
    assert table(capsys, str(run))["nan"][-1] == "stopped"


def test_a_run_that_diverged_before_its_first_checkpoint_and_an_unreadable_one_are_listed(tmp_path, capsys):
    runlog.mark_diverged(tmp_path / "early", 3, "g_loss is inf")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    assert cli.main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {Path(line.split()[0]).name: line.split() for line in out.splitlines()[1:] if line.startswith("/")}
    assert rows["early"][-1] == "diverged" and rows["broken"][-1] == "unreadable"
    assert "g_loss is inf" in out and "truncated or corrupt" in out
    assert json.loads((tmp_path / "early" / runlog.DIVERGED).read_text())["step"] == 3


def test_plot_draws_the_tracked_fid_curves_of_several_runs(tmp_path, capsys):
    fake_run(tmp_path / "a", step=8, fids={4: 300.0, 8: 250.0})
    fake_run(tmp_path / "b", step=8, fids={2: 320.0, 6: 200.0, 8: 190.0})
    assert cli.main(["runs", str(tmp_path), "--plot", str(tmp_path / "fid.png"), "--max-step", "6"]) == 0
    assert "190.0" not in capsys.readouterr().out  # points after --max-step are left out
    from PIL import Image

    assert Image.open(tmp_path / "fid.png").size[0] > 300


def test_score_measures_kept_generators_and_the_checkpoint_now(tmp_path, capsys, monkeypatch):
    run = fake_run(tmp_path / "kept", step=8, with_weights=True)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    (run / "generators").mkdir()
    for step in (4, 8):  # generators/step_*.pt, as --keep-generators true saves them
        torch.save({**ckpt, "step": step}, run / "generators" / f"step_{step:07d}.pt")
    scored = []
    monkeypatch.setattr(evaluation, "inception_extractor", lambda *a, **k: "extractor")
    monkeypatch.setattr(evaluation, "evaluate_generator", lambda G, cfg, n, extractor=None, **k:
                        scored.append(n) or {"fid": 100.0 - len(scored), "kid": 0.01})
    rows = table(capsys, str(run), "--score", "64", "--plot", str(tmp_path / "fid.png"))
    assert scored == [64, 64]  # step 4, step 8; the checkpoint (also step 8) is not scored twice
    assert "98.0" in rows["kept"] and "(N=64," in rows["kept"] and (tmp_path / "fid.png").is_file()


def test_score_every_scores_one_kept_generator_per_k_steps_and_the_checkpoint(tmp_path, capsys, monkeypatch):
    run = fake_run(tmp_path / "long", step=40, steps_per_epoch=40, with_weights=True)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    (run / "generators").mkdir()
    for step in range(3, 40, 3):  # kept every 3 steps: 3, 6, ..., 39
        torch.save({**ckpt, "step": step}, run / "generators" / f"step_{step:07d}.pt")
    (run / "generators" / "step_best.pt").write_bytes(b"a copy a user made")  # not a kept generator's name
    monkeypatch.setattr(evaluation, "inception_extractor", lambda *a, **k: "extractor")
    monkeypatch.setattr(evaluation, "evaluate_generator",
                        lambda G, cfg, n, extractor=None, **k: {"fid": 50.0, "kid": 0.0123})
    assert cli.main(["runs", str(run), "--score", "64", "--score-every", "10"]) == 0
    progress = [line for line in capsys.readouterr().out.splitlines() if ": step " in line]
    assert [int(line.split("step ")[1].split(":")[0]) for line in progress] == [12, 21, 30, 40]  # then the checkpoint
    assert all(line.endswith("FID-64 50.00, KID 0.0123") for line in progress)


def test_score_every_must_be_a_positive_number_of_steps(tmp_path, capsys):
    run = fake_run(tmp_path / "a", step=8)
    assert cli.main(["runs", str(run), "--score", "64", "--score-every", "0"]) == 2
    assert "--score-every 0" in capsys.readouterr().err


@pytest.mark.parametrize("args,expected", [(["--plot", "x.png"], "no FID to plot"), ([], "no runs under")])
def test_nothing_to_show_is_one_line_with_the_fix(tmp_path, capsys, args, expected):
    if args:
        fake_run(tmp_path / "a", step=8)
    else:
        (tmp_path / "empty").mkdir()
    folder = tmp_path if args else tmp_path / "empty"
    assert cli.main(["runs", str(folder), *[a if a != "x.png" else str(tmp_path / a) for a in args]]) == 2
    error = capsys.readouterr().err.strip().splitlines()[0]
    assert error.startswith("error: ") and expected in error


@pytest.mark.slow
def test_a_run_that_diverges_is_listed_as_diverged(celeba_dir, tmp_path, nan_from_step_7, capsys):
    from facegan import train

    cfg = config.make_config("small32", batch_size=16, subset=64, epochs=5, log_every=3, amp=False)
    with pytest.raises(train.TrainingDiverged):
        train.train(cfg, tmp_path / "nan", progress=False)
    assert json.loads((tmp_path / "nan" / runlog.DIVERGED).read_text())["step"] == 9
    nan_from_step_7()  # and a run that trains normally beside it
    train.train(cfg.replace(epochs=1), tmp_path / "fine", progress=False)
    rows = table(capsys, str(tmp_path))
    assert rows["nan"][-1] == "diverged" and rows["nan"][2] == "4"  # the last good checkpoint's step
    assert rows["fine"][-1] == "finished" and rows["fine"][2] == "4"


def test_game_balance_averages_each_window_and_skips_unlogged_columns():
    """bench/game_balance.py: the window means that show D winning, over exactly the steps inside."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("game_balance", Path(__file__).parents[1] / "bench/game_balance.py")
    game_balance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(game_balance)
    history = {"step": [10, 20, 30, 40, 50], "d_fake": [0.4, 0.2, 0.1, 0.05, 0.0],
               "d_real": [0.5, 0.5, 0.5, 0.5, 0.5], "d_holdout": []}  # never logged: no column
    rows = game_balance.window_means(history, every=20)
    assert [(lo, hi) for lo, hi, _ in rows] == [(1, 20), (21, 40), (41, 60)]
    assert [round(m["d_fake"], 3) for _, _, m in rows] == [0.3, 0.075, 0.0]
    assert set(rows[0][2]) == {"d_real", "d_fake"}
    assert game_balance.window_means({"step": []}, every=20) == []
    (lo, hi, means), = game_balance.window_means(history, every=20, ends=[35])  # the 20 steps up to step 35
    assert (lo, hi, round(means["d_fake"], 3)) == (16, 35, 0.15)


def test_a_run_in_training_is_listed_as_running_with_its_step_speed_and_last_log(tmp_path, capsys):
    from facegan import runlock

    fake_run(tmp_path / "live", step=8, epochs=100)  # its last checkpoint: step 8
    (tmp_path / "fresh").mkdir()  # no checkpoint yet
    with runlock.hold(tmp_path / "live"), runlock.hold(tmp_path / "fresh"):
        state = SimpleNamespace(config=config.make_config("small32", batch_size=16), step=12)  # 192 images seen
        runlock.heartbeat(tmp_path / "live", state, 345.6, {"train_minutes": 2.5, "eval_minutes": 0.75})
        assert cli.main(["runs", str(tmp_path)]) == 0
        out = capsys.readouterr().out
    rows = {Path(line.split()[0]).name: line for line in out.splitlines() if line.startswith("/")}
    assert rows["live"].split()[1:7] == ["small32", "12", "192", "2.5", "0.8", "-"]  # the live step, not the saved 8
    assert rows["live"].endswith("running (346 img/s, logged 0 s ago)")
    assert rows["fresh"].endswith("running (starting)")
    assert "continues with" not in out  # a running run is not offered a resume
    assert table(capsys, str(tmp_path))["live"][-1] == "stopped"  # the lock released: the checkpoint's state
