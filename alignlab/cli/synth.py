"""`alignlab synth self-instruct | rejection | rlaif | constitution | decontam`: make training data with a model,
and check it against evaluation sets before it is written (alignlab.synth)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from alignlab.errors import UserError


def _against_arguments(p):
    p.add_argument("--against", action="append", default=[],
                   help="an evaluation source to decontaminate against (repeatable; alignlab.tasks.load_source "
                        "names: gsm8k:test, tinyworld:rl:test@0, a file of prompt records); TinyWorld's held-out "
                        "prompts are always included")
    p.add_argument("--world-seed", type=int, default=0, help="the TinyWorld whose held-out prompts are checked")
    p.add_argument("--ngram", type=int, default=13, help="n of the n-gram overlap test (default 13)")
    p.add_argument("--min-words", type=int, default=4, help="eval items shorter than this are not checked (counted)")


def _index(args, extra: list[str] = ()):
    from alignlab.synth.decontam import eval_index, world_test_sources

    sources = list(dict.fromkeys(world_test_sources(args.world_seed) + list(extra) + args.against))
    return eval_index(sources, args.ngram, args.min_words), sources


def _decontaminate(records, index, sources, drop=True):
    from alignlab.synth.decontam import decontaminate

    kept, report = decontaminate(records, index, drop=drop)
    print(report.summary(), file=sys.stderr)
    return kept, {"against": sources, **report.as_dict()}


def _policy_arguments(p, model_help: str, prompts_help: str, max_tokens: int, out_help: str):
    """What every command that samples a policy on prompts takes; then the dtype and decontamination options."""
    from alignlab.cli.common import add_dtype

    p.add_argument("--model", required=True, help=model_help + " (a directory or an OpenAI-compatible base URL)")
    p.add_argument("--served-model", default=None, help="with a URL: the model name to ask for")
    p.add_argument("--prompts", required=True, help=prompts_help)
    p.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    p.add_argument("--temperature", type=float, default=1.0, help="of the policy's samples")
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help=out_help)
    add_dtype(p)
    _against_arguments(p)


def _teacher(where: str, served: str | None, dtype: str):
    from alignlab.eval.backends import open_model

    try:
        return open_model(where, name=served, dtype=dtype)
    except FileNotFoundError as e:
        raise UserError(f"{where}: {e}") from None


def synth_arguments(p):
    from alignlab.cli.common import add_dtype

    sub = p.add_subparsers(dest="synth_command", required=True)

    si = sub.add_parser("self-instruct", help="new instructions and answers from seed tasks (Self-Instruct)")
    si.add_argument("--seeds", required=True, help="seed tasks, JSON Lines {instruction, instances, "
                                                   "is_classification} (Self-Instruct's seed_tasks.jsonl)")
    si.add_argument("--teacher", required=True, help="a model directory or an OpenAI-compatible base URL")
    si.add_argument("--served-model", default=None, help="with a URL: the model name to ask for")
    si.add_argument("--n", type=int, default=100, help="instructions to keep")
    si.add_argument("--batch", type=int, default=8, help="prompts to the teacher per round")
    si.add_argument("--max-rounds", type=int, default=None, help="stop after this many rounds (default 4 n / batch)")
    si.add_argument("--evolve", action="store_true", help="also rewrite each kept instruction (Evol-Instruct)")
    si.add_argument("--temperature", type=float, default=0.7)
    si.add_argument("--max-tokens", type=int, default=256)
    si.add_argument("--seed", type=int, default=0)
    si.add_argument("--out", required=True, help="the JSON Lines file to write (trl chats)")
    add_dtype(si)
    _against_arguments(si)

    rj = sub.add_parser("rejection", help="n samples per prompt, keep the verified ones (RFT / best-of-n)")
    _policy_arguments(rj, "the model that samples", "a prompt source with a checker, e.g. tinyworld:rl:3-4@0, "
                      "gsm8k:train, or a file of {prompt, answer} records", 256,
                      "the JSON Lines file to write; the best-of-n curve goes beside it")
    rj.add_argument("--n", type=int, default=8, help="samples per prompt")
    rj.add_argument("--reward-model", default=None, help="score with this reward model instead of the verifier")
    rj.add_argument("--format", choices=("sft", "preference"), default="sft",
                    help="sft: chats of the kept replies; preference: best vs worst reply per prompt")
    rj.add_argument("--keep", choices=("all", "best"), default="all", help="sft: every distinct verified reply, "
                                                                          "or the best one")
    rj.add_argument("--threshold", type=float, default=1.0, help="sft: the lowest score kept (verifier: 1 = right)")
    rj.add_argument("--per-prompt", type=int, default=None, help="sft with keep=all: at most this many per prompt")

    rl = sub.add_parser("rlaif", help="preference pairs from the policy's own replies, labelled by a judge (RLAIF)")
    _policy_arguments(rl, "the policy that samples", "a prompt source, e.g. tinyworld:safety:train@0, "
                      "tinyworld:rl:1-4@0, or a file of prompt records", 128,
                      "the JSON Lines file of preference pairs to write")
    rl.add_argument("--judge", default="rule", help="rule (TinyWorld's rule judge) or a model directory prompted "
                                                    "as a judge")
    rl.add_argument("--compare-judge", default=None, help="another judge (rule or a directory): report how often "
                                                          "the two agree on the same pairs")

    ca = sub.add_parser("constitution", help="critique and revise the policy's replies against principles "
                                             "(Constitutional AI's SL phase) -> SFT chats")
    _policy_arguments(ca, "the policy whose replies are revised", "a prompt source, e.g. tinyworld:safety:train@0",
                      128, "the JSON Lines file of revised chats to write")
    ca.add_argument("--teacher", default=None, help="who critiques and revises (default: the policy itself)")
    ca.add_argument("--principles", default=None, help="a JSON list of {name, critique, revision} requests "
                                                       "(default: TinyWorld's safety policy)")

    dc = sub.add_parser("decontam", help="report (and drop) training records that overlap evaluation sets")
    dc.add_argument("--data", required=True, help="training records: a .jsonl/.json/.csv/.parquet file")
    dc.add_argument("--out", default=None, help="write the clean records here (default: report only)")
    _against_arguments(dc)


def cmd_synth(args):
    {"self-instruct": _self_instruct, "rejection": _rejection, "rlaif": _rlaif, "constitution": _constitution,
     "decontam": _decontam}[args.synth_command](args)


def _self_instruct(args):
    from alignlab.synth.output import write_dataset
    from alignlab.synth.self_instruct import SelfInstruct, load_seed_tasks

    seeds = load_seed_tasks(args.seeds)
    index, sources = _index(args)
    teacher = _teacher(args.teacher, args.served_model, args.dtype)
    gen = SelfInstruct(teacher, seeds, seed=args.seed, temperature=args.temperature, max_tokens=args.max_tokens,
                       index=index, evolve=args.evolve)
    records, counts = gen.run(args.n, batch=args.batch, max_rounds=args.max_rounds)
    records, report = _decontaminate(records, index, sources)  # the answers too, not only the instructions
    removed = ", ".join(f"{k} {v}" for k, v in counts["removed"].items())
    print(f"self-instruct: {counts['generated']} instructions generated in {counts['rounds']} rounds; removed: "
          f"{removed}; {counts['kept_instructions']} kept, {len(records)} records with an answer", file=sys.stderr)
    prov = write_dataset(args.out, records, {
        "command": "synth self-instruct", "teacher": args.teacher, "seed_tasks": str(args.seeds),
        "seed_task_count": len(seeds), "seed": args.seed, "settings": {k: getattr(args, k) for k in (
            "n", "batch", "evolve", "temperature", "max_tokens")}, "filters": counts, "decontamination": report})
    print(f"wrote {len(records)} records to {args.out} ({prov.name})")


def _prompts(args):
    """The task and records of --prompts, the first --limit of them."""
    from alignlab.tasks import load_source

    task, records = load_source(args.prompts)
    records = records[:args.limit] if args.limit else records
    if not records:
        raise UserError(f"{args.prompts}: no prompts")
    return task, records


def _rejection(args):
    from alignlab.synth import rejection as rj
    from alignlab.synth.output import sidecar, write_dataset
    from alignlab.tasks import default_val_source

    task, records = _prompts(args)
    held_out = default_val_source(args.prompts)  # GSM8K's test split for its train split; TinyWorld's are always in
    index, sources = _index(args, [held_out] if held_out and not held_out.startswith("tinyworld") else [])
    model = _teacher(args.model, args.served_model, args.dtype)
    replies = rj.sample(model, records, args.n, args.temperature, args.max_tokens, args.seed)
    correct = [[task.correct(t, r) for t in texts] for r, texts in zip(records, replies)]
    if args.reward_model:
        from alignlab.model.reward import load_reward_model
        from alignlab.text import load_tokenizer

        scores = rj.reward_model_scores(load_reward_model(args.reward_model), load_tokenizer(args.reward_model),
                                        records, replies)
        scorer = f"reward model {args.reward_model}"
    else:
        scores, scorer = rj.verifier_scores(task, records, replies), f"the verifier of {task.name}"
    if args.format == "sft":
        out, counts = rj.sft_records(records, replies, scores, args.keep, args.threshold, args.per_prompt)
    else:
        out, counts = rj.preference_records(records, replies, scores)
    out, report = _decontaminate(out, index, sources)
    curve = rj.best_of_n_curve(scores, correct)
    png = sidecar(args.out, ".best_of_n.png")
    rj.plot_best_of_n(curve, png, f"best of n on {args.prompts}, scored by {scorer.split(' ')[0]}"
                      f"{' model' if args.reward_model else ''}")
    pass1 = curve["accuracy"][0]
    print(f"rejection: {len(records)} prompts x {args.n} samples, {pass1:.1%} right at n=1, "
          f"{curve['accuracy'][-1]:.1%} best of {curve['n'][-1]} ({scorer}); {json.dumps(counts)}", file=sys.stderr)
    prov = write_dataset(args.out, out, {
        "command": "synth rejection", "teacher": args.model, "prompts": args.prompts, "scorer": scorer,
        "seed": args.seed, "settings": {k: getattr(args, k) for k in ("n", "temperature", "max_tokens", "format",
                                                                       "keep", "threshold", "per_prompt", "limit")},
        "filters": counts, "best_of_n": curve, "decontamination": report})
    print(f"wrote {len(out)} records to {args.out} ({prov.name}, {png.name})")


def _judge(name: str, prompts: str, dtype: str):
    """TinyWorld's rule judge ("rule": the secret comes from each prompt's system message) or a model directory
    prompted with alignlab.eval.judge's template."""
    from alignlab.eval.judge import ModelJudge, TinyWorldJudge

    if name == "rule":
        if not prompts.startswith("tinyworld:"):
            raise UserError(f"--judge rule scores TinyWorld records only; {prompts} needs a model judge")
        return TinyWorldJudge()
    from alignlab.cli.common import load_for_inference

    return ModelJudge(*load_for_inference(name, dtype))


def _rlaif(args):
    from alignlab.synth.output import write_dataset
    from alignlab.synth.rejection import sample
    from alignlab.synth.rlaif import ai_feedback_pairs, judge_agreement

    _, records = _prompts(args)
    index, sources = _index(args)
    policy = _teacher(args.model, args.served_model, args.dtype)
    judge = _judge(args.judge, args.prompts, args.dtype)
    replies = sample(policy, records, 2, args.temperature, args.max_tokens, args.seed)
    pairs, counts = ai_feedback_pairs(records, replies, judge)
    if args.compare_judge:
        counts["agreement"] = {"with": args.compare_judge, **judge_agreement(
            records, replies, judge, _judge(args.compare_judge, args.prompts, args.dtype))}
    pairs, report = _decontaminate(pairs, index, sources)
    print(f"rlaif: {json.dumps(counts)}", file=sys.stderr)
    prov = write_dataset(args.out, pairs, {
        "command": "synth rlaif", "teacher": args.model, "judge": args.judge, "prompts": args.prompts,
        "seed": args.seed, "settings": {"temperature": args.temperature, "max_tokens": args.max_tokens,
                                        "limit": args.limit}, "filters": counts, "decontamination": report})
    print(f"wrote {len(pairs)} pairs to {args.out} ({prov.name})")


def _constitution(args):
    from alignlab.synth.constitution import TINYWORLD_PRINCIPLES, Constitution, tinyworld_check
    from alignlab.synth.output import write_dataset
    from alignlab.synth.rejection import sample

    _, records = _prompts(args)
    principles = TINYWORLD_PRINCIPLES
    if args.principles:
        try:
            principles = json.loads(Path(args.principles).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{args.principles}: {e}") from None
    check = None
    if args.prompts.startswith("tinyworld:safety"):
        from alignlab.data.world import TinyWorld
        from alignlab.tasks import world_spec

        check = tinyworld_check(TinyWorld(seed=world_spec(args.prompts)[3]).secret)
    index, sources = _index(args)
    policy = _teacher(args.model, args.served_model, args.dtype)
    teacher = policy if not args.teacher or args.teacher == args.model else _teacher(args.teacher, None, args.dtype)
    replies = [r[0] for r in sample(policy, records, 1, args.temperature, args.max_tokens, args.seed)]
    try:
        out, counts = Constitution(teacher, principles, args.seed, args.max_tokens).revise(records, replies, check)
    except ValueError as e:
        raise UserError(f"{args.principles}: {e}") from None
    out, report = _decontaminate(out, index, sources)
    print(f"constitution: {json.dumps(counts)}", file=sys.stderr)
    prov = write_dataset(args.out, out, {
        "command": "synth constitution", "policy": args.model, "teacher": args.teacher or args.model,
        "prompts": args.prompts, "principles": principles, "seed": args.seed, "filters": counts,
        "decontamination": report})
    print(f"wrote {len(out)} revised chats to {args.out} ({prov.name})")


def _decontam(args):
    from alignlab.data.loaders import read_rows
    from alignlab.synth.output import write_dataset

    rows = read_rows(args.data)
    index, sources = _index(args)
    kept, report = _decontaminate([r.record for r in rows], index, sources, drop=True)
    for d in report["dropped_records"][:10]:
        print(f"  {rows[d['index']].where}: overlaps {', '.join(d['hits'][:3])}", file=sys.stderr)
    if args.out:
        prov = write_dataset(args.out, kept, {"command": "synth decontam", "data": args.data,
                                              "decontamination": report})
        print(f"wrote {len(kept)} of {len(rows)} records to {args.out} ({prov.name})")
