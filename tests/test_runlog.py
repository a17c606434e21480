"""TensorBoard event files: what a run writes, read back with TensorBoard's own reader."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from facegan import config, runlog

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import metadata as hparams_metadata  # noqa: E402


def read_events(folder: Path) -> EventAccumulator:
    """Every event of every file in ``folder``, as TensorBoard shows them (purges applied), nothing sampled away."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def training_event_files(folder: Path) -> list[Path]:
    """The event files of the curves: all but the one that holds the hyperparameters."""
    return sorted(p for p in folder.glob(runlog.EVENT_FILES) if p.name != runlog.HPARAMS_FILE)


def hparams_of(events: EventAccumulator):
    """The session start TensorBoard's HParams tab reads for the run (the first it meets)."""
    return hparams_metadata.parse_session_start_info_plugin_data(
        events.PluginTagToContent("hparams")[hparams_metadata.SESSION_START_INFO_TAG]).hparams


def steps(events: EventAccumulator, tag: str) -> list[int]:
    items = events.Images(tag) if tag.startswith("samples/") else events.Scalars(tag)
    return [e.step for e in items]


def test_a_log_holds_every_finite_number_of_the_record_the_rates_the_grid_and_fid(tmp_path):
    cfg = config.make_config("small32")
    with runlog.RunLog(tmp_path, cfg) as log:
        for step in (10, 20):
            record = {"d_loss": 1.3, "g_loss": float("nan") if step == 10 else 0.7, "d_real": 0.6, "d_fake": 0.4,
                      "ada_p": 0.1}
            log.scalars(step, record, {"lr_d": 2e-3, "lr_g": 1e-3}, images_per_second=512.0)
        log.grid(20, torch.zeros(64, 3, 32, 32, dtype=torch.uint8))
        log.fid(20, 41.5, 0.03)
    events = read_events(tmp_path)
    assert steps(events, "train/d_loss") == [10, 20] and steps(events, "train/ada_p") == [10, 20]
    assert steps(events, "train/g_loss") == [20]  # NaN (no G step yet) is left out, not drawn as a gap
    assert [e.value for e in events.Scalars("train/lr_d")] == pytest.approx([2e-3, 2e-3])
    assert events.Scalars("train/images_per_second")[-1].value == 512.0
    assert [(e.step, e.value) for e in events.Scalars("eval/fid")] == [(20, 41.5)]
    assert steps(events, "eval/kid") == [20]
    image = events.Images("samples/fixed_latents")[0]
    assert (image.width, image.height) == (8 * 34 + 2, 8 * 34 + 2)  # 8 x 8 faces of 32 px, 2 px apart
    start = hparams_metadata.parse_session_start_info_plugin_data(
        events.PluginTagToContent("hparams")[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["preset"].string_value == "small32" and start.hparams["lr_d"].number_value == cfg.lr_d
    assert start.hparams["real_label"].string_value == str(cfg.real_label)


def test_a_resume_purges_what_a_killed_run_logged_after_its_checkpoint(tmp_path):
    cfg = config.make_config("small32")
    killed = runlog.RunLog(tmp_path, cfg)
    for step in range(1, 8):  # checkpoint at 4, killed after logging 7, never closed
        killed.scalars(step, {"d_loss": float(step)})
    killed.fid(6, 50.0)
    with runlog.RunLog(tmp_path, cfg, start_step=4) as resumed:
        for step in range(5, 10):
            resumed.scalars(step, {"d_loss": 10.0 * step})
    events = read_events(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("train/d_loss")] == \
        [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0), (6, 60.0), (7, 70.0), (8, 80.0), (9, 90.0)]
    assert steps(events, "eval/fid") == []  # measured at step 6 by the killed process: hidden
    # TensorBoard's server reads through another accumulator, which takes a run's first session start
    # for its beginning: the same curve there.
    from tensorboard.backend.event_processing import plugin_event_accumulator

    served = plugin_event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    served.Reload()
    assert [e.step for e in served.Tensors("train/d_loss")] == list(range(1, 10))


def test_a_fresh_run_replaces_an_earlier_runs_events_and_an_idle_call_writes_none(tmp_path):
    cfg = config.make_config("small32")
    with runlog.RunLog(tmp_path, cfg) as log:
        log.scalars(5, {"d_loss": 1.0})
    with runlog.RunLog(tmp_path, cfg, start_step=5):
        pass  # a resume with nothing left to train
    log.scalars(6, {"d_loss": 1.0})  # closed: ignored, never a second writer purging the first one's steps
    assert len(training_event_files(tmp_path)) == 1
    with runlog.RunLog(tmp_path, cfg) as log:
        log.scalars(1, {"d_loss": 2.0})
    assert [(e.step, e.value) for e in read_events(tmp_path).Scalars("train/d_loss")] == [(1, 2.0)]


def test_nothing_is_written_without_a_folder_or_off_rank_0(tmp_path, monkeypatch):
    cfg = config.make_config("small32")
    with runlog.RunLog(None, cfg) as log:
        log.scalars(1, {"d_loss": 1.0})
        assert not log.enabled
    monkeypatch.setattr(runlog.ddp, "is_main", lambda: False)
    with runlog.RunLog(tmp_path, cfg) as log:
        log.scalars(1, {"d_loss": 1.0})
        log.grid(1, torch.zeros(4, 3, 32, 32))
        log.fid(1, 10.0)
    assert list(tmp_path.iterdir()) == []


def test_without_tensorboard_installed_training_goes_on_and_says_so_once(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with runlog.RunLog(tmp_path, config.make_config("small32")) as log:
        log.scalars(1, {"d_loss": 1.0})
        log.fid(1, 10.0)
    assert capsys.readouterr().out.count("pip install tensorboard") == 1 and list(tmp_path.iterdir()) == []


# --- what train writes (slow: each trains a few steps of small32 on 64 real faces)

def _fake_fid(monkeypatch):
    """FID and KID without Inception: the engine's calls are what the test checks, not the numbers."""
    from facegan import train

    monkeypatch.setattr(train, "inception_extractor", lambda **kwargs: None)
    monkeypatch.setattr(train, "evaluate_generator",
                        lambda G, cfg, n, **kwargs: {"fid": 100.0 + n, "kid": 0.5, "kid_std": 0.0})


@pytest.mark.slow
def test_train_logs_the_curves_grids_and_hparams_and_a_resume_from_an_older_checkpoint_logs_each_step_once(
        celeba_dir, tmp_path, monkeypatch, capsys):
    from facegan import checkpoint, train

    _fake_fid(monkeypatch)
    cfg = config.make_config("small32", batch_size=16, subset=64, epochs=3, log_every=1, amp=False,
                             fid_every=2, fid_samples=16)
    train.train(cfg.replace(max_steps=8), tmp_path, progress=False)  # checkpoints at the epoch ends, 4 and 8
    assert steps(read_events(tmp_path), "train/d_loss") == list(range(1, 9))
    # A checkpoint older than the last logged steps: the newest is unreadable, so the resume starts from
    # the previous one (step 4), and steps 5-8 are trained and logged a second time.
    primary = tmp_path / checkpoint.CHECKPOINT
    primary.write_bytes(primary.read_bytes()[:1000])
    result = train.train(cfg, tmp_path, resume=True, progress=False)
    assert "resuming from the previous checkpoint" in capsys.readouterr().out and result.step == 12
    events = read_events(tmp_path)
    for tag in ("train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "train/lr_d", "train/lr_g",
                "train/images_per_second"):
        assert steps(events, tag) == list(range(1, 13)), tag  # each step once, none missing
    assert [e.value for e in events.Scalars("train/d_loss")] == pytest.approx(result.history["d_loss"], rel=1e-6)
    assert steps(events, "eval/fid") == [2, 4, 6, 8, 10, 12] and steps(events, "eval/kid") == [2, 4, 6, 8, 10, 12]
    assert steps(events, "samples/fixed_latents") == [4, 8, 12]  # one grid per epoch end
    assert events.Scalars("train/lr_d")[0].value == pytest.approx(cfg.lr_d)
    start = hparams_metadata.parse_session_start_info_plugin_data(
        events.PluginTagToContent("hparams")[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["preset"].string_value == "small32" and start.hparams["fid_samples"].number_value == 16


@pytest.mark.slow
def test_an_in_memory_run_writes_no_events_and_a_resume_of_a_complete_run_adds_no_file(celeba_dir, tmp_path):
    from facegan import train

    cfg = config.make_config("small32", batch_size=16, subset=64, epochs=1, log_every=2, amp=False)
    train.train(cfg, None, progress=False)
    train.train(cfg, tmp_path, progress=False)
    files = training_event_files(tmp_path)
    assert len(files) == 1
    assert train.train(cfg, tmp_path, resume=True, progress=False).steps == 0  # nothing left to train
    assert training_event_files(tmp_path) == files
    assert steps(read_events(tmp_path), "train/d_loss") == [2, 4]


@pytest.mark.slow
def test_a_resume_shows_the_configuration_now_and_records_each_change_at_its_step(celeba_dir, tmp_path):
    import json

    from facegan import record, train
    from facegan.device import pick_device

    cfg = config.make_config("small32", batch_size=16, subset=64, epochs=2, log_every=1, amp=False)
    train.train(cfg, tmp_path, progress=False)
    assert hparams_of(read_events(tmp_path))["epochs"].number_value == 2
    train.train(cfg.replace(epochs=3, lr_d=1e-3), tmp_path, resume=True, progress=False)
    events = read_events(tmp_path)
    assert hparams_of(events)["epochs"].number_value == 3 and hparams_of(events)["lr_d"].number_value == 1e-3
    # TensorBoard's server reads the same first session start
    from tensorboard.backend.event_processing import plugin_event_accumulator

    served = plugin_event_accumulator.EventAccumulator(str(tmp_path))
    served.Reload()
    start = hparams_metadata.parse_session_start_info_plugin_data(
        served.PluginTagToContent("hparams")[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["epochs"].number_value == 3
    [text] = events.Tensors("config/changes/text_summary")  # add_text's tag
    assert text.step == 8 and b"`epochs` 2 -> 3" in text.tensor_proto.string_val[0]
    kept = json.loads((tmp_path / record.RECORD).read_text())
    assert kept["changes"] == [{"step": 8, "field": "lr_d", "old": cfg.lr_d, "new": 1e-3},
                               {"step": 8, "field": "epochs", "old": 2, "new": 3}]
    assert kept["config"]["epochs"] == 3 and [s["step"] for s in kept["sessions"]] == [0, 8]
    for s in kept["sessions"]:
        assert set(s) >= {"command", "git", "python", "torch", "cpu", "threads", "device", "precision"}
        assert s["git"] == "not a git checkout" or len(s["git"].split()[0]) == 40
        assert s["device"].startswith(pick_device().type) and s["precision"].startswith("fp32") and s["threads"] >= 1


@pytest.mark.slow
def test_train_logs_grad_norms_real_faces_and_evaluation_time_apart(celeba_dir, tmp_path, monkeypatch):
    from facegan import train

    real_grid = train._save_grid

    def slow_grid(*args):  # a grid that takes 0.5 s: evaluation time, not training time
        time.sleep(0.5)
        return real_grid(*args)

    monkeypatch.setattr(train, "_save_grid", slow_grid)
    cfg = config.make_config("small32", batch_size=16, subset=64, epochs=2, log_every=1, amp=False,
                             sample_every=2, keep_generators=True)
    result = train.train(cfg, tmp_path, progress=False)
    events = read_events(tmp_path)
    for tag in ("train/grad_norm_d", "train/grad_norm_g", "time/train_minutes", "time/eval_minutes"):
        assert steps(events, tag) == list(range(1, 9)), tag
    assert all(e.value > 0 for e in events.Scalars("train/grad_norm_d") + events.Scalars("train/grad_norm_g"))
    [real] = events.Images("samples/real")
    assert real.step == 0 and (real.width, real.height) == (8 * 34 + 2, 2 * 34 + 2)  # the first batch: 16 faces
    # grids at steps 2, 4, 6 before the last log, 0.5 s each: in the evaluation clock, not the training one
    eval_seconds = 60 * events.Scalars("time/eval_minutes")[-1].value
    assert eval_seconds >= 1.5 and result.history["eval_seconds"][-1] == pytest.approx(eval_seconds, rel=1e-4)
    assert result.history["seconds"][-1] == pytest.approx(60 * events.Scalars("time/train_minutes")[-1].value,
                                                          rel=1e-4)
    # --keep-generators keeps G at every sample point, as its help says
    assert "at every sample point" in config.field_help()["keep_generators"]
    grids = sorted(int(p.stem[5:]) for p in (tmp_path / "samples").glob("step_*.png"))
    kept = sorted(int(p.stem[5:]) for p in (tmp_path / "generators").glob("step_*.pt"))
    assert grids == kept == [2, 4, 6, 8]
