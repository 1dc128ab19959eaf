"""Editor backbone families behind one protocol (`base.Backbone`)."""

from ..registry import resolve
from .base import Backbone, TextEmbeds

BACKBONES = {
    "flux2_klein": "npedit_core.backbones.flux2_klein:Flux2KleinBackbone",
    "z_image": "npedit_core.backbones.z_image:ZImageBackbone",
}


def backbone_class(family: str) -> type[Backbone]:
    """The Backbone subclass of `family` (e.g. "flux2_klein"); unknown names suggest the nearest."""
    return resolve(BACKBONES, family, "backbone family")


__all__ = ["BACKBONES", "Backbone", "TextEmbeds", "backbone_class"]
