"""Evaluation: the runner, its run folder, scoring (rules and judge), metrics, the report and run comparison."""

from mini_o3.lazy import lazy_exports

_EXPORTS = {
    "EvalConfig": "runner",
    "run_eval": "runner",
    "rescore": "runner",
    "JudgeConfig": "judge",
    "score_answer": "scoring",
    "score_trajectory": "scoring",
    "Score": "scoring",
    "write_report": "report",
    "compare_runs": "report",
    "compare_questions": "compare",
    "protocol_card": "card",
    "DirectPromptPolicy": "baseline",
    "search_behaviour": "behaviour",
    "rotation_score": "rotation",
    "draw_zoom_boxes": "draw",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
