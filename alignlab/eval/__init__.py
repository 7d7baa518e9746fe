"""Evaluation: scorers over model outputs.

    tinyworld.py   TinyWorld's scorers: answer accuracy (strict and lenient), format rate, refusal
                   and over-refusal rates, secret leaks, tool-call accuracy; `verify` is GRPO's reward

    from alignlab.tasks.tinyworld import verify, answer_accuracy, safety_scores, tool_call_accuracy
"""
