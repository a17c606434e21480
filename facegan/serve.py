"""An HTTP API and gallery page for trained generators: faces by seed, grids, interpolations.

    python -m facegan serve [--generator assets/models/fast32 | runs/small32/checkpoint.pt] [--port 8000]

GET /face.png?seed=S&truncation=T&size=P, /grid.png?seed=S&n=N&truncation=T,
/interpolate.png?a=S1&b=S2&steps=K&truncation=T, /health, / (the gallery), /docs (OpenAPI).
Without --generator every shipped model folder (assets/models/) is served, best first (largest
resolution, then lowest FID-1000); each request picks one with ``&model=NAME`` (the folder name;
default the first), and the gallery has a selector.

* A seed names a face: /face.png is pixel-identical to ``sampling.face_for_seed`` (the notebook's
  explorer), a grid is the notebook's ``truncated_latent(n, ...)`` batch, a strip is ``interpolate_faces``.
* Every parameter is bounded by one constant below, checked by FastAPI before any work, so bad input
  is a 422 naming the field and costs nothing; a model name not served is a 404 listing the names. No
  parameter names a file: the generators are fixed at start-up, and a missing or invalid one stops
  start-up with a one-line error.
* Each G runs off the event loop in its own worker fed by a queue: the requests that arrive while G is busy
  are all taken in the next thread hop, and G never runs in two threads at once. Each request still
  gets its own forward pass on exactly its own latents: stacking several requests' latents into one
  batch changed 79 of 3,000 faces by one grey level on a CPU (matrix kernels round differently per
  batch size), which would break "same seed, same face" and bought no measurable throughput.

FastAPI, uvicorn and PIL are imported where used, so the other commands never pay for them.
"""
import argparse
import asyncio
import contextlib
import html
import io
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import torch
import torch.nn as nn

from .config import Config
from .device import pick_device
from .export import MODELS_DIR, describe, generator_facts, load_generator, shipped_models
from .plots import image_grid
from .sampling import generate, slerp, to_uint8, truncated_latent

if TYPE_CHECKING:
    from fastapi import FastAPI

# The only limits on what a client may ask for (FastAPI enforces them; the page and /health show them).
MAX_SEED = 2**31 - 1        # the largest value of a 32-bit signed int: safe in JavaScript and in torch
MAX_TRUNCATION = 4.0        # beyond 4 sigma truncation changes nothing visible
MAX_N = 64                  # faces in one grid
MIN_STEPS, MAX_STEPS = 2, 16  # faces in one interpolation strip (2 = just the two ends)
MIN_SIZE, MAX_SIZE = 8, 512   # side of an upscaled /face.png, in pixels
GRID_COLUMNS = 8            # as in the notebook's grids
MAX_PENDING = 256           # requests waiting for G; beyond this the server answers 503 at once
MAX_REQUESTS_PER_HOP = 32   # requests taken per worker thread hop (bounds one hop's time)


class Busy(Exception):
    """The queue is full: shed load now rather than let latency grow without bound."""


class Worker:
    """Runs G for all requests in one background task, each G forward in a worker thread.

    The task takes every request waiting in the queue (up to MAX_REQUESTS_PER_HOP) and runs them
    in one ``asyncio.to_thread`` call; requests that arrive meanwhile wait for the next hop. The
    event loop stays free to parse requests and send responses while G computes.
    """

    def __init__(self, G: nn.Module) -> None:
        self.G = G
        self.device = next(G.parameters()).device
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.hops = self.requests = self.largest_hop = 0

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def faces(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """uint8 NCHW faces for each latent batch in turn, one G forward per tensor, concatenated."""
        if self.queue is None:
            raise RuntimeError("the worker is not running (use the app inside its lifespan)")
        if self.queue.qsize() >= MAX_PENDING:
            raise Busy()
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((latents, future))
        return await future

    async def _loop(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            while len(jobs) < MAX_REQUESTS_PER_HOP and not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            jobs = [job for job in jobs if not job[1].done()]  # clients that gave up cost nothing
            if not jobs:
                continue
            self.hops, self.requests = self.hops + 1, self.requests + len(jobs)
            self.largest_hop = max(self.largest_hop, len(jobs))
            try:
                results = await asyncio.to_thread(self._run, [latents for latents, _ in jobs])
            except Exception as e:  # noqa: BLE001 -- the clients get the error, the worker lives on
                results = [e] * len(jobs)
            for (_, future), result in zip(jobs, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _run(self, jobs: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        return [torch.cat([to_uint8(generate(self.G, z.to(self.device))) for z in latents]) for latents in jobs]


def png(image: np.ndarray, size: int | None = None) -> bytes:
    """An HxWx3 uint8 array as PNG bytes, optionally nearest-neighbour scaled to size x size
    (nearest keeps the generator's pixels sharp instead of inventing blur)."""
    from PIL import Image

    picture = Image.fromarray(image)
    if size is not None:
        picture = picture.resize((size, size), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _load(path: Path, device: str) -> tuple[nn.Module, Config, dict]:
    """G, its Config and what is recorded about it (step, metrics), or a one-line error naming the file."""
    try:
        G, cfg = load_generator(path, pick_device(device))
        facts = generator_facts(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"cannot serve: {_one_line(e)}") from e
    except ValueError as e:  # CheckpointError: unreadable, corrupt, unsafe or not a generator
        raise ValueError(f"cannot serve: {_one_line(e)}") from e
    except (RuntimeError, AssertionError) as e:  # a device torch cannot use here
        raise ValueError(f"cannot serve {path} on device {device!r}: {_one_line(e)}") from e
    return G, cfg, facts


@dataclass
class Served:
    """One generator the server offers: ``?model=NAME`` picks it."""

    name: str
    path: Path
    cfg: Config
    facts: dict
    worker: Worker

    def info(self) -> dict:
        """/health's description of it, with its worker's hops."""
        w = self.worker
        return {"name": self.name, "generator": str(self.path.resolve()), "resolution": self.cfg.image_size,
                "preset": self.cfg.preset, "z_size": self.cfg.z_size, "step": self.facts.get("step"),
                "metrics": self.facts.get("metrics", {}), "device": str(w.device),
                "worker": {"hops": w.hops, "requests": w.requests, "largest_hop": w.largest_hop}}


def load_models(generator_path: str | Path | None = None, device: str = "cpu") -> dict[str, Served]:
    """The generator given, or every shipped model folder best first, by name (a folder's name, a file's stem)."""
    paths = [Path(generator_path)] if generator_path is not None else shipped_models()
    if not paths:
        raise FileNotFoundError(f"cannot serve: no model folders in {MODELS_DIR}; pass --generator")
    models = {}
    for path in paths:
        G, cfg, facts = _load(path, device)
        name = path.name if path.is_dir() else path.stem
        models[name] = Served(name, path, cfg, facts, Worker(G))
    return models


def create_app(generator_path: str | Path | None = None, device: str = "cpu") -> "FastAPI":
    """The app for one generator (default: every shipped model folder), loaded now, so that a bad file
    fails here and not on a request."""
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import HTMLResponse, Response

    models = load_models(generator_path, device)
    default = next(iter(models.values()))
    app = FastAPI(title="facegan", lifespan=_lifespan(models), description="Faces from " + "; ".join(
        f"{m.name} ({m.cfg.image_size}px, preset {m.cfg.preset})" for m in models.values()) + ".")
    app.state.worker, app.state.models = default.worker, models

    Seed = Annotated[int, Query(ge=0, le=MAX_SEED, description="names the latent vector")]
    Truncation = Annotated[float, Query(ge=0.0, le=MAX_TRUNCATION,
                                        description="resample |z| > T: smaller = more typical (0 = off)")]
    Model = Annotated[str | None, Query(max_length=200, description="the generator: a name /health lists "
                                        "(default: the first, the best)")]
    png_response = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}

    def pick(model: str | None) -> Served:
        if model is None:
            return default
        if model not in models:
            raise HTTPException(404, f"no model named {model!r}; this server offers: {', '.join(models)}")
        return models[model]

    async def faces(m: Served, latents: list[torch.Tensor]) -> torch.Tensor:
        try:
            return await m.worker.faces(latents)
        except Busy:
            raise HTTPException(503, "busy: too many requests waiting, retry shortly") from None

    async def png_reply(image: np.ndarray, size: int | None = None) -> Response:
        return Response(await asyncio.to_thread(png, image, size), media_type="image/png")

    @app.get("/face.png", response_class=Response, responses=png_response)
    async def face(seed: Seed = 0, truncation: Truncation = 0.0,
                   size: Annotated[int | None, Query(ge=MIN_SIZE, le=MAX_SIZE,
                                                     description="upscale to P x P pixels (nearest)")] = None,
                   model: Model = None):
        """The face for one seed, as ``sampling.face_for_seed`` draws it."""
        m = pick(model)
        out = await faces(m, [truncated_latent(1, m.cfg, truncation, seed)])
        return await png_reply(out[0].permute(1, 2, 0).numpy(), size)

    @app.get("/grid.png", response_class=Response, responses=png_response)
    async def grid(seed: Seed = 0, n: Annotated[int, Query(ge=1, le=MAX_N)] = 16, truncation: Truncation = 0.0,
                   model: Model = None):
        """N faces from one seed's latent batch, 8 to a row, 2px white gaps."""
        m = pick(model)
        out = await faces(m, [truncated_latent(n, m.cfg, truncation, seed)])
        return await png_reply(image_grid(out, nrow=GRID_COLUMNS))

    @app.get("/interpolate.png", response_class=Response, responses=png_response)
    async def interpolate(a: Seed = 1, b: Seed = 2, steps: Annotated[int, Query(ge=MIN_STEPS, le=MAX_STEPS)] = 8,
                          truncation: Truncation = 0.0, model: Model = None):
        """A strip of K faces along the slerp path from seed a to seed b (``interpolate_faces``)."""
        m = pick(model)
        za, zb = truncated_latent(1, m.cfg, truncation, a), truncated_latent(1, m.cfg, truncation, b)
        out = await faces(m, [slerp(za, zb, i / (steps - 1)) for i in range(steps)])
        return await png_reply(image_grid(out, nrow=steps))

    @app.get("/health")
    async def health(model: Model = None) -> dict:
        """What is being served (the model asked for, default the first; every name in ``models``), the
        limits, and how many requests each hop of that model's worker has taken."""
        return {"status": "ok", **pick(model).info(), "models": list(models),
                "limits": {"max_seed": MAX_SEED, "max_truncation": MAX_TRUNCATION, "max_n": MAX_N,
                           "steps": [MIN_STEPS, MAX_STEPS], "size": [MIN_SIZE, MAX_SIZE]}}

    page = _page(models)

    @app.get("/", response_class=HTMLResponse)
    async def gallery() -> str:
        """The gallery page: sliders for seed and truncation, interpolation, links to the PNGs."""
        return page

    return app


def _lifespan(models: dict[str, Served]):
    """Start every model's worker with the app, stop them with it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: "FastAPI"):
        for m in models.values():
            m.worker.start()
        try:
            yield
        finally:
            for m in models.values():
                await m.worker.stop()

    return lifespan


def _page(models: dict[str, Served]) -> str:
    """The gallery page with the limits filled in and one selector option per model, best first."""
    def label(m: Served) -> str:
        return describe(m.path) if m.path.is_dir() else f"{m.name}: {m.cfg.image_size}px {m.cfg.preset}"

    options = "".join(f'<option value="{html.escape(m.name)}">{html.escape(label(m))}</option>'
                      for m in models.values())
    return (PAGE.replace("__MAX_SEED__", str(MAX_SEED)).replace("__MAX_TRUNCATION__", str(MAX_TRUNCATION))
            .replace("__MAX_STEPS__", str(MAX_STEPS)).replace("__MIN_STEPS__", str(MIN_STEPS))
            .replace("__MODEL_OPTIONS__", options))


def serve(generator: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000,
          device: str = "cpu") -> None:
    """Load the generator, or every shipped one (raising FileNotFoundError or ValueError, one line),
    and serve until Ctrl-C."""
    import uvicorn

    app = create_app(generator, device)
    if not _is_loopback(host):
        print(f"warning: listening on {host}: anyone who can reach it can use this server (no login)",
              file=sys.stderr)
    print(f"serving {', '.join(app.state.models)} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's options."""
    # Help texts name %(default)s themselves, so that ArgumentDefaultsHelpFormatter adds nothing.
    parser.add_argument("--generator", default=None,
                        help="a model folder, a checkpoint.pt or an exported .pt (default: every model folder "
                             "in assets/models, best first, chosen per request with ?model=NAME)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 127.0.0.1 is this machine only (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: %(default)s)")


def run_from_args(args: argparse.Namespace) -> int:
    """Serve; a generator that cannot be loaded is one line on stderr and exit status 2
    (the whole traceback with the CLI's ``--debug``)."""
    try:
        serve(args.generator, args.host, args.port, args.device)
    except (FileNotFoundError, ValueError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"facegan serve: {e}", file=sys.stderr)
        return 2
    return 0


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>facegan gallery</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>body { font-family: system-ui, sans-serif; margin: 1.5rem; } img { image-rendering: pixelated; }
#grid, #interp { zoom: 2; } label { display: inline-block; margin: .3rem 1rem .3rem 0; }</style></head>
<body>
<h1>facegan gallery</h1>
<p><label>Generator <select id="model">__MODEL_OPTIONS__</select></label>
 A seed names a face: the same seed always draws the same one.</p>
<section>
 <h2>One face</h2>
 <img id="face" width="256" height="256" alt="generated face"><br>
 <label>seed <input id="seed" type="range" min="0" max="999" value="0"></label>
 <input id="seed-number" type="number" min="0" max="__MAX_SEED__" value="0">
 <button id="random" type="button">random</button><br>
 <label>truncation <input id="truncation" type="range" min="0" max="__MAX_TRUNCATION__" step="0.1" value="0"></label>
 <span id="truncation-value">0 (off)</span> <small>smaller = more typical faces</small><br>
 <a id="face-link" href="#">face PNG</a> &middot; <a id="grid-link" href="#">grid PNG</a>
 <h3>16 faces from this seed's latent batch</h3>
 <img id="grid" alt="grid of generated faces">
</section>
<section>
 <h2>Interpolation</h2>
 <label>seed A <input id="seed-a" type="number" min="0" max="__MAX_SEED__" value="1"></label>
 <label>seed B <input id="seed-b" type="number" min="0" max="__MAX_SEED__" value="2"></label>
 <label>steps <input id="steps" type="range" min="__MIN_STEPS__" max="__MAX_STEPS__" value="8"></label>
 <span id="steps-value">8</span><br>
 <img id="interp" alt="interpolation strip"><br>
 <a id="interp-link" href="#">strip PNG</a>
</section>
<p><a href="/health">/health</a> &middot; <a href="/openapi.json">/openapi.json</a> &middot;
 <a href="/docs">/docs</a> (API reference; its page script comes from a CDN)</p>
<script>
const MAX_SEED = __MAX_SEED__;
const $ = (id) => document.getElementById(id);
function clampSeed(v) { v = Math.floor(Number(v)); return Number.isFinite(v) ? Math.min(Math.max(v, 0), MAX_SEED) : 0; }
function update() {
  const seed = clampSeed($("seed-number").value), t = $("truncation").value;
  const model = "&model=" + encodeURIComponent($("model").value);
  $("truncation-value").textContent = Number(t) === 0 ? "0 (off)" : t;
  $("steps-value").textContent = $("steps").value;
  const face = "/face.png?seed=" + seed + "&truncation=" + t + model;
  $("face").src = face + "&size=256";
  $("face-link").href = face;
  $("grid").src = $("grid-link").href = "/grid.png?n=16&seed=" + seed + "&truncation=" + t + model;
  $("interp").src = $("interp-link").href = "/interpolate.png?a=" + clampSeed($("seed-a").value) +
    "&b=" + clampSeed($("seed-b").value) + "&steps=" + $("steps").value + "&truncation=" + t + model;
}
function setSeed(v) { $("seed-number").value = clampSeed(v); $("seed").value = Math.min(clampSeed(v), 999); update(); }
$("seed").addEventListener("input", () => setSeed($("seed").value));
$("seed").addEventListener("change", () => setSeed($("seed").value));
$("seed-number").addEventListener("change", () => setSeed($("seed-number").value));
$("random").addEventListener("click", () => setSeed(Math.floor(Math.random() * (MAX_SEED + 1))));
for (const id of ["model", "truncation", "seed-a", "seed-b", "steps"]) {
  $(id).addEventListener("input", update);
  $(id).addEventListener("change", update);
}
update();
</script>
</body></html>
"""


if __name__ == "__main__":  # python -m facegan.serve: the same options as ``python -m facegan serve``
    cli = argparse.ArgumentParser(description="Serve a generator over HTTP.")
    add_arguments(cli)
    sys.exit(run_from_args(cli.parse_args()))
