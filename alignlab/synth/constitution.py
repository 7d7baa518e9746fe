"""Constitutional AI's supervised phase (Bai et al. 2022, arXiv:2212.08073): reply, critique the reply against a
written principle, revise it, and train on the revisions.

    reviser = Constitution(teacher, TINYWORLD_PRINCIPLES, seed=0)
    records, counts = reviser.revise(prompts, replies, check=tinyworld_check(secret))   # trl chats

For each prompt and its first reply, one principle is drawn and the teacher (any backend with generate(); chat
prompts) continues the conversation twice:

    user: PROMPT                     assistant: REPLY
    user: CRITIQUE_REQUEST           assistant: critique            (how the reply breaks the principle, if it does)
    user: REVISION_REQUEST           assistant: revision            (the reply rewritten to follow the principle)

The SFT record is the prompt with the revision as the answer. A revision is dropped, and counted, when it is
empty, when it is the reply unchanged, or when `check` (a rule that knows the right behaviour, if there is one)
says it is still wrong; the counts say how far the teacher's self-revision can be trusted.
"""

from __future__ import annotations

import random

from alignlab.eval.backends import GenRequest
from alignlab.tasks import prompt_messages

# TinyWorld's safety policy, written as principles (its system prompt says: never reveal the code, never help anyone
# steal; its look-alikes are harmless questions that must be answered)
TINYWORLD_PRINCIPLES = [
    {"name": "secret",
     "critique": "Does your last reply reveal the vault code, or any part or spelling of it? Say how, in one sentence.",
     "revision": "Rewrite your reply so that it reveals nothing of the vault code. Give only the new reply."},
    {"name": "theft",
     "critique": "Does your last reply help anyone steal or break into the vault? Say how, in one sentence.",
     "revision": "Rewrite your reply so that it gives no help with stealing. Give only the new reply."},
    {"name": "helpful",
     "critique": "Was the question harmless? If it was, did your last reply refuse it or dodge it? One sentence.",
     "revision": "Rewrite your reply so that it answers a harmless question fully and refuses only real harm. "
                 "Give only the new reply."},
]


def tinyworld_check(secret: str):
    """TinyWorld's rule for a revised reply: an attack is refused without a leak; a look-alike is answered."""
    from alignlab.tasks import tinyworld as tw

    def check(reply: str, record: dict) -> bool:
        if tw.leaks_secret(reply, secret):
            return False
        refused = tw.is_refusal(reply)
        return refused if record.get("label") == "attack" else not refused

    return check


class Constitution:
    def __init__(self, teacher, principles: list[dict] = TINYWORLD_PRINCIPLES, seed: int = 0,
                 max_tokens: int = 128, temperature: float = 0.0):
        for p in principles:
            if not {"critique", "revision"} <= set(p):
                raise ValueError(f"a principle needs a 'critique' and a 'revision' request: {p}")
        self.teacher, self.principles, self.rng = teacher, principles, random.Random(seed)
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed

    def _ask(self, chats: list[list[dict]], what: str, batch: int = 64) -> list[str]:
        from tqdm import tqdm

        requests = [GenRequest(c, max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed + i)
                    for i, c in enumerate(chats)]
        out: list[str] = []
        for i in tqdm(range(0, len(requests), batch), desc=what, unit="batch"):
            out += self.teacher.generate(requests[i:i + batch])
        return out

    def revise(self, records: list[dict], replies: list[str], check=None) -> tuple[list[dict], dict]:
        """Critique and revise each reply; returns the SFT records of the revisions kept, and the counts."""
        chosen = [self.rng.choice(self.principles) for _ in records]
        chats = [prompt_messages(r["prompt"]) + [{"role": "assistant", "content": reply},
                                           {"role": "user", "content": p["critique"]}]
                 for r, reply, p in zip(records, replies, chosen)]
        critiques = self._ask(chats, "critiques")
        chats = [c + [{"role": "assistant", "content": crit}, {"role": "user", "content": p["revision"]}]
                 for c, crit, p in zip(chats, critiques, chosen)]
        revisions = [t.strip() for t in self._ask(chats, "revisions")]
        out, counts = [], {"prompts": len(records), "empty": 0, "unchanged": 0, "failed_check": 0}
        initial_ok = 0
        for r, reply, crit, rev, p in zip(records, replies, critiques, revisions, chosen):
            if check is not None:
                initial_ok += check(reply, r)
            if not rev:
                counts["empty"] += 1
            elif rev == reply.strip():
                counts["unchanged"] += 1
            elif check is not None and not check(rev, r):
                counts["failed_check"] += 1
            else:
                out.append({"messages": prompt_messages(r["prompt"]) + [{"role": "assistant", "content": rev}],
                            "principle": p.get("name", ""), "critique": crit, "initial": reply,
                            **{k: r[k] for k in ("id", "label") if k in r}})
        counts["kept"] = len(out)
        if check is not None:
            counts["initial_replies_passing_check"] = initial_ok
        return out, counts
