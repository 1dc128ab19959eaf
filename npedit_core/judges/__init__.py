"""VLM judge families behind one protocol (`base.Judge`) and the question templates."""

from ..registry import resolve
from .base import Judge, Question
from .prompts import EDIT_TYPES, QuestionTemplates, edit_questions

JUDGES = {
    "qwen2_5_vl": "npedit_core.judges.qwen2_5_vl:Qwen25VLJudge",
    "qwen3_vl": "npedit_core.judges.qwen3_vl:Qwen3VLJudge",
    "internvl": "npedit_core.judges.internvl:InternVLJudge",
}


def judge_class(family: str) -> type[Judge]:
    """The Judge subclass of `family` (e.g. "qwen2_5_vl"); unknown names suggest the nearest."""
    return resolve(JUDGES, family, "judge family")


__all__ = ["EDIT_TYPES", "JUDGES", "Judge", "Question", "QuestionTemplates", "edit_questions", "judge_class"]
