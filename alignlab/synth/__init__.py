"""Synthetic data: a model writes training data, filters and verifiers decide what is kept.

    self_instruct.py  Self-Instruct (and Evol-Instruct): new instructions from seed tasks, filtered by heuristics,
                      ROUGE-L against the pool and decontamination, then answered by the teacher
    rejection.py      rejection sampling (RFT / best-of-n): n replies per prompt, scored by a task's verifier or a
                      reward model; SFT data from the verified ones, preference pairs best vs worst, the exact
                      best-of-n curve
    rlaif.py          RLAIF: preference pairs from the policy's own replies, labelled by a judge in both orders
    constitution.py   Constitutional AI's supervised phase: critique and revise replies against written principles
    decontam.py       n-gram overlap (13-grams) between training data and evaluation sets: report and drop
    output.py         JSON Lines in trl's formats with a provenance record beside them

`alignlab synth self-instruct | rejection | rlaif | constitution | decontam` runs them (alignlab/cli/synth.py);
every output is checked against TinyWorld's held-out prompts (and any --against sources) before it is written.
The distillation losses are pure functions in alignlab.objectives.distill; `alignlab distill`
(alignlab/recipes/distill.py) trains a student with them.
"""
