"""Hand-made run folders for report tests: a manifest.json valid against the bundled schema,
and real PNG files in images/, laid out the way a run writes them."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
from PIL import Image, ImageDraw

from seedflow.models import load_bundled_schema

MODEL = "bytedance/seedream-4-0/sequential"


def _image(path: Path, color: tuple[int, int, int], label: str, size: tuple[int, int]) -> None:
    image = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(image)
    draw.ellipse([size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4],
                 fill=tuple(255 - c for c in color))
    draw.text((10, 10), label, fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "PNG")


def _job_id(model: str, inputs: Mapping[str, Any]) -> str:
    canonical = json.dumps({"model": model, "input": inputs}, sort_keys=True, separators=(",", ":"))
    return "j" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def make_run(
    root: Path,
    *,
    axes: Mapping[str, Sequence[Any]] | None = None,
    images_per_job: int = 2,
    states: Mapping[int, str] | None = None,
    size: tuple[int, int] = (96, 64),
    pipeline_path: str | None = "pipelines/study.yaml",
    ended: bool = True,
    run_id: str = "20261125T170000Z-3f9a",
    name: str = "study",
) -> Path:
    """Write a run folder with one job per combination of ``axes`` and return its path.

    ``states`` maps a job index to the state it should have (default: completed); a partial
    job gets one image fewer than requested, failed/cancelled/pending jobs get none.
    """
    axes = dict(axes if axes is not None else
                {"style": ["oil", "watercolor", "pixel art"], "subject": ["fox", "owl"],
                 "seed": [1, 2]})
    states = dict(states or {})
    run_dir = root / "runs" / name / run_id
    run_dir.mkdir(parents=True)
    names = list(axes)
    jobs: list[dict[str, Any]] = []
    by_state: dict[str, int] = {}
    images = 0
    for index, combo in enumerate(itertools.product(*(axes[n] for n in names))):
        variables = dict(zip(names, combo))
        seed = int(variables.get("seed", 42))
        prompt = (f"A series of {images_per_job} images: a {variables.get('subject', 'cat')} "
                  f"in {variables.get('style', 'plain')} style")
        inputs = {"text": prompt, "seed": seed, "image_size": "1024x1024",
                  "sequential_image_generation_options": {"max_images": images_per_job}}
        state = states.get(index, "completed")
        job_id = _job_id(MODEL, inputs)
        job_name = "-".join(str(v) for v in combo).replace(" ", "_") or f"job{index}"
        count = {"completed": images_per_job, "reused": images_per_job,
                 "partial": max(images_per_job - 1, 0)}.get(state, 0)
        outputs = []
        for i in range(count):
            rel = f"images/{job_name}/{i:02d}.png"
            color = (40 + 60 * (index % 4), 60 + 40 * (i % 4), 200 - 30 * (index % 5))
            _image(run_dir / rel, color, f"{job_name} #{i + 1}", size)
            data = (run_dir / rel).read_bytes()
            outputs.append({"index": i, "url": f"http://127.0.0.1:9/files/{job_id}/{i}.png",
                            "path": rel, "sha256": hashlib.sha256(data).hexdigest(),
                            "bytes": len(data), "width": size[0], "height": size[1]})
        images += count
        by_state[state] = by_state.get(state, 0) + 1
        error = {"failed": "the service reported: content policy violation",
                 "cancelled": "cancelled by the user",
                 "partial": f"{count} of {images_per_job} images came back",
                 "unknown": "submit answer lost: may have been billed"}.get(state)
        finished = state in ("completed", "partial", "failed", "cancelled", "reused")
        jobs.append({
            "id": job_id, "name": job_name, "index": index, "group": None, "model": MODEL,
            "variables": variables, "input": inputs, "seed": seed,
            "images_requested": images_per_job,
            "images_received": count if finished else None,
            "request_id": None if state in ("pending", "unknown") else f"req-{index:04d}",
            "state": state, "attempts": 0 if state == "pending" else 1,
            "submitted_at": None if state == "pending" else "2026-11-25T17:00:01Z",
            "started_at": None,
            "completed_at": "2026-11-25T17:00:09Z" if finished else None,
            "error": error, "outputs": outputs,
        })
    manifest = {
        "manifest_version": 1,
        "run_id": run_id,
        "seedflow_version": "0.1.0",
        "pipeline": {"path": pipeline_path, "name": name, "sha256": "0" * 64, "git_commit": None},
        "model": MODEL,
        "base_url": "http://127.0.0.1:9",
        "offline": True,
        "started_at": "2026-11-25T17:00:00Z",
        "ended_at": "2026-11-25T17:02:05Z" if ended else None,
        "status": ("finished_with_errors" if set(by_state) - {"completed", "reused"}
                   else "completed") if ended else "running",
        "totals": {"jobs": len(jobs), "by_state": by_state, "images": images,
                   "images_requested": images_per_job * len(jobs),
                   "estimated_cost": round(0.027 * images_per_job * len(jobs), 4),
                   "currency": "USD"},
        "axes": {k: list(v) for k, v in axes.items() if len(v) > 1 or k != "seed"},
        "jobs": jobs,
    }
    jsonschema.validate(manifest, load_bundled_schema("manifest.schema.json"))
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return run_dir
