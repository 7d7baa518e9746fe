"""Preference data for DPO, reward models and KTO: formats, HH-RLHF, validation, tokenisation, pair builders.

The record formats are TRL's (extra fields such as "id", "kind", "margin" or "tools" are kept):

    preference, explicit prompt   {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
                                  {"prompt": [messages], "chosen": [assistant], "rejected": [assistant]}
    preference, implicit prompt   {"chosen": "Q: sky? A: blue.", "rejected": "Q: sky? A: green."}
                                  {"chosen": [user, assistant], "rejected": [user, assistant]}
    unpaired (KTO)                {"prompt": "The sky is", "completion": " blue.", "label": true}
                                  {"prompt": [messages], "completion": [assistant], "label": false}

Standard records hold strings, conversational ones message lists ({"role", "content"}, as in SFT).
An implicit prompt is the longest prefix chosen and rejected share (characters or messages), cut
as TRL's `extract_prompt` cuts it: a space just before the first difference goes to the completions.
`normalize_record` makes every pair explicit, so the rest of the code sees one shape. `unpair`
turns a pair into two unpaired records (chosen: label true, rejected: label false), as TRL's
`unpair_preference_dataset` does for KTO.

    data = load_preference_data("hh.jsonl", convert="hh_rlhf")        # or "tinyworld:preferences"
    print(summarize(data))            # rows, kept, dropped by reason, and where (file:line: field ...)
    pairs = tokenize_pairs(tok, data.records, max_len=512, max_prompt_len=256, where=data.where)
    batch = collate_pairs(pairs.examples[:8], pad_id)       # 16 rows: 8 chosen, then 8 rejected

Sources: anything alignlab.data.loaders.read_rows reads (jsonl/json/csv/parquet/hf:), and
`tinyworld:preferences[:SPLIT][@SEED]` (TinyWorld's pairs, made on the fly). `convert` names steps
joined by "+": "hh_rlhf" (Anthropic's "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts -> messages)
and "unpaired" (pairs -> KTO records), e.g. convert="hh_rlhf+unpaired".

A bad row is never a crash and never a silent skip: with on_error="drop" it is dropped, counted under
its reason ("missing field", "empty completion", "identical chosen and rejected", ...) and its
location kept with the message, `data.jsonl:7: field 'rejected': missing ...`; on_error="raise"
raises that message at the first bad row.

Tokens: the prompt is tokenized as the model is given it at inference (the chat template with its
generation prompt), each completion after it, and only the completion's tokens are trained,
including the end of turn (the template's <|end|>/<|im_end|>, else eos, appended as TRL appends
it): the masks come from alignlab.text.encode_chat, as SFT's do. Truncation follows TRL's
DPO: a prompt longer than max_prompt_len keeps its end ("keep_end", the part next to the reply;
a leading bos stays), then each completion is cut to what max_len leaves. Pairs whose prompt fills
max_len, or whose two sides become the same tokens, are dropped and counted.

SafeDPO reads a pair's safety labels "chosen_unsafe" and "rejected_unsafe" (true: that answer is unsafe;
absent: safe) with `unsafe_label`, strictly: true/false, 1/0 or yes/no, anything else is an error.

Pair builders (pure functions over strings; generating the samples is the caller's job):
`pairs_from_verifier` (a passing sample is chosen over a failing one), `pairs_from_scores` (a
judge's best over its worst, by a margin), `persona_pairs` (a reply written with a persona system
prompt over one written without it; the persona is not part of the training prompt).

One concern per module, in the order they import each other:

    formats.py    detect, validate and normalise records; unpair; yes/no fields; HH-RLHF transcripts
    load.py       rows of a source -> converted, validated records, counted (load_preference_data, summarize)
    tokenize.py   prompt and completion ids with their masks, truncation (tokenize_pairs, tokenize_unpaired)
    collate.py    [chosen; rejected] batches (collate_pairs, collate_unpaired)
    batches.py    shuffled, resumable epochs of them (PairBatches, UnpairedBatches), KTO's KL rows (kto_examples)
    build.py      samples and scores -> pairs (pairs_from_verifier, pairs_from_scores, persona_pairs)
"""

from alignlab.data.preference.batches import KTOExample, PairBatches, UnpairedBatches, kto_examples, make_batch
from alignlab.data.preference.build import pairs_from_scores, pairs_from_verifier, persona_pairs
from alignlab.data.preference.collate import collate_pairs, collate_unpaired
from alignlab.data.preference.formats import (
    FORMATS,
    HH_ROLES,
    PreferenceError,
    detect_preference_format,
    extract_prompt,
    hh_rlhf_to_preference,
    is_unpaired,
    normalize_record,
    parse_bool,
    parse_hh_transcript,
    unpair,
    unsafe_label,
)
from alignlab.data.preference.load import (
    CONVERTERS,
    ON_ERROR,
    STEPS,
    PreferenceData,
    load_preference_data,
    parse_csv_cells,
    read_preference_rows,
    summarize,
)
from alignlab.data.preference.tokenize import (
    TRUNCATION,
    PairExample,
    PairTokens,
    UnpairedExample,
    encode_completion,
    tokenize_pairs,
    tokenize_unpaired,
    truncate_prompt,
)
from alignlab.objectives.lm import IGNORE_INDEX

__all__ = [
    "CONVERTERS", "FORMATS", "HH_ROLES", "IGNORE_INDEX", "ON_ERROR", "STEPS", "TRUNCATION",
    "KTOExample", "PairBatches", "PairExample", "PairTokens", "PreferenceData", "PreferenceError", "UnpairedBatches",
    "UnpairedExample", "kto_examples", "make_batch",
    "collate_pairs", "collate_unpaired", "detect_preference_format", "encode_completion", "extract_prompt",
    "hh_rlhf_to_preference", "is_unpaired", "load_preference_data", "normalize_record", "pairs_from_scores",
    "pairs_from_verifier", "parse_bool", "parse_csv_cells", "parse_hh_transcript", "persona_pairs",
    "read_preference_rows", "summarize", "tokenize_pairs", "tokenize_unpaired", "truncate_prompt", "unpair",
    "unsafe_label",
]
