"""The model folder (facegan/export.py): export and load back, ONNX, refusals, from_pretrained, the CLI.

The generators are tiny (conv_dim 4 to 8) and trained for 1-2 steps on synthetic images, so every test
is quick; the shipped folders are tested in test_evaluation.py (size, card, faces) and test_serve.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import jpeg_bytes

from facegan import checkpoint, cli, config, evaluation, export, sampling, serve, train
from facegan.card import train_command

ROOT = Path(__file__).resolve().parents[1]
TINY = {  # a 32px linear-stem G and a 64px DCGAN G, tiny, with EMA (so the BatchNorm refresh is exercised)
    "tiny32": dict(preset="small32", g_conv_dim=8, d_conv_dim=8, max_steps=2, ema_decay=0.9),
    "tiny64": dict(preset="dcgan64", g_conv_dim=4, d_conv_dim=4, z_size=16, max_steps=1, ema_decay=0.9),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """name -> checkpoint.pt of a 1-2 step run on 12 synthetic faces."""
    root = tmp_path_factory.mktemp("runs")
    faces = root / "faces"
    faces.mkdir()
    for i in range(12):
        (faces / f"{i:03d}.jpg").write_bytes(jpeg_bytes(i))
    paths = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEGAN_CACHE", str(root / "cache"))
        for name, values in TINY.items():
            values = dict(values)
            cfg = config.make_config(values.pop("preset"), batch_size=4, data=str(faces), log_every=1, **values)
            train.train(cfg, root / name, progress=False)
            paths[name] = root / name / checkpoint.CHECKPOINT
    return paths


def images(path: Path, n: int = 8) -> torch.Tensor:
    G, cfg = export.load_generator(path)
    return sampling.generate(G, sampling.truncated_latent(n, cfg, seed=3))


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def folders(runs, tmp_path_factory) -> dict[str, Path]:
    """name -> a model folder exported in fp32 with ONNX (shared by the read-only tests)."""
    root = tmp_path_factory.mktemp("models")
    return {name: export.export_model(ckpt, root / name, dtype="fp32", onnx=True, metrics={"fid_1k": 99.5})
            for name, ckpt in runs.items()}


# --- export, then load

@pytest.mark.parametrize("name", TINY)
def test_fp32_folder_draws_the_checkpoints_images_bit_for_bit(runs, folders, name):
    assert torch.equal(images(folders[name]), images(runs[name]))


@pytest.mark.parametrize("name", TINY)
def test_fp16_folder_is_within_fp16_rounding(runs, tmp_path, name):
    from safetensors.torch import load_file

    folder = export.export_model(runs[name], tmp_path / name)  # fp16 is the default
    stored = load_file(str(folder / export.WEIGHTS))
    G, _ = export.load_generator(runs[name])
    params = {k for k, _ in G.named_parameters()}
    assert {str(v.dtype) for k, v in stored.items() if k in params} == {"torch.float16"}
    assert all(v.dtype in (torch.float32, torch.int64) for k, v in stored.items() if k not in params)
    assert (images(folder) - images(runs[name])).abs().max() < 2e-2
    assert (folder / export.WEIGHTS).stat().st_size < 0.6 * sum(v.numel() * 4 for v in stored.values())


def test_config_json_holds_what_rebuilds_g_the_run_and_the_facts(runs, folders):
    record = json.loads((folders["tiny32"] / export.CONFIG_JSON).read_text())
    ckpt = checkpoint.read_checkpoint(runs["tiny32"])
    cfg = ckpt["config"]
    assert {f: record[f] for f in export.GENERATOR_FIELDS} == {f: getattr(cfg, f) for f in export.GENERATOR_FIELDS}
    assert config.Config.from_dict(record["training_config"]) == cfg
    assert record["training"]["step"] == 2 and record["training"]["images_seen"] == 2 * cfg.batch_size
    assert record["training"]["seconds"] == round(ckpt["history"]["seconds"][-1], 1)
    assert record["metrics"] == {"fid_1k": 99.5} and record["dtype"] == "float32"
    assert record["parameters"] == sum(p.numel() for p in export.load_generator(runs["tiny32"])[0].parameters())


def test_the_card_says_what_g_is_how_it_trained_and_its_limits(folders):
    card = (folders["tiny64"] / export.CARD).read_text()
    front = card.split("---")[1]
    for line in ("library_name: pytorch", "license: other", "- gan", "- dcgan", "- face-generation", "- celeba",
                 "- pytorch_model_hub_mixin"):
        assert line in front, line
    assert "python helpers.py train --preset dcgan64 --z-size 16 --g-conv-dim 4 --d-conv-dim 4" in card
    assert "--max-steps 1" in card and "--ema-decay 0.9" in card
    for text in ("| FID-1000@64 | 99.5 |", "non-commercial research", "light-skinned", "identify",
                 "load_generator(", "FaceGenerator.from_pretrained(", "huggingface-cli upload", "push_to_hub",
                 "generator.onnx", "![64 faces from seed 0](samples.png)", "images seen by D"):
        assert text in card, text
    from PIL import Image

    with Image.open(folders["tiny64"] / export.SAMPLES) as grid:  # 8 x 8 faces of 64px, 2px gaps
        assert grid.size == (8 * 66 + 2, 8 * 66 + 2)


def test_train_command_rebuilds_the_configuration():
    cfg = config.make_config("small32", epochs=80, ema_decay=0.999, real_label=(0.9, 0.9), lr_schedule="linear",
                             keep_generators=True, diffaug="color,translation")
    command = train_command(cfg)
    args = cli.build_parser().parse_args(command.split()[2:])
    assert cli.config_from_args(args) == cfg


# --- ONNX

@pytest.mark.parametrize("name", TINY)
def test_onnx_runtime_matches_pytorch(folders, name):
    import onnx
    import onnxruntime as ort

    path = folders[name] / export.ONNX_FILE
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == ["z"] and [o.name for o in model.graph.output] == ["images"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    G, cfg = export.load_generator(folders[name])
    for n in (1, 17):
        z = torch.randn(n, cfg.z_size, generator=torch.Generator().manual_seed(n))
        got = session.run(["images"], {"z": z.numpy()})[0]
        expected = sampling.generate(G, z).numpy()
        assert got.shape == (n, 3, cfg.image_size, cfg.image_size)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
        assert got.min() >= -1 and got.max() <= 1


# --- refusals: each a one-line CheckpointError naming the problem

def refusal(folder: Path) -> str:
    with pytest.raises(checkpoint.CheckpointError) as e:
        export.load_generator(folder)
    message = str(e.value)
    assert "\n" not in message and str(folder) in message
    return message


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_safetensors_file_is_refused(folders, tmp_path, damage):
    folder = copy_folder(folders["tiny32"], tmp_path / "m")
    weights = folder / export.WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes({"garbage": b"\x00\xff not safetensors" * 50, "truncated": data[: len(data) // 2],
                         "empty": b""}[damage])
    assert "is truncated or corrupt" in refusal(folder)


def test_a_config_that_does_not_fit_the_weights_names_the_tensor(folders, tmp_path):
    folder = copy_folder(folders["tiny32"], tmp_path / "m")
    record = json.loads((folder / export.CONFIG_JSON).read_text())
    record["g_conv_dim"] = 16  # the weights are for 8
    (folder / export.CONFIG_JSON).write_text(json.dumps(record))
    message = refusal(folder)
    assert "tensor 'fc.weight' has shape [512, 100] but config.json needs [1024, 100]" in message


@pytest.mark.parametrize("missing", [export.WEIGHTS, export.CONFIG_JSON])
def test_a_missing_file_is_refused(folders, tmp_path, missing):
    folder = copy_folder(folders["tiny32"], tmp_path / "m")
    (folder / missing).unlink()
    assert f"is not a model folder: {missing} missing" in refusal(folder)


@pytest.mark.parametrize("where", ["top", "training_config"])
def test_unknown_fields_are_refused(folders, tmp_path, where):
    folder = copy_folder(folders["tiny32"], tmp_path / "m")
    record = json.loads((folder / export.CONFIG_JSON).read_text())
    (record if where == "top" else record["training_config"])["hidden_layers"] = 3
    (folder / export.CONFIG_JSON).write_text(json.dumps(record))
    assert "unknown" in refusal(folder) and "hidden_layers" in refusal(folder)


def test_invalid_json_and_invalid_values_are_refused(folders, tmp_path):
    folder = copy_folder(folders["tiny32"], tmp_path / "m")
    (folder / export.CONFIG_JSON).write_text("{not json")
    assert "not valid JSON" in refusal(folder)
    record = json.loads((folders["tiny32"] / export.CONFIG_JSON).read_text())
    (folder / export.CONFIG_JSON).write_text(json.dumps({**record, "arch": "transformer"}))
    assert "invalid configuration" in refusal(folder) and "arch" in refusal(folder)


def test_a_run_folder_is_not_a_model_folder_and_the_error_says_what_to_pass(runs):
    assert "pass " + str(runs["tiny32"]) in refusal(runs["tiny32"].parent)


# --- Hugging Face: from_pretrained offline, and the project without huggingface_hub

def test_from_pretrained_loads_the_folder_offline_and_draws_the_same_images(folders, tmp_path):
    out = tmp_path / "images.pt"
    code = ("import sys, torch; from facegan.export import FaceGenerator; from facegan import sampling\n"
            "m = FaceGenerator.from_pretrained(sys.argv[1])\n"
            "z = sampling.truncated_latent(8, m.config, seed=3)\n"
            "torch.save({'images': sampling.generate(m, z), 'keys': sorted(m.state_dict())}, sys.argv[2])\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code, str(folders["tiny64"]), str(out)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    saved = torch.load(out, weights_only=True)
    assert torch.equal(saved["images"], images(folders["tiny64"]))
    from safetensors.torch import load_file

    assert saved["keys"] == sorted(load_file(str(folders["tiny64"] / export.WEIGHTS)))  # G's own tensor names


def test_from_pretrained_and_save_pretrained_round_trip(folders, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from facegan.export import FaceGenerator

    model = FaceGenerator.from_pretrained(folders["tiny32"])
    assert isinstance(model, nn.Module) and not model.training
    model.save_pretrained(tmp_path / "again")  # what push_to_hub uploads: the same folder, card included
    assert torch.equal(images(tmp_path / "again"), images(folders["tiny32"]))
    assert "| FID-1000@32 | 99.5 |" in (tmp_path / "again" / export.CARD).read_text()


def test_the_project_works_without_huggingface_hub(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub now fails
    export._face_generator_class.cache_clear()
    try:
        assert torch.equal(images(folders["tiny32"]), images(folders["tiny32"]))
        with pytest.raises(ImportError, match="pip install huggingface_hub"):
            from facegan.export import FaceGenerator  # noqa: F401
    finally:
        export._face_generator_class.cache_clear()


# --- the shipped folders: best first

def test_shipped_models_are_ordered_by_resolution_then_fid(folders, tmp_path):
    for name, src, fid in (("b32", "tiny32", 30.0), ("a32", "tiny32", 20.0), ("c64", "tiny64", None),
                           ("d32", "tiny32", None)):
        copy_folder(folders[src], tmp_path / name)
        export.record_metrics(tmp_path / name, {"fid_1k": fid})
    assert [p.name for p in export.shipped_models(tmp_path)] == ["c64", "a32", "b32", "d32"]
    assert export.shipped_models(tmp_path / "nothing-here") == []


# --- the command line

def test_cli_export_writes_the_folder(runs, tmp_path, capsys):
    out = tmp_path / "exported"
    code = cli.main(["export", str(runs["tiny64"]), "--out", str(out), "--fid-1k", "41.5", "--kid", "0.02",
                     "--hardware", "a test machine"])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "README.md", "samples.png"}
    assert str(out) in capsys.readouterr().out
    record = export.read_model_config(out)
    assert record["metrics"] == {"fid_1k": 41.5, "kid": 0.02} and record["training"]["hardware"] == "a test machine"
    # exporting a folder again keeps what it records, and --dtype fp32 stays within fp16 of it
    assert cli.main(["export", str(out), "--out", str(tmp_path / "again"), "--dtype", "fp32"]) == 0
    assert export.read_model_config(tmp_path / "again")["metrics"] == record["metrics"]
    assert torch.equal(images(tmp_path / "again"), images(out))


def test_cli_refuses_a_bad_folder_with_exit_2_and_one_line(folders, tmp_path, capsys):
    folder = copy_folder(folders["tiny32"], tmp_path / "broken")
    (folder / export.WEIGHTS).write_bytes(b"junk")
    for command in (["sample", "--generator", str(folder), "--n", "1", "--out", str(tmp_path / "s")],
                    ["fid", "--generator", str(folder), "--n", "2"],
                    ["export", str(folder), "--out", str(tmp_path / "x")]):
        assert cli.main(command) == 2
        error_line, hint = capsys.readouterr().err.strip().split("\n")
        assert error_line.startswith("error: ") and str(folder) in error_line and "corrupt" in error_line
        assert "--debug" in hint


def test_serve_refuses_an_unknown_model_name(folders):
    from fastapi.testclient import TestClient

    with TestClient(serve.create_app(folders["tiny32"])) as client:
        assert client.get("/face.png?seed=1&model=tiny32").status_code == 200
        r = client.get("/face.png?seed=1&model=unknown")
        assert 400 <= r.status_code < 500 and "tiny32" in r.json()["detail"] and "unknown" in r.json()["detail"]


class FewFeatures(nn.Module):
    """A stand-in for Inception (FID's maths on 16 cheap features)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x.float().flatten(1)[:, :16] * self.scale


def test_sample_and_fid_without_a_generator_say_which_they_used(folders, tmp_path, monkeypatch, capsys):
    assert cli.main(["sample", "--n", "2", "--out", str(tmp_path / "s")]) == 0  # the real shipped folders
    best = export.shipped_models()[0]
    assert f"using the shipped generator {best}" in capsys.readouterr().out
    shipped = tmp_path / "shipped"  # fid: tiny shipped folders, whose data is 12 synthetic faces
    copy_folder(folders["tiny32"], shipped / "tiny32")
    monkeypatch.setattr(export, "MODELS_DIR", shipped)
    monkeypatch.setattr(evaluation, "inception_extractor", lambda *a, **k: FewFeatures())
    monkeypatch.setenv("FACEGAN_CACHE", str(tmp_path / "cache"))
    assert cli.main(["fid", "--n", "4", "--record"]) == 0
    out = capsys.readouterr().out
    assert f"using the shipped generator {shipped / 'tiny32'} (tiny32: 32px small32, FID-1000@32 99.5)" in out
    assert "FID-4" in out and "recorded fid_4, kid_4 in" in out
    metrics = export.read_model_config(shipped / "tiny32")["metrics"]
    assert set(metrics) == {"fid_1k", "fid_4", "kid_4"}
    assert f"| FID-4@32 | {metrics['fid_4']:g} |" in (shipped / "tiny32" / export.CARD).read_text()
    assert cli.main(["fid", "--generator", str(tmp_path / "nothing.pt"), "--record"]) == 2
