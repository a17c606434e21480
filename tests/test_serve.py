"""The HTTP API and gallery (facegan.serve): images identical to the notebook's, bounded input,
start-up errors, the worker under concurrency, a real server process, and the page in a browser."""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

with warnings.catch_warnings():  # starlette warns that its TestClient will move to httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from facegan import serve  # noqa: E402
from facegan.export import load_generator  # noqa: E402
from facegan.plots import image_grid  # noqa: E402
from facegan.sampling import face_for_seed, generate, interpolate_faces, to_uint8, truncated_latent  # noqa: E402

GENERATOR = ROOT / "assets" / "models" / "small32-ema"  # a shipped model folder (facegan/export.py)
TILE = 32 + 2  # a 32px face plus make_grid's 2px padding


@pytest.fixture(scope="module")
def model():
    return load_generator(GENERATOR)


@pytest.fixture(scope="module")
def client():
    with TestClient(serve.create_app(GENERATOR)) as c:
        yield c


def decode(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(response.content))
    assert image.mode == "RGB"
    return np.asarray(image)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("seed,truncation", [(0, 0.0), (7, 0.7), (serve.MAX_SEED, 2.0)])
def test_face_is_the_notebook_face(client, model, seed, truncation):
    face = decode(client.get(f"/face.png?seed={seed}&truncation={truncation}"))
    assert face.shape == (32, 32, 3)
    np.testing.assert_array_equal(face, face_for_seed(*model, seed, truncation))


def test_same_seed_same_bytes_other_seed_other_face(client):
    first, again, other = (client.get(f"/face.png?seed={s}").content for s in (5, 5, 6))
    assert first == again
    assert first != other


def test_size_is_a_nearest_neighbour_upscale(client, model):
    big = decode(client.get("/face.png?seed=3&size=128"))
    np.testing.assert_array_equal(big, face_for_seed(*model, 3).repeat(4, axis=0).repeat(4, axis=1))
    assert decode(client.get(f"/face.png?seed=3&size={serve.MAX_SIZE}")).shape == (serve.MAX_SIZE,) * 2 + (3,)


@pytest.mark.parametrize("n", [2, 5, 16, serve.MAX_N])
def test_grid_shape(client, n):
    rows, cols = -(-n // serve.GRID_COLUMNS), min(n, serve.GRID_COLUMNS)
    assert decode(client.get(f"/grid.png?seed=1&n={n}")).shape == (rows * TILE + 2, cols * TILE + 2, 3)


def test_grid_of_one_is_the_bare_face(client):
    assert decode(client.get("/grid.png?seed=1&n=1")).shape == (32, 32, 3)  # make_grid adds no frame to one image


def test_grid_is_the_notebook_grid(client, model):
    G, cfg = model
    expected = image_grid(to_uint8(generate(G, truncated_latent(16, cfg, 0.5, 42))), nrow=8)
    np.testing.assert_array_equal(decode(client.get("/grid.png?seed=42&n=16&truncation=0.5")), expected)


def test_interpolation_strip_is_interpolate_faces(client, model):
    steps = 5
    strip = decode(client.get(f"/interpolate.png?a=10&b=20&steps={steps}&truncation=1.5"))
    assert strip.shape == (TILE + 2, steps * TILE + 2, 3)
    for i in range(steps):
        tile = strip[2:34, 2 + i * TILE:2 + i * TILE + 32]
        np.testing.assert_array_equal(tile, interpolate_faces(*model, 10, 20, i / (steps - 1), 1.5))


def test_health(client):
    h = client.get("/health").json()
    assert h["generator"] == str(GENERATOR.resolve())
    assert (h["resolution"], h["preset"], h["device"]) == (32, "small32", "cpu")
    assert isinstance(h["step"], int) and h["step"] > 0
    assert h["limits"]["max_n"] == serve.MAX_N


@pytest.mark.parametrize("query,field", [
    ("/face.png?seed=-1", "seed"), (f"/face.png?seed={serve.MAX_SEED + 1}", "seed"), ("/face.png?seed=abc", "seed"),
    ("/face.png?seed=1.5", "seed"), ("/face.png?truncation=-0.1", "truncation"),
    (f"/face.png?truncation={serve.MAX_TRUNCATION + 0.01}", "truncation"), ("/face.png?truncation=nan", "truncation"),
    (f"/face.png?size={serve.MIN_SIZE - 1}", "size"), (f"/face.png?size={serve.MAX_SIZE + 1}", "size"),
    ("/grid.png?n=0", "n"), (f"/grid.png?n={serve.MAX_N + 1}", "n"), ("/grid.png?n=ten", "n"),
    (f"/interpolate.png?steps={serve.MIN_STEPS - 1}", "steps"),
    (f"/interpolate.png?steps={serve.MAX_STEPS + 1}", "steps"),
    ("/interpolate.png?a=-5", "a"), (f"/interpolate.png?b={serve.MAX_SEED + 1}", "b"),
])
def test_bad_input_is_a_422_naming_the_field_and_costs_nothing(client, query, field):
    before = client.app.state.worker.requests
    r = client.get(query)
    assert r.status_code == 422
    assert ["query", field] in [e["loc"] for e in r.json()["detail"]]
    assert client.app.state.worker.requests == before  # G never ran


def test_the_caps_themselves_are_allowed(client):
    for query in (f"/face.png?seed={serve.MAX_SEED}&truncation={serve.MAX_TRUNCATION}&size={serve.MAX_SIZE}",
                  f"/grid.png?n={serve.MAX_N}", f"/interpolate.png?steps={serve.MAX_STEPS}"):
        assert client.get(query).status_code == 200, query


def test_a_full_queue_is_an_immediate_503(client, monkeypatch):
    monkeypatch.setattr(serve, "MAX_PENDING", 0)
    r = client.get("/face.png?seed=1")
    assert r.status_code == 503 and "busy" in r.json()["detail"]


def test_no_route_reads_files(client):
    for path in ("/nope", "/assets/models/small32-ema/model.safetensors", "/../helpers.py",
                 "/face.png/../../helpers.py", "/static/x"):
        assert client.get(path).status_code == 404, path
    assert client.post("/face.png?seed=1").status_code == 405
    assert client.get("/face.png?seed=1&generator=/etc/passwd").content == client.get("/face.png?seed=1").content


def test_gallery_page_is_offline_and_has_the_controls(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for element in ('id="seed" type="range"', 'id="truncation" type="range"', 'id="random"', 'id="face"',
                    'id="seed-a"', 'id="seed-b"', 'id="steps"', 'id="interp"', 'id="face-link"', 'id="grid"'):
        assert element in r.text, element
    assert "://" not in r.text  # no CDN, no external script: works offline
    assert str(serve.MAX_SEED) in r.text and "__" not in r.text  # every placeholder filled
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/face.png", "/grid.png", "/interpolate.png"}


def test_requests_taken_together_get_exactly_their_own_faces(model):
    """The worker takes concurrent requests in one hop; each must still be the notebook's face.

    Stacking the latents of a hop into one forward would fail this: on CPU about 1 face in 40 then
    differs by one grey level (matrix kernels round differently per batch size), so with 200 faces
    such a change is caught with probability > 99%.
    """
    G, cfg = model
    worker, seeds = serve.Worker(G), range(200)

    async def burst():
        worker.start()
        try:
            jobs = [[truncated_latent(1, cfg, 0.0, s)] for s in seeds]
            jobs.append([truncated_latent(16, cfg, 0.0, 99)])
            return await asyncio.gather(*(worker.faces(j) for j in jobs))
        finally:
            await worker.stop()

    results = asyncio.run(burst())
    assert worker.largest_hop > 1 and worker.requests == len(seeds) + 1  # they really were served together
    for seed in seeds:
        np.testing.assert_array_equal(results[seed][0].permute(1, 2, 0).numpy(), face_for_seed(G, cfg, seed))
    torch.testing.assert_close(results[-1], to_uint8(generate(G, truncated_latent(16, cfg, 0.0, 99))), rtol=0, atol=0)


def old_format_bytes(model) -> bytes:
    """The generator as an old-format exported .pt (a torch.save'd dict), as bytes."""
    G, cfg = model
    buffer = io.BytesIO()
    torch.save({"config": cfg.to_dict(), "G": G.state_dict(), "step": 1}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint \x00\xff" * 100, "truncated"])
def test_startup_refuses_a_corrupt_generator_in_one_line(tmp_path, capsys, content, model):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(old_format_bytes(model)[:5000] if content == "truncated" else content)
    with pytest.raises(ValueError, match="bad.pt"):
        serve.create_app(bad)
    parser = serve.argparse.ArgumentParser()
    serve.add_arguments(parser)
    assert serve.run_from_args(parser.parse_args(["--generator", str(bad), "--port", "1"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.pt" in err


def test_startup_refuses_a_missing_generator_in_one_line(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        serve.create_app(tmp_path / "missing.pt")
    parser = serve.argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(["--generator", str(tmp_path / "missing.pt")])
    assert serve.run_from_args(args) == 2
    assert capsys.readouterr().err.count("\n") == 1
    args.debug = True  # the CLI's --debug: the traceback instead
    with pytest.raises(FileNotFoundError):
        serve.run_from_args(args)


def test_startup_refuses_a_folder_that_is_not_a_model_in_one_line(tmp_path, capsys):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "config.json").write_bytes((GENERATOR / "config.json").read_bytes())
    with pytest.raises(ValueError, match="not-a-model is not a model folder: model.safetensors missing"):
        serve.create_app(folder)
    parser = serve.argparse.ArgumentParser()
    serve.add_arguments(parser)
    assert serve.run_from_args(parser.parse_args(["--generator", str(folder)])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors" in err


def test_an_old_format_generator_file_still_serves(tmp_path, model):
    old = tmp_path / "old.pt"
    old.write_bytes(old_format_bytes(model))
    with TestClient(serve.create_app(old)) as c:
        np.testing.assert_array_equal(decode(c.get("/face.png?seed=4")), face_for_seed(*model, 4))
        assert c.get("/health").json()["models"] == ["old"]


def test_without_a_generator_every_shipped_model_is_served_best_first(model):
    from facegan.export import shipped_models

    names = [p.name for p in shipped_models()]
    assert names == ["fast64-r1", "hinge_sn64", "fast64", "dcgan64-ema", "fast32", "small32-ema"]  # 64px, FID-1000
    with TestClient(serve.create_app()) as c:
        h = c.get("/health").json()
        assert h["models"] == names and (h["name"], h["resolution"]) == ("fast64-r1", 64)
        assert h["metrics"]["fid_1k"] == 39.6
        assert decode(c.get("/face.png?seed=3")).shape == (64, 64, 3)  # the default is the best
        np.testing.assert_array_equal(decode(c.get("/face.png?seed=3&model=small32-ema")), face_for_seed(*model, 3))
        assert decode(c.get("/grid.png?n=2&model=fast32")).shape == (TILE + 2, 2 * TILE + 2, 3)
        page = c.get("/").text
        assert '<select id="model">' in page and "encodeURIComponent" in page
        assert [page.index(f'value="{n}"') for n in names] == sorted(page.index(f'value="{n}"') for n in names)
        before = c.app.state.worker.requests
        for query in ("/face.png?model=nope", "/grid.png?model=small32", "/health?model=../etc"):
            r = c.get(query)
            assert r.status_code == 404 and all(n in r.json()["detail"] for n in names), query
        assert c.app.state.worker.requests == before


def server_command(*args: str) -> list[str]:
    """What a user types: ``python helpers.py serve ...``."""
    return [sys.executable, "helpers.py", "serve", *args]


@pytest.mark.slow
def test_real_server_process_serves_and_stops(model, tmp_path):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(server_command("--port", str(port), "--generator", str(GENERATOR)), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                r = httpx.get(f"{url}/face.png?seed=11", timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not start within 60 s"
                time.sleep(0.2)
        np.testing.assert_array_equal(decode(r), face_for_seed(*model, 11))
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/" in out
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)

    missing = subprocess.run(server_command("--generator", str(tmp_path / "missing.pt")), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "missing.pt" in missing.stderr, missing.stderr


@pytest.fixture
def live_server():
    """The app on a loopback port, served by uvicorn in a thread of this process."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(serve.create_app(GENERATOR), host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(10)


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.mark.slow
def test_gallery_in_a_browser(live_server, tmp_path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    loaded = "const i = document.getElementById('face'); return i.complete && i.naturalWidth;"
    pixels = ("const c = document.createElement('canvas'); c.width = c.height = 256;"
              "const x = c.getContext('2d'); x.drawImage(document.getElementById('face'), 0, 0);"
              "return x.getImageData(0, 0, 256, 256).data.reduce((a, b) => a + b, 0);")
    try:
        driver.get(live_server + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.execute_script(loaded) == 256)
        before, before_pixels = driver.find_element("id", "face").get_attribute("src"), driver.execute_script(pixels)
        driver.execute_script("const s = document.getElementById('seed'); s.value = 123;"
                              "s.dispatchEvent(new Event('input', {bubbles: true}));")
        wait.until(lambda d: "seed=123&" in d.find_element("id", "face").get_attribute("src"))
        wait.until(lambda d: d.execute_script(loaded) == 256)  # the new face arrived and decoded
        after = driver.find_element("id", "face").get_attribute("src")
        assert after != before
        assert driver.execute_script(pixels) not in (0, before_pixels)  # a different face is on screen
        assert driver.find_element("id", "seed-number").get_attribute("value") == "123"
        assert "seed=123&" in driver.find_element("id", "face-link").get_attribute("href")
    finally:
        driver.quit()
