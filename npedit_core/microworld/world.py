"""The micro-world: procedurally rendered scenes with a scene graph, captions and edit instructions.

A scene is a background colour and one to three flat shapes, each with a colour, a kind (circle,
square, triangle), a size (small, large) and a cell of a 3x3 grid ("top left" ... "bottom right").
Everything is a pure function of a seed: `sample_scene(rng)`, `sample_edit(scene, rng)`, and
`apply_edit(scene, edit)` gives the scene graph of the correctly edited image. NP-Edit never sees
that target: the trainer reads only the reference image, the instruction, the edit type, the object
(removals) and the edited caption. Targets are rendered only for the supervised baseline, for the
judge's training questions and for the oracle.

Edit types (names from `judges.prompts.EDIT_TYPES`):
    color       "make the red circle blue"
    remove      "remove the red circle"                 (object: "a red circle")
    add         "add a small blue square at the top left"
    replace     "replace the red circle with a square"  (kind changes; colour, size, place stay)
    background  "change the background to black"
Objects are named by colour and kind, which are unique within a scene, so every instruction names
exactly one object. Images are float (3, S, S) in [0, 1], S = 64 by default.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import numpy as np
import torch

SIZE = 64
COLORS = {  # object colours
    "red": (0.86, 0.13, 0.13),
    "green": (0.15, 0.70, 0.22),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.58, 0.20, 0.75),
    "orange": (0.98, 0.55, 0.10),
}
BACKGROUNDS = {  # background colours (disjoint from the object colours)
    "white": (0.95, 0.95, 0.95),
    "gray": (0.50, 0.50, 0.50),
    "black": (0.08, 0.08, 0.08),
    "pink": (0.98, 0.70, 0.80),
    "cyan": (0.45, 0.85, 0.90),
}
KINDS = ("circle", "square", "triangle")
SIZES = {"small": 0.28, "large": 0.42}  # radius as a fraction of a grid cell's side
CELLS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
EDIT_TYPES = ("color", "remove", "add", "replace", "background")
MAX_OBJECTS = 3


@dataclass(frozen=True)
class Shape:
    color: str
    kind: str
    size: str
    cell: int  # 0..8, row-major in the 3x3 grid
    jitter: tuple[float, float] = (0.0, 0.0)  # centre offset in pixels (dy, dx), kept by every edit

    @property
    def name(self) -> str:
        """How instructions refer to it ("the red circle"); colour + kind is unique in a scene."""
        return f"{self.color} {self.kind}"

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.kind} {'in the' if self.cell == 4 else 'at the'} {CELLS[self.cell]}"


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...] = ()

    def caption(self) -> str:
        if not self.shapes:
            return f"an empty {self.background} background"
        parts = [s.phrase() for s in self.shapes]
        body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{body} on a {self.background} background"

    def to_dict(self) -> dict:
        return {"background": self.background,
                "shapes": [dict(color=s.color, kind=s.kind, size=s.size, cell=s.cell, jitter=list(s.jitter))
                           for s in self.shapes]}

    @staticmethod
    def from_dict(d: dict) -> "Scene":
        return Scene(d["background"], tuple(Shape(s["color"], s["kind"], s["size"], s["cell"], tuple(s["jitter"]))
                                           for s in d["shapes"]))


@dataclass(frozen=True)
class Edit:
    edit_type: str
    instruction: str
    target: Scene  # the correctly edited scene (never shown to NP-Edit)
    object: str | None = None  # removals: "a red circle"
    changed: tuple[int, ...] = field(default=())  # indices into the *source* shapes that the edit touches


# --- sampling ---------------------------------------------------------------------------------------
def sample_scene(rng: random.Random, n_objects: int | None = None) -> Scene:
    n = n_objects if n_objects is not None else rng.randint(1, MAX_OBJECTS)
    cells = rng.sample(range(9), n)
    names = rng.sample([(c, k) for c in COLORS for k in KINDS], n)
    shapes = tuple(Shape(c, k, rng.choice(list(SIZES)), cell, (rng.uniform(-2, 2), rng.uniform(-2, 2)))
                   for (c, k), cell in zip(names, cells))
    return Scene(rng.choice(list(BACKGROUNDS)), shapes)


def possible_edit_types(scene: Scene) -> list[str]:
    types = ["background"]
    if scene.shapes:
        types += ["color", "remove"]
        # a kind change needs a free (colour, kind) name: not so when all shapes share one colour
        if len({s.color for s in scene.shapes}) > 1 or len(scene.shapes) < len(KINDS):
            types.append("replace")
    if len(scene.shapes) < MAX_OBJECTS:
        types.append("add")
    return [t for t in EDIT_TYPES if t in types]


def sample_edit(scene: Scene, rng: random.Random, edit_type: str | None = None) -> Edit:
    """A random valid edit of `scene` (of `edit_type` if given, else uniform over the possible types)."""
    edit_type = edit_type or rng.choice(possible_edit_types(scene))
    shapes = list(scene.shapes)
    taken = {s.name for s in shapes}
    if edit_type == "background":
        new = rng.choice([b for b in BACKGROUNDS if b != scene.background])
        return Edit(edit_type, f"change the background to {new}", replace(scene, background=new))
    if edit_type == "add":
        free = [c for c in range(9) if c not in {s.cell for s in shapes}]
        color, kind = rng.choice([(c, k) for c in COLORS for k in KINDS if f"{c} {k}" not in taken])
        shape = Shape(color, kind, rng.choice(list(SIZES)), rng.choice(free), (0.0, 0.0))
        where = ("in the " if shape.cell == 4 else "at the ") + CELLS[shape.cell]
        return Edit(edit_type, f"add a {shape.size} {color} {kind} {where}", Scene(scene.background, (*shapes, shape)))
    if edit_type in ("color", "replace"):
        options = {  # per shape, the new values that keep colour + kind unique in the scene
            j: [c for c in COLORS if c != x.color and f"{c} {x.kind}" not in taken] if edit_type == "color"
            else [k for k in KINDS if k != x.kind and f"{x.color} {k}" not in taken]
            for j, x in enumerate(shapes)
        }
        i = rng.choice([j for j, o in options.items() if o])  # non-empty: see possible_edit_types
    else:
        i = rng.randrange(len(shapes))
    s = shapes[i]
    if edit_type == "remove":
        rest = tuple(x for j, x in enumerate(shapes) if j != i)
        return Edit(edit_type, f"remove the {s.name}", Scene(scene.background, rest), f"a {s.name}", (i,))
    if edit_type == "color":
        new = rng.choice(options[i])
        shapes[i] = replace(s, color=new)
        return Edit(edit_type, f"make the {s.name} {new}", Scene(scene.background, tuple(shapes)), None, (i,))
    if edit_type == "replace":
        new = rng.choice(options[i])
        shapes[i] = replace(s, kind=new)
        return Edit(edit_type, f"replace the {s.name} with a {new}", Scene(scene.background, tuple(shapes)), None, (i,))
    raise ValueError(f"unknown edit type {edit_type!r}")


def sample_example(seed: int, edit_type: str | None = None) -> tuple[Scene, Edit]:
    """(scene, edit) for one integer seed: the unit of every data set in this package."""
    rng = random.Random(seed)
    scene = sample_scene(rng)
    while edit_type is not None and edit_type not in possible_edit_types(scene):
        scene = sample_scene(rng)
    return scene, sample_edit(scene, rng, edit_type)


# --- rendering --------------------------------------------------------------------------------------
_SUPER = 4  # supersampling factor for anti-aliased edges


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    n = size * _SUPER
    coords = (np.arange(n) + 0.5) / _SUPER  # pixel-unit coordinates of the sub-samples
    return np.meshgrid(coords, coords, indexing="ij")


def shape_mask(shape: Shape, size: int = SIZE) -> np.ndarray:
    """(size, size) float coverage in [0, 1] of one shape (anti-aliased by 4x4 supersampling)."""
    yy, xx = _grid(size)
    cell = size / 3
    cy = (shape.cell // 3 + 0.5) * cell + shape.jitter[0]
    cx = (shape.cell % 3 + 0.5) * cell + shape.jitter[1]
    r = SIZES[shape.size] * cell
    dy, dx = yy - cy, xx - cx
    if shape.kind == "circle":
        m = dy**2 + dx**2 <= r**2
    elif shape.kind == "square":
        h = 0.88 * r  # about the circle's area
        m = (np.abs(dy) <= h) & (np.abs(dx) <= h)
    else:  # upward triangle, circumradius 1.25 r
        rr = 1.25 * r
        top, base = cy - rr, cy + 0.5 * rr
        half = (dy + rr) / (1.5 * rr) * (rr * np.sqrt(3) / 2)  # half-width grows linearly from the apex
        m = (yy >= top) & (yy <= base) & (np.abs(dx) <= half)
    m = m.astype(np.float32).reshape(size, _SUPER, size, _SUPER).mean(axis=(1, 3))
    return m


def render(scene: Scene, size: int = SIZE) -> torch.Tensor:
    """(3, size, size) float32 image in [0, 1]; later shapes are drawn over earlier ones (they never overlap)."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUNDS[scene.background]
    for s in scene.shapes:
        m = shape_mask(s, size)[..., None]
        img = img * (1 - m) + m * np.asarray(COLORS[s.color], np.float32)
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def render_batch(scenes, size: int = SIZE) -> torch.Tensor:
    return torch.stack([render(s, size) for s in scenes])


# --- text corpus (for the tokenizer) ----------------------------------------------------------------
def corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """Captions and instructions of `n` random examples plus every word the world can use."""
    rng = random.Random(seed)
    texts = [" ".join(COLORS), " ".join(BACKGROUNDS), " ".join(KINDS), " ".join(SIZES), " ".join(CELLS)]
    for _ in range(n):
        scene = sample_scene(rng)
        edit = sample_edit(scene, rng)
        texts += [scene.caption(), edit.target.caption(), edit.instruction, edit.object or ""]
    return texts
