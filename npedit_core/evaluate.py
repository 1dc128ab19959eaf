"""GEdit-Bench evaluation with a local VLM judge, VIEScore-style (method.md section 5).

Benchmark (read from a local copy, never downloaded): GEdit-Bench (stepfun-ai/GEdit-Bench on the
Hugging Face hub, 1212 rows = 606 English + 606 Chinese, 11 task types). Each row has
  key                   sample id (str)
  task_type             background_change | color_alter | material_alter | motion_change | ps_human |
                        style_change | subject-add | subject-remove | subject-replace | text_change | tone_transfer
  instruction           the edit instruction
  instruction_language  "en" | "cn"
  input_image           the (resized) source image; input_image_raw: the original (unused here)
Accepted local copies: the hub's parquet shards (a folder searched recursively for *.parquet, images
as {"bytes", "path"} structs; needs pyarrow), or a JSONL/JSON file with the same fields where
`input_image` is an image path relative to that file. English rows only by default (the paper's 606).

Scores (0-10), an approximation of VIEScore with GPT-4o using our yes/no judges. VIEScore asks the
judge for two SC sub-scores (edit success, no over-editing) and takes their minimum, and two PQ
sub-scores (naturalness, no artifacts), again the minimum; O = sqrt(SC * PQ) per sample. Our judges
expose the logits of "Yes" and "No", so each sub-score is 10 * P(Yes) (two-token softmax, `Judge.p_yes`):
  SC = 10 * min(P(edit carried out | source, edited), P(nothing else changed | source, edited))
  PQ = 10 * min(P(looks natural | edited), P(free of artifacts | edited))
  O  = sqrt(SC * PQ)
Per task type and overall (mean over samples; also the macro mean over task types), written as JSON
and markdown. Numbers from a different, smaller judge are not comparable with the paper's GPT-4o
numbers; compare editors scored by the same judge.

Editors: ours (a backbone plus optional exported weights, `NPEditEditor`) and others through their
diffusers pipelines (`PipelineEditor`, one small adapter per pipeline class: FLUX.1-Kontext,
Qwen-Image-Edit(-Plus), FLUX.2 / FLUX.2-klein), all at the same step count. Edited images go to
`<out>/<editor>/fullset/<task_type>/<language>/<key>.png` (GEdit-Bench's own layout), scores to
`<out>/<editor>/scores.jsonl` (resumable: scored samples are skipped on a re-run).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from PIL import Image

from .errors import NPEditError
from .judges.base import Judge, Question

GEDIT_TASK_TYPES = (
    "background_change", "color_alter", "material_alter", "motion_change", "ps_human", "style_change",
    "subject-add", "subject-remove", "subject-replace", "text_change", "tone_transfer",
)
REQUIRED_FIELDS = ("key", "task_type", "instruction", "instruction_language", "input_image")

SC_QUESTIONS = (
    "The first image is the original and the second image is the result of an edit. Edit instruction: "
    "\"{instruction}\". Was this instruction carried out in the second image? If the two images are identical, "
    "the edit was not made and the answer is No. Answer Yes or No.",
    "The first image is the original and the second image is the result of an edit. Edit instruction: "
    "\"{instruction}\". Apart from what the instruction asks to change, is the second image the same as the first "
    "(no over-editing)? Answer Yes or No.",
)
PQ_QUESTIONS = (
    "Does this image look natural and realistic, with consistent lighting, perspective and proportions? Answer Yes or No.",
    "Is this image free of visible artifacts such as distortions, blur, noise, watermarks or malformed parts? Answer Yes or No.",
)


@dataclass
class BenchSample:
    key: str
    task_type: str
    instruction: str
    language: str
    image: Image.Image  # RGB
    row: int


# --- reading the benchmark ------------------------------------------------------------------------


def read_gedit_bench(path: str | Path, language: str | None = "en", task_types: list[str] | None = None,
                     limit: int | None = None) -> list[BenchSample]:
    """GEdit-Bench rows from a local copy (parquet folder/file, or JSONL/JSON); errors name the file and row."""
    path = Path(path)
    if not path.exists():
        raise NPEditError(f"GEdit-Bench: {path} not found")
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise NPEditError(f"GEdit-Bench: no *.parquet files under {path} (or pass a metadata .jsonl)")
        rows = [(f, i, r) for f in files for i, r in enumerate(_parquet_rows(f), 1)]
    elif path.suffix.lower() == ".parquet":
        rows = [(path, i, r) for i, r in enumerate(_parquet_rows(path), 1)]
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = [(path, i, r) for i, r in _json_rows(path)]
    else:
        raise NPEditError(f"GEdit-Bench: {path}: expected a folder of parquet files, a .parquet, .jsonl or .json file")
    if task_types:
        unknown = sorted(set(task_types) - set(GEDIT_TASK_TYPES))
        if unknown:
            raise NPEditError(f"task types {unknown} are not GEdit-Bench's ({', '.join(GEDIT_TASK_TYPES)})")
    samples = []
    for file, n, row in rows:
        where = f"{file} row {n}"
        if not isinstance(row, dict):
            raise NPEditError(f"{where}: not a JSON object")
        missing = [k for k in REQUIRED_FIELDS if row.get(k) in (None, "")]
        if missing:
            raise NPEditError(f"{where}: missing {', '.join(missing)} (GEdit-Bench fields: {', '.join(REQUIRED_FIELDS)})")
        if language and row["instruction_language"] != language:
            continue
        if row["task_type"] not in GEDIT_TASK_TYPES:
            raise NPEditError(f"{where}: task_type {row['task_type']!r} is not one of {', '.join(GEDIT_TASK_TYPES)}")
        if task_types and row["task_type"] not in task_types:
            continue
        image = _decode_image(row["input_image"], file.parent, where)
        samples.append(BenchSample(str(row["key"]), row["task_type"], str(row["instruction"]),
                                   row["instruction_language"], image, n))
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        raise NPEditError(f"GEdit-Bench: no rows in {path} for language {language!r}")
    return samples


def _parquet_rows(file: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise NPEditError(f"reading {file} needs pyarrow (pip install pyarrow), or pass a metadata .jsonl") from None
    try:
        return pq.read_table(file).to_pylist()
    except Exception as exc:
        raise NPEditError(f"{file}: not a readable parquet file ({exc})") from None


def _json_rows(file: Path):
    text = file.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            yield from enumerate(json.loads(text), 1)
        except json.JSONDecodeError as exc:
            raise NPEditError(f"{file}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
        return
    n = 0
    for line in text.splitlines():
        if line.strip():
            n += 1
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                raise NPEditError(f"{file} row {n}: malformed JSON ({exc.msg})") from None


def _decode_image(value, root: Path, where: str) -> Image.Image:
    """An image cell: {"bytes", "path"} (hub parquet), raw bytes, or a path relative to the metadata file."""
    try:
        if isinstance(value, dict):
            if value.get("bytes"):
                return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
            value = value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return Image.open(io.BytesIO(value)).convert("RGB")
        if isinstance(value, str):
            p = Path(value)
            p = p if p.is_absolute() else root / p
            if not p.is_file():
                raise NPEditError(f"{where}: input_image: file not found: {p}")
            with Image.open(p) as im:
                return im.convert("RGB")
    except NPEditError:
        raise
    except Exception as exc:
        raise NPEditError(f"{where}: input_image: cannot decode ({type(exc).__name__}: {exc})") from None
    raise NPEditError(f"{where}: input_image: expected image bytes or a path, got {type(value).__name__}")


# --- editors ----------------------------------------------------------------------------------------


class Editor(Protocol):
    name: str
    steps: int

    def edit(self, image: Image.Image, instruction: str, seed: int) -> Image.Image: ...


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def to_pil(x: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> PIL RGB."""
    arr = (x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr)


class NPEditEditor:
    """Our editor: a backbone (with exported weights already loaded) run by `sampler.edit_images`."""

    def __init__(self, backbone, name: str = "npedit", steps: int = 4, shift: float = 6.0, eta: float = 1.0,
                 max_area: int | None = 1024 * 1024, step: str | None = None):
        self.backbone, self.name, self.steps, self.shift, self.eta, self.max_area = backbone, name, steps, shift, eta, max_area
        self.step = step

    def edit(self, image: Image.Image, instruction: str, seed: int) -> Image.Image:
        from .sampler import edit_images

        out = edit_images(self.backbone, to_tensor(image)[None], instruction, seeds=seed, steps=self.steps,
                          shift=self.shift, eta=self.eta, max_area=self.max_area, step=self.step)
        return to_pil(out[0])


#: Per pipeline class: extra call arguments (the model cards' defaults) and whether `image` is a list.
PIPELINE_ADAPTERS: dict[str, dict] = {
    "FluxKontextPipeline": {"kwargs": {"guidance_scale": 2.5}, "image_list": False},
    "QwenImageEditPipeline": {"kwargs": {"true_cfg_scale": 4.0, "negative_prompt": " "}, "image_list": False},
    "QwenImageEditPlusPipeline": {"kwargs": {"true_cfg_scale": 4.0, "negative_prompt": " "}, "image_list": True},
    "Flux2Pipeline": {"kwargs": {"guidance_scale": 4.0}, "image_list": True},
    "Flux2KleinPipeline": {"kwargs": {}, "image_list": False},
}


class PipelineEditor:
    """Another editor through its diffusers pipeline, at `steps` inference steps.

    The input runs at its own size rounded to `multiple` pixels (scaled down to `max_area`), and the
    result is resized back to the input's size, as for our editor.
    """

    def __init__(self, pipe, name: str | None = None, steps: int = 4, multiple: int = 16,
                 max_area: int | None = 1024 * 1024, **call_kwargs):
        cls = type(pipe).__name__
        if cls not in PIPELINE_ADAPTERS:
            raise NPEditError(f"pipeline {cls}: no adapter; supported: {', '.join(PIPELINE_ADAPTERS)}")
        self.pipe, self.name, self.steps, self.multiple, self.max_area = pipe, name or cls, steps, multiple, max_area
        self.adapter = PIPELINE_ADAPTERS[cls]
        self.call_kwargs = {**self.adapter["kwargs"], **call_kwargs}

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: str = "bfloat16", device: str = "cpu", **kwargs) -> "PipelineEditor":
        """Load a pipeline from a local diffusers folder (model_index.json names its class); never downloads."""
        import diffusers

        folder = Path(folder)
        index = folder / "model_index.json"
        if not index.is_file():
            raise NPEditError(f"pipeline: {folder} is not a diffusers folder (no model_index.json)")
        class_name = json.loads(index.read_text()).get("_class_name")
        if class_name not in PIPELINE_ADAPTERS:
            raise NPEditError(f"pipeline: {folder} holds a {class_name}; supported: {', '.join(PIPELINE_ADAPTERS)}")
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        try:
            pipe = getattr(diffusers, class_name).from_pretrained(folder, dtype=torch_dtype, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise NPEditError(f"pipeline: cannot load {folder} ({exc})") from None
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        kwargs.setdefault("name", folder.name)
        return cls(pipe, **kwargs)

    def edit(self, image: Image.Image, instruction: str, seed: int) -> Image.Image:
        from .images import working_size

        height, width = working_size(image.height, image.width, self.multiple, self.max_area)
        work = image.resize((width, height), Image.LANCZOS)
        generator = torch.Generator(device="cpu").manual_seed(seed)  # diffusers moves CPU-drawn noise to the device
        out = self.pipe(image=[work] if self.adapter["image_list"] else work, prompt=instruction,
                        num_inference_steps=self.steps, height=height, width=width, generator=generator,
                        output_type="pil", **self.call_kwargs).images[0]
        return out.resize(image.size, Image.LANCZOS) if out.size != image.size else out


# --- scoring ----------------------------------------------------------------------------------------


@torch.no_grad()
def viescore(judge: Judge, source: Image.Image, edited: Image.Image, instruction: str) -> dict[str, float]:
    """SC, PQ, O (0-10) and the four sub-scores of one sample (see the module docstring)."""
    src, out = to_tensor(source), to_tensor(edited)
    questions = [Question(q.format(instruction=instruction), [src, out]) for q in SC_QUESTIONS]
    questions += [Question(q, [out]) for q in PQ_QUESTIONS]
    p = judge.p_yes(questions).tolist()
    sc, pq = 10 * min(p[0], p[1]), 10 * min(p[2], p[3])
    return {"SC": sc, "PQ": pq, "O": math.sqrt(sc * pq), "sc_edit": 10 * p[0], "sc_keep": 10 * p[1],
            "pq_natural": 10 * p[2], "pq_artifacts": 10 * p[3]}


def summarise(scores: list[dict]) -> dict:
    """Mean SC / PQ / O per task type and overall (mean over samples, and the macro mean over task types)."""
    by_type: dict[str, list[dict]] = {}
    for s in scores:
        by_type.setdefault(s["task_type"], []).append(s)

    def mean(rows, k):
        return float(sum(r[k] for r in rows) / len(rows))

    per_type = {t: {k: mean(rows, k) for k in ("SC", "PQ", "O")} | {"n": len(rows)} for t, rows in sorted(by_type.items())}
    overall = {k: mean(scores, k) for k in ("SC", "PQ", "O")} | {"n": len(scores)}
    macro = {k: float(sum(v[k] for v in per_type.values()) / len(per_type)) for k in ("SC", "PQ", "O")}
    return {"per_task_type": per_type, "overall": overall, "macro": macro}


def results_markdown(results: dict[str, dict]) -> str:
    """One table per editor side by side: rows = task types + overall, columns = SC / PQ / O per editor."""
    names = list(results)
    types = sorted({t for r in results.values() for t in r["summary"]["per_task_type"]})
    head = "| task type | " + " | ".join(f"{n} SC | {n} PQ | {n} O" for n in names) + " |"
    sep = "|---|" + "---|" * (3 * len(names))
    lines = [head, sep]
    for t in types + ["overall", "macro"]:
        cells = []
        for n in names:
            s = results[n]["summary"]
            v = s["overall"] if t == "overall" else s["macro"] if t == "macro" else s["per_task_type"].get(t)
            cells += ["-"] * 3 if v is None else [f"{v['SC']:.2f}", f"{v['PQ']:.2f}", f"{v['O']:.2f}"]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    meta = ", ".join(f"{n}: {results[n]['steps']} steps, {results[n]['summary']['overall']['n']} samples" for n in names)
    return ("# GEdit-Bench (VIEScore-style, local judge)\n\n" + meta + "\n\n" + "\n".join(lines) + "\n\n"
            "SC = 10 min(P(edit done), P(rest unchanged)); PQ = 10 min(P(natural), P(no artifacts)); O = sqrt(SC PQ). "
            "Scores from a local yes/no judge approximate VIEScore with GPT-4o; compare editors under the same judge.\n")


def evaluate(samples: list[BenchSample], editors: list[Editor], judge: Judge, out_dir: str | Path, seed: int = 0,
             progress: Callable[[str, int, int], None] | None = None) -> dict[str, dict]:
    """Edit every sample with every editor, score it, write images, scores.jsonl, results.json and results.md.

    Resumable per editor: samples already in `<out>/<editor>/scores.jsonl` are not edited again.
    Returns {editor name: {"steps", "summary", "scores"}}.
    """
    out_dir = Path(out_dir)
    names = [e.name for e in editors]
    if len(set(names)) != len(names):
        raise NPEditError(f"editors: names must differ, got {names}")
    results = {}
    for editor in editors:
        folder = out_dir / editor.name
        folder.mkdir(parents=True, exist_ok=True)
        score_file = folder / "scores.jsonl"
        scores = {}
        if score_file.is_file():
            for line in score_file.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    scores[row["key"]] = row
                except (json.JSONDecodeError, KeyError):
                    continue  # a torn last line: that sample is redone
        for i, s in enumerate(samples):
            if s.key in scores:
                continue
            edited = editor.edit(s.image, s.instruction, seed + i)
            image_path = folder / "fullset" / s.task_type / s.language / f"{s.key}.png"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            edited.save(image_path)
            row = {"key": s.key, "task_type": s.task_type, "instruction": s.instruction,
                   "image": str(image_path.relative_to(folder)), **viescore(judge, s.image, edited, s.instruction)}
            scores[s.key] = row
            with score_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if progress is not None:
                progress(editor.name, i + 1, len(samples))
        rows = [scores[s.key] for s in samples if s.key in scores]
        results[editor.name] = {"steps": editor.steps, "summary": summarise(rows), "scores": rows}
        (folder / "results.json").write_text(json.dumps({"steps": editor.steps, **summarise(rows)}, indent=2))
        (folder / "results.md").write_text(results_markdown({editor.name: results[editor.name]}))
    (out_dir / "results.json").write_text(json.dumps({n: {"steps": r["steps"], **r["summary"]} for n, r in results.items()}, indent=2))
    (out_dir / "results.md").write_text(results_markdown(results))
    return results
