"""Training manifests from a folder of photos (written by a local LLM/VLM) or from public edit datasets.

NP-Edit needs, per reference image, an instruction, its edit type, for removals the object name, the
edited caption c_x (DMD's teacher prompt) and the source caption c_y (warm-up) -- never a target image
(method.md sections 1 and 6). This module writes that manifest (`data/manifest.py` JSONL format) two ways:

1. `prepare_folder`: every image of a folder gets an edit category drawn from a configurable mix (the
   re-implementation's weights by default: remove 0.25, the other nine types 0.75/9 each), and a local
   model writes the fields through transformers' `generate`, in batches:
   - a VLM (`HFGenerator` with a processor) sees the image and writes all four fields;
   - a text-only LLM (`HFGenerator` with a tokenizer) cannot see it, so each image needs a source
     caption: a sidecar `<image>.txt`, or a `captions` JSONL of {"image", "caption"} rows; images
     without one are reported and skipped.
   The model answers with one JSON object; `parse_response` reads it (code fences and surrounding text
   are tolerated; a "key: value" listing is the fallback) and rejects anything incomplete.
   Optional VLM verification (`verify=True`) asks the VLM whether the instruction fits the image (for
   removals: whether the object is in it) and rejects the row when it answers No.
   Resumable: rows are appended to the output after every batch; running again reads the output (and
   its `.rejects.jsonl`) and continues with the images not yet done. A torn last line (a kill during a
   write) is dropped and redone. Deduplicated: byte-identical images are written once (the copies are
   reported), and an instruction repeated for the same image is rejected.
   Bad or unreadable images are never dropped silently: each is listed, by file name and reason, in the
   returned `PrepareReport`, in `<out>.rejects.jsonl` and in the log.
2. `convert_dataset`: the metadata of pico-banana-400k or GPT-Image-Edit-1.5M -> manifest rows, ignoring
   their target images (see the layout notes on each reader below).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

from PIL import Image

from .errors import NPEditError
from .judges.prompts import EDIT_TYPES

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

#: The re-implementation's edit-type sampling weights (method.md section 6): remove 0.25, the other nine
#: types share 0.75 equally. "other" is not drawn by default.
DEFAULT_MIX: dict[str, float] = {"remove": 0.25, **{t: 0.75 / 9 for t in EDIT_TYPES if t not in ("remove", "other")}}

#: What each category asks the model for (the wording is ours).
CATEGORY_HINTS: dict[str, str] = {
    "remove": "remove one clearly visible object",
    "add": "add a new object that fits the scene",
    "replace": "replace one visible object with a different object",
    "color": "change the colour of one visible object",
    "material": "change the material or texture of one visible object",
    "background": "change the background while keeping the main subject",
    "style": "render the whole image in a different artistic style",
    "action": "change the pose, action or expression of a person or animal",
    "text": "add or change a short text (a sign, a label, a caption) in the image",
    "shape": "change the shape or size of one visible object",
    "other": "make any other sensible, clearly visible edit",
}

FIELDS = ("instruction", "object", "edited_caption", "source_caption")

_SYSTEM = "You write training data for an image editing model. Answer with one JSON object and nothing else."
_VLM_TASK = (
    "Look at the image. Write one image edit of this kind: {hint}. Reply with a JSON object with the keys "
    "\"source_caption\" (one sentence describing the image), \"instruction\" (the edit instruction, imperative), "
    "\"object\" (the object the edit is about; for a removal the object to remove, else may be empty) and "
    "\"edited_caption\" (one sentence describing the image after the edit)."
)
_LLM_TASK = (
    "An image is described as: \"{caption}\". Write one image edit of this kind: {hint}. Reply with a JSON object "
    "with the keys \"instruction\" (the edit instruction, imperative), \"object\" (the object the edit is about; "
    "for a removal the object to remove, else may be empty) and \"edited_caption\" (one sentence describing the "
    "image after the edit)."
)
_VERIFY = {
    "remove": "Does this image contain {object}? Answer Yes or No.",
    "default": "Can the edit \"{instruction}\" be carried out sensibly on this image? Answer Yes or No.",
}


# --- generation backends ----------------------------------------------------------------------------


@dataclass
class GenRequest:
    """One prompt: chat text and optionally the image the model looks at (VLMs only)."""

    text: str
    image: Path | None = None
    system: str = _SYSTEM


class Generator(Protocol):
    """Anything that answers a batch of prompts with one string each."""

    sees_images: bool

    def generate(self, requests: list[GenRequest]) -> list[str]: ...


class HFGenerator:
    """transformers `generate` over a local causal LM (tokenizer) or VLM (processor); greedy, left-padded batches.

    model: a `*ForCausalLM` / `*ForConditionalGeneration`; tokenizer_or_processor: a tokenizer (text-only
    LLM) or a processor with an image processor (VLM: the image is shown in the chat).
    """

    def __init__(self, model, tokenizer_or_processor, max_new_tokens: int = 256, max_image_side: int = 768):
        self.model = model.eval()
        self.processor = tokenizer_or_processor
        self.sees_images = hasattr(tokenizer_or_processor, "image_processor")
        self.tokenizer = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
        self.max_new_tokens = max_new_tokens
        self.max_image_side = max_image_side

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "bfloat16", device: str = "cpu", **kwargs) -> "HFGenerator":
        """A local model folder; a folder with a preprocessor (image processor) config loads as a VLM. Never downloads."""
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise NPEditError(f"model: {path} is not a transformers model folder (no config.json)")
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        is_vlm = (path / "preprocessor_config.json").is_file()
        try:
            if is_vlm:
                model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
                proc = AutoProcessor.from_pretrained(path, local_files_only=True)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
                proc = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise NPEditError(f"model: cannot load {path} ({exc})") from None
        return cls(model.to(device), proc, **kwargs)

    def _messages(self, req: GenRequest) -> list[dict]:
        user = [{"type": "image"}, {"type": "text", "text": req.text}] if (req.image and self.sees_images) else req.text
        return [{"role": "system", "content": req.system}, {"role": "user", "content": user}]

    def generate(self, requests: list[GenRequest]) -> list[str]:
        import torch

        if not requests:
            return []
        self.tokenizer.padding_side = "left"  # generation appends on the right: every row must end at the prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        texts = [self.processor.apply_chat_template(self._messages(r), tokenize=False, add_generation_prompt=True)
                 for r in requests]
        if self.sees_images:
            images = [_load_rgb(r.image, self.max_image_side) for r in requests]
            inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
        else:
            inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]  # (B, new tokens): only the answer
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)


def _load_rgb(path: Path, max_side: int) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
    im.thumbnail((max_side, max_side))
    return im


# --- parsing the model's answer ---------------------------------------------------------------------


class ParseError(ValueError):
    """The model's answer does not hold the fields we need; the message says what is missing."""


def parse_response(text: str, edit_type: str, need_source_caption: bool = True) -> dict[str, str]:
    """The fields of one answer: a JSON object (fenced or embedded in text), else "key: value" lines.

    Raises ParseError naming what is missing (a removal needs `object`).
    """
    data = _json_object(text)
    if data is None:
        data = {}
        for line in text.splitlines():
            m = re.match(r"\s*[\"']?([A-Za-z_ ]+?)[\"']?\s*[:=]\s*(.+?)\s*,?\s*$", line)
            if m:
                data[m.group(1).strip().lower().replace(" ", "_")] = m.group(2).strip().strip("\"'")
        if not data:
            raise ParseError(f"no JSON object and no 'key: value' lines in the answer {_clip(text)!r}")
    row = {}
    for name in FIELDS:
        value = data.get(name, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise ParseError(f"{name}: expected text, got {type(value).__name__}")
        row[name] = " ".join(value.split())
    required = ["instruction", "edited_caption"] + (["source_caption"] if need_source_caption else [])
    if edit_type == "remove":
        required.append("object")
    missing = [n for n in required if not row[n]]
    if missing:
        raise ParseError(f"missing {', '.join(missing)} in the answer {_clip(text)!r}")
    return row


def _json_object(text: str) -> dict | None:
    text = re.sub(r"```(?:json)?", "", text)
    start = text.find("{")
    while start != -1:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            c = text[i]
            if in_str:
                esc = (c == "\\") and not esc
                if c == '"' and not esc:
                    in_str = False
                continue
            if c == '"':
                in_str = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    try:
                        data = json.loads(text[start:i + 1])
                    except json.JSONDecodeError:
                        break
                    return data if isinstance(data, dict) else None
        start = text.find("{", start + 1)
    return None


def _yes(text: str) -> bool | None:
    m = re.search(r"\b(yes|no)\b", text.lower())
    return None if m is None else m.group(1) == "yes"


def _clip(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[:n] + "..."


# --- category mix -------------------------------------------------------------------------------------


def parse_mix(spec: str | dict[str, float] | None) -> dict[str, float]:
    """'remove=0.5,add=0.25,color=0.25' (or a dict) -> normalised weights; None -> DEFAULT_MIX."""
    if spec is None or spec == "":
        mix = dict(DEFAULT_MIX)
    elif isinstance(spec, dict):
        mix = dict(spec)
    else:
        mix = {}
        for part in spec.split(","):
            if "=" not in part:
                raise NPEditError(f"category mix: {part!r} is not TYPE=WEIGHT (e.g. remove=0.25,add=0.1)")
            name, value = part.split("=", 1)
            try:
                mix[name.strip().lower()] = float(value)
            except ValueError:
                raise NPEditError(f"category mix: weight {value!r} of {name.strip()!r} is not a number") from None
    for name, weight in mix.items():
        if name not in EDIT_TYPES:
            raise NPEditError(f"category mix: unknown edit type {name!r}; expected some of {', '.join(EDIT_TYPES)}")
        if weight < 0:
            raise NPEditError(f"category mix: weight of {name!r} is negative ({weight})")
    total = sum(mix.values())
    if total <= 0:
        raise NPEditError("category mix: the weights sum to 0")
    return {k: v / total for k, v in mix.items() if v > 0}


def draw_category(key: str, mix: dict[str, float], seed: int = 0) -> str:
    """The category of sample `key`: a deterministic draw from `mix` (the same on every re-run)."""
    rng = random.Random(hashlib.sha256(f"{seed}:{key}".encode()).digest())
    names = sorted(mix)
    return rng.choices(names, weights=[mix[n] for n in names], k=1)[0]


# --- the folder pipeline ----------------------------------------------------------------------------


@dataclass
class Reject:
    """One image or sample that did not make it into the manifest, and why."""

    image: str
    reason: str
    edit_type: str = ""
    raw: str = ""


@dataclass
class PrepareReport:
    written: int = 0  # rows added by this run
    resumed: int = 0  # rows already in the output from an earlier run
    rejects: list[Reject] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (skipped copy, kept image)

    def summary(self) -> str:
        return (f"{self.written} new rows, {self.resumed} from before, {len(self.rejects)} rejected, "
                f"{len(self.duplicates)} duplicate images skipped")


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursive, by suffix, sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NPEditError(f"images: {folder} is not a folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def check_image(path: Path) -> str | None:
    """None when PIL can decode the whole image, else the reason (the pixels are read, not only the header)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.width < 16 or im.height < 16:
                return f"too small ({im.width}x{im.height})"
    except Exception as exc:  # PIL raises many types for damaged files
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


def _file_hash(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_jsonl_tolerant(path: Path) -> list[dict]:
    """Rows of a JSONL file we wrote; a torn last line (interrupted write) is dropped and the file rewritten."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows, good = [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
            good.append(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                log.warning("%s: dropping a torn last line (an interrupted run); it is redone", path)
                path.write_text("".join(g + "\n" for g in good), encoding="utf-8")
            else:
                raise NPEditError(f"{path} line {i + 1}: malformed JSON; fix or delete the line to resume") from None
    return rows


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _read_captions(path: str | Path | None, root: Path) -> dict[str, str]:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise NPEditError(f"captions: {path} not found")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image, caption = row["image"], row["caption"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise NPEditError(f"{path} row {n}: expected a JSON object with \"image\" and \"caption\"") from None
        p = Path(image)
        out[str((p if p.is_absolute() else root / p).resolve())] = str(caption).strip()
    return out


def prepare_folder(
    images: str | Path,
    out: str | Path,
    generator: Generator,
    mix: str | dict[str, float] | None = None,
    edits_per_image: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    verify: bool = False,
    captions: str | Path | None = None,
    retry_rejects: bool = False,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PrepareReport:
    """Write (or continue) the manifest `out` (.jsonl) for the images of folder `images`; see the module docstring.

    Image paths in the manifest are relative to the manifest's folder when possible (so
    `read_manifest(out)` finds them), else absolute. Each image gets `edits_per_image` samples with
    categories drawn from `mix` (deterministic per image and index). Returns what was done.
    """
    root = Path(images).resolve()
    out = Path(out)
    if out.suffix.lower() != ".jsonl":
        raise NPEditError(f"output {out}: use a .jsonl file")
    out.parent.mkdir(parents=True, exist_ok=True)
    rejects_path = out.with_name(out.stem + ".rejects.jsonl")
    weights = parse_mix(mix)
    if edits_per_image < 1:
        raise NPEditError(f"edits_per_image: must be at least 1, got {edits_per_image}")
    caption_map = _read_captions(captions, root)
    report = PrepareReport()

    # What an earlier run finished: sample ids "<abs image>#<k>" and the instructions per image.
    done: set[str] = set()
    instructions: dict[str, set[str]] = {}
    for row in _read_jsonl_tolerant(out):
        done.add(row.get("sample_id", ""))
        instructions.setdefault(row.get("image_abs", ""), set()).add(_norm(row.get("instruction", "")))
    report.resumed = len(done)
    if not retry_rejects:
        done |= {r.get("sample_id", "") for r in _read_jsonl_tolerant(rejects_path)}

    def reject(image: Path, reason: str, sample_id: str = "", edit_type: str = "", raw: str = "") -> None:
        item = Reject(str(image), reason, edit_type, raw)
        report.rejects.append(item)
        log.warning("skipped %s: %s", image, reason)
        with rejects_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"sample_id": sample_id, "image": str(image), "edit_type": edit_type,
                                "reason": reason, "raw": raw}) + "\n")

    # Check every image (a bad one is reported by name), drop byte-identical copies.
    todo: list[tuple[str, Path, str, str]] = []  # (sample id, image, edit type, caption)
    seen_hash: dict[str, Path] = {}
    files = list_images(root)
    if not files:
        raise NPEditError(f"images: no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    for path in files:
        ids = [f"{path}#{k}" for k in range(edits_per_image)]
        if all(i in done for i in ids):
            seen_hash.setdefault(_file_hash(path), path)  # so a copy of it found later is still a duplicate
            continue
        problem = check_image(path)
        if problem:
            reject(path, problem)
            continue
        digest = _file_hash(path)
        if digest in seen_hash:
            report.duplicates.append((str(path), str(seen_hash[digest])))
            log.warning("skipped %s: the same file as %s", path, seen_hash[digest])
            continue
        seen_hash[digest] = path
        caption = ""
        if not generator.sees_images:
            side = path.with_suffix(".txt")
            caption = caption_map.get(str(path)) or (side.read_text(encoding="utf-8").strip() if side.is_file() else "")
            if not caption:
                reject(path, "no source caption for a text-only model (give <image>.txt or --captions)")
                continue
        for k, sample_id in enumerate(ids):
            if sample_id not in done:
                todo.append((sample_id, path, draw_category(f"{path.relative_to(root)}#{k}", weights, seed), caption))
    if limit is not None:
        todo = todo[:limit]

    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        requests = []
        for _, path, edit_type, caption in batch:
            hint = CATEGORY_HINTS[edit_type]
            text = _VLM_TASK.format(hint=hint) if generator.sees_images else _LLM_TASK.format(hint=hint, caption=caption)
            requests.append(GenRequest(text, path if generator.sees_images else None))
        answers = generator.generate(requests)
        if len(answers) != len(batch):
            raise NPEditError(f"generator returned {len(answers)} answers for {len(batch)} prompts")
        parsed = []
        for (sample_id, path, edit_type, caption), answer in zip(batch, answers):
            try:
                fields = parse_response(answer, edit_type, need_source_caption=generator.sees_images)
            except ParseError as exc:
                reject(path, f"unusable model answer: {exc}", sample_id, edit_type, answer)
                continue
            if not generator.sees_images:
                fields["source_caption"] = caption
            key = _norm(fields["instruction"])
            if key in instructions.setdefault(str(path), set()):
                reject(path, f"duplicate instruction {fields['instruction']!r}", sample_id, edit_type, answer)
                continue
            instructions[str(path)].add(key)
            parsed.append((sample_id, path, edit_type, fields))
        if verify and parsed:
            if not generator.sees_images:
                raise NPEditError("verify: needs a VLM (a model folder with an image processor)")
            questions = [GenRequest(_VERIFY["remove" if t == "remove" else "default"].format(**f), p, system="Answer Yes or No.")
                         for _, p, t, f in parsed]
            verdicts = generator.generate(questions)
            kept = []
            for item, verdict in zip(parsed, verdicts):
                if _yes(verdict) is True:
                    kept.append(item)
                else:
                    reject(item[1], f"VLM verification said {_clip(verdict.strip(), 40)!r}", item[0], item[2])
            parsed = kept
        with out.open("a", encoding="utf-8") as f:
            for sample_id, path, edit_type, fields in parsed:
                f.write(json.dumps(_manifest_row(path, out, edit_type, fields, sample_id)) + "\n")
                report.written += 1
        if progress is not None:
            progress(min(start + batch_size, len(todo)), len(todo))
    return report


def _manifest_row(image: Path, out: Path, edit_type: str, fields: dict, sample_id: str = "") -> dict:
    try:
        rel = str(image.resolve().relative_to(out.parent.resolve()))
    except ValueError:
        rel = str(image.resolve())
    row = {"image": rel, "instruction": fields["instruction"], "edit_type": edit_type,
           "edited_caption": fields["edited_caption"], "source_caption": fields.get("source_caption", "")}
    if fields.get("object"):
        row["object"] = fields["object"]
    if sample_id:
        row["sample_id"] = sample_id
        row["image_abs"] = str(image.resolve())
    return row


# --- public datasets ------------------------------------------------------------------------------------

#: Keyword rules mapping a dataset's own edit-type names onto ours (first match wins; else "other").
_TYPE_RULES: tuple[tuple[str, str], ...] = (
    (r"remov|delet|eras", "remove"),
    (r"replac|swap|substitut", "replace"),
    (r"\badd|insert|addition", "add"),
    (r"background|scene|environment|weather|season", "background"),
    (r"text|font|sign|letter|word", "text"),
    (r"colou?r|tone|hue", "color"),
    (r"material|texture", "material"),
    (r"style|artistic|cartoon|sketch|painting|anime|render|photorealis", "style"),
    (r"action|pose|expression|motion|gesture", "action"),
    (r"shape|size|resiz|zoom", "shape"),
)


def map_edit_type(name: str) -> str:
    """A dataset's edit-type name (e.g. pico-banana "Remove an existing object", GPT-Image-Edit "addition") -> ours."""
    low = (name or "").lower()
    if low in EDIT_TYPES:
        return low
    for pattern, ours in _TYPE_RULES:
        if re.search(pattern, low):
            return ours
    return "other"


_REMOVE_RE = re.compile(r"\b(?:remove|delete|erase|take out|get rid of)\s+(?:all\s+)?(?:the\s+|a\s+|an\s+)?(.+?)"
                        r"(?:\s+(?:from|in|on|at|near|behind|that|which|while|so|and then|leaving)\b|[,.;:!]|$)", re.I)


def removed_object(instruction: str) -> str | None:
    """The object of a removal instruction ("Remove the red flag from the sky." -> "red flag"), or None."""
    m = _REMOVE_RE.search(instruction)
    if not m:
        return None
    obj = m.group(1).strip()
    return obj if 0 < len(obj.split()) <= 8 else None


@dataclass
class DatasetLayout:
    """Where a dataset keeps each manifest field (first key present wins); the target image is never read."""

    name: str
    image: tuple[str, ...]
    instruction: tuple[str, ...]
    edit_type: tuple[str, ...]
    source_caption: tuple[str, ...] = ()
    edited_caption: tuple[str, ...] = ()


#: pico-banana-400k (github.com/apple/pico-banana-400k): JSONL rows (sft.jsonl, preference.jsonl) with
#: "open_image_input_url" (Open Images source URL), "text" (instruction), "output_image" (target, ignored),
#: "edit_type" (35 names such as "Remove an existing object"), "summarized_text" (short instruction);
#: download helpers add "local_input_image" (the source's path under the Open Images folder). When that
#: field is absent the source is looked up by the URL's file name under the image root.
PICO_BANANA = DatasetLayout("pico-banana", image=("local_input_image",), instruction=("text", "summarized_text"),
                            edit_type=("edit_type",))
#: GPT-Image-Edit-1.5M (huggingface.co/datasets/UCSC-VLAA/GPT-Image-Edit-1.5M, training_json/*.json):
#: records with "dataset_source" (hqedit | omniedit | ultraedit), "task", "input" (relative path of the
#: source, e.g. "input/<id>.png"), "output" (target, ignored), "instruction", "instruction_type"
#: (original | rewrite | complex) and "input_description" (caption of the source).
GPT_IMAGE_EDIT = DatasetLayout("gpt-image-edit", image=("input",), instruction=("instruction",), edit_type=("task",),
                               source_caption=("input_description",))
#: The re-implementation's merged file (merged_edit_data.json, read by its data/instruct.py EditDataset).
NPEDIT_MERGED = DatasetLayout("npedit-merged", image=("input_image_path",), instruction=("edit_instruction",),
                              edit_type=("edit_type",), source_caption=("input_description",),
                              edited_caption=("edited_caption",))
LAYOUTS = {"pico-banana": PICO_BANANA, "gpt-image-edit": GPT_IMAGE_EDIT, "npedit-merged": NPEDIT_MERGED}


def _records(path: Path) -> Iterable[tuple[int, dict | None]]:
    """(row number, record) of a JSON array file or a JSONL file; None for a row that is not a JSON object."""
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise NPEditError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
        for i, rec in enumerate(data, 1):
            yield i, rec if isinstance(rec, dict) else None
        return
    row = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        row += 1
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        yield row, rec if isinstance(rec, dict) else None


def _first(rec: dict, keys: tuple[str, ...]) -> str:
    for key in keys:
        value = rec.get(key)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())
    return ""


def convert_dataset(
    metadata: str | Path,
    image_root: str | Path,
    out: str | Path,
    layout: str = "pico-banana",
    edited_caption_fallback: str = "instruction",
    check_images: bool = False,
) -> PrepareReport:
    """Convert a public dataset's metadata (JSON array or JSONL) into a manifest; target images are ignored.

    Relative source paths resolve against `image_root` (written relative to the manifest when possible).
    Neither public dataset ships an edited caption: with `edited_caption_fallback="instruction"` the
    instruction stands in for it (as the re-implementation does for benchmark prompts), with "error" such
    rows are rejected. Removals need an object name: it is read from the instruction ("remove the X ...")
    and rows where that fails are rejected. Every rejected row is reported as "<file> row N: reason".
    Duplicate (image, instruction) pairs are written once. `check_images` also decodes every image.
    """
    if layout not in LAYOUTS:
        raise NPEditError(f"layout: unknown {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if edited_caption_fallback not in ("instruction", "error"):
        raise NPEditError("edited_caption_fallback: 'instruction' or 'error'")
    spec, metadata, root, out = LAYOUTS[layout], Path(metadata), Path(image_root).resolve(), Path(out)
    if not metadata.is_file():
        raise NPEditError(f"metadata file not found: {metadata}")
    if not root.is_dir():
        raise NPEditError(f"image root {root} is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    report, seen, rows = PrepareReport(), set(), []
    fallback_rows = 0
    for n, rec in _records(metadata):
        where = f"{metadata} row {n}"

        def bad(reason: str, image: str = "") -> None:
            report.rejects.append(Reject(image or where, f"{where}: {reason}"))

        if rec is None:
            bad("not a JSON object")
            continue
        image = _first(rec, spec.image)
        if not image and layout == "pico-banana":
            url = _first(rec, ("open_image_input_url",))
            image = url.rsplit("/", 1)[-1] if url else ""
        instruction = _first(rec, spec.instruction)
        if not image or not instruction:
            bad(f"missing {'image' if not image else 'instruction'} (keys {spec.image if not image else spec.instruction})")
            continue
        p = Path(image)
        path = (p if p.is_absolute() else root / p).resolve()
        if not path.is_file():
            bad(f"source image not found: {path}", str(path))
            continue
        if check_images and (problem := check_image(path)):
            bad(f"{path}: {problem}", str(path))
            continue
        edit_type = map_edit_type(_first(rec, spec.edit_type))
        obj = removed_object(instruction) if edit_type == "remove" else None
        if edit_type == "remove" and not obj:
            bad(f"cannot read the removed object from the instruction {_clip(instruction, 60)!r}", str(path))
            continue
        edited = _first(rec, spec.edited_caption)
        if not edited:
            if edited_caption_fallback == "error":
                bad("no edited caption", str(path))
                continue
            edited, fallback_rows = instruction, fallback_rows + 1
        key = (str(path), _norm(instruction))
        if key in seen:
            report.duplicates.append((where, str(path)))
            continue
        seen.add(key)
        rows.append(_manifest_row(path, out, edit_type, {"instruction": instruction, "object": obj or "",
                                                         "edited_caption": edited,
                                                         "source_caption": _first(rec, spec.source_caption)}))
    for r in report.rejects:
        log.warning("skipped %s", r.reason)
    if fallback_rows:
        log.warning("%s: %d rows have no edited caption; their instruction stands in for it", metadata, fallback_rows)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out)
    report.written = len(rows)
    return report
