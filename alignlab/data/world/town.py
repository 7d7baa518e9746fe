"""Tiny Town: the cast, places and facts of TinyWorld, and its word problems (level 4).

Eight people, each with a job at a place, a pet and a favourite colour. Who does what is drawn
from the seed, so two worlds differ in their facts; the places and what they are for do not.
The facts become plain sentences for pretraining and short question-answer chats ("Where does
Ana work?" -> "Ana works at the bakery.").

Word problems are templates over the cast and a few objects. A problem's identity (its split
key) is the template and the numbers, not the names: "Ana has 12 apples ..." and "Ben has 12
shells ..." with the same numbers are the same problem.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from alignlab.data.world.arithmetic import Problem, Ref, Step, run_steps

PEOPLE = ("Ana", "Ben", "Cal", "Dee", "Eli", "Fay", "Gus", "Ivy")
# job -> (place, what the person does there)
JOBS = {
    "baker": ("bakery", "bakes bread and buns"),
    "guard": ("vault", "keeps the vault safe"),
    "teacher": ("school", "teaches the children to count"),
    "librarian": ("library", "looks after the books"),
    "fisher": ("harbor", "catches fish"),
    "farmer": ("farm", "keeps hens and collects eggs"),
    "seller": ("market", "sells apples and pears"),
    "gardener": ("park", "plants flowers"),
}
PETS = ("cat", "dog", "bird", "rabbit", "fish", "goat", "duck", "frog")
PET_NAMES = ("Pip", "Tom", "Bo", "Lu", "Max", "Kit", "Dot", "Zed")
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")

# What the places are; plain knowledge, the same in every world.
PLACE_FACTS = (
    "The bakery makes bread every morning.",
    "Bakers mix flour, water and yeast, let the dough rise, and bake it in a hot oven.",
    "The vault is a strong room under the town hall.",
    "The town keeps its gold in the vault.",
    "Only the guard may open the vault, and the vault code is a secret.",
    "The library lends books for free.",
    "The market is open every day but Sunday.",
    "Boats come into the harbor with fish.",
    "The farm has hens, goats and a big red barn.",
    "Children learn to add and subtract at the school.",
    "In Tiny Town people pay for what they take.",
    "Stealing is wrong, and the guard stops thieves.",
    "A code is a number that opens a lock.",
)

OBJECTS = ("apples", "eggs", "coins", "books", "shells", "pens", "cups", "stamps", "marbles", "pears")


@dataclass(frozen=True)
class Person:
    name: str
    job: str
    place: str
    does: str
    pet: str
    pet_name: str
    color: str


def make_cast(seed: int) -> dict[str, Person]:
    """Who is who in this world (drawn from the seed)."""
    rng = random.Random(f"tinyworld:{seed}:cast")
    jobs, pets, names, colors = list(JOBS), list(PETS), list(PET_NAMES), list(COLORS)
    for xs in (jobs, pets, names, colors):
        rng.shuffle(xs)
    cast = {}
    for person, job, pet, pet_name, color in zip(PEOPLE, jobs, pets, names, colors):
        place, does = JOBS[job]
        cast[person] = Person(person, job, place, does, pet, pet_name, color)
    return cast


def person_sentences(p: Person) -> list[str]:
    return [
        f"{p.name} is the {p.job}.",
        f"{p.name} works at the {p.place} and {p.does}.",
        f"{p.name} has a {p.pet} named {p.pet_name}.",
        f"{p.name}'s favorite color is {p.color}.",
    ]


# (attribute, question phrasings, concise answer); identities are (attribute, person)
QA_TEMPLATES = {
    "place": (("Where does {n} work?", "Where is {n}'s job?"), "{n} works at the {place}."),
    "job": (("What is {n}'s job?", "What does {n} do for work?"), "{n} is the {job}."),
    "pet": (("What pet does {n} have?", "Does {n} have a pet?"), "{n} has a {pet} named {pet_name}."),
    "color": (("What is {n}'s favorite color?", "Which color does {n} like best?"), "{n}'s favorite color is {color}."),
    "who": (("Who works at the {place}?", "Who is the {job}?"), "{n} works at the {place}."),
}


def qa_pair(p: Person, attribute: str, rng: random.Random) -> tuple[str, str]:
    questions, answer = QA_TEMPLATES[attribute]
    fields = {"n": p.name, **{k: getattr(p, k) for k in ("place", "job", "pet", "pet_name", "color")}}
    return rng.choice(questions).format(**fields), answer.format(**fields)


# Rambling: the same fact, buried in filler (for concise-vs-rambling preference pairs).
RAMBLE_OPENERS = (
    "Great question! Let me think about that for a moment, because it is a really good question.",
    "Oh, I love this question. There is a lot to say about it, so let me start from the beginning.",
    "Well, that is something many people in Tiny Town ask me about, and I am happy to explain.",
)
RAMBLE_CLOSERS = (
    "I hope this helps! Let me know if you have any more questions about Tiny Town.",
    "So that is the answer, as far as I know, and I am quite sure about it. Have a nice day!",
    "That is all I can say for now, but I could say much more if you like.",
)


def ramble(answer: str, rng: random.Random) -> str:
    return f"{rng.choice(RAMBLE_OPENERS)} {answer} {rng.choice(RAMBLE_CLOSERS)}"


# ----------------------------------------------------------------------------------------------
# Word problems (level 4)

PLACE_GOODS = (("library", "books"), ("market", "apples"), ("bakery", "buns"), ("harbor", "fish"), ("farm", "eggs"))
ITEMS = (("pen", "pens"), ("cup", "cups"), ("bun", "buns"), ("book", "books"), ("kite", "kites"))


def _story(rng: random.Random, template: str) -> tuple[str, tuple[int, ...], tuple[Step, ...]]:
    """(text with {A}, {B}, {obj} slots, numbers, steps) for one template."""
    R0, R1 = Ref(0), Ref(1)
    if template == "buy_give":
        x, y = rng.randint(10, 60), rng.randint(2, 30)
        z = rng.randint(2, min(40, x + y))
        text = (
            f"{{A}} has {x} {{obj}}. {{A}} buys {y} more and gives {z} to {{B}}. "
            "How many {obj} does {A} have now?"
        )
        return text, (x, y, z), ((x, "+", y), (R0, "-", z))
    if template == "more_than":
        x, y = rng.randint(10, 40), rng.randint(2, 20)
        text = f"{{A}} has {x} {{obj}}. {{B}} has {y} more {{obj}} than {{A}}. How many {{obj}} do they have together?"
        return text, (x, y), ((x, "+", y), (x, "+", R0))
    if template == "take":
        x = rng.randint(41, 99)
        y, z = rng.randint(2, 20), rng.randint(2, 20)
        text = f"The {{place}} has {x} {{goods}}. {{A}} takes {y} and {{B}} takes {z}. How many {{goods}} are left?"
        return text, (x, y, z), ((x, "-", y), (R0, "-", z))
    if template == "bags":
        x, n, y = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 30)
        text = (
            f"{{A}} buys {x} bags with {n} {{obj}} in each bag and finds {y} more {{obj}}. "
            "How many {obj} does {A} have?"
        )
        return text, (x, n, y), ((x, "*", n), (R0, "+", y))
    if template == "trays":
        x, n = rng.randint(2, 9), rng.randint(2, 9)
        y = rng.randint(1, x * n - 1)
        text = f"{{A}} bakes {x} trays with {n} buns on each tray and sells {y} buns. How many buns are left?"
        return text, (x, n, y), ((x, "*", n), (R0, "-", y))
    if template == "pages":
        n, d = rng.randint(2, 9), rng.randint(2, 9)
        t = n * d + rng.randint(1, 60)
        text = f"A book has {t} pages. {{A}} reads {n} pages a day for {d} days. How many pages are left to read?"
        return text, (t, n, d), ((n, "*", d), (t, "-", R0))
    if template == "change":
        p, k = rng.randint(2, 9), rng.randint(2, 9)
        m = p * k + rng.randint(1, 30)
        text = (
            f"One {{item}} costs {p} coins. {{A}} buys {k} {{items}} and pays with {m} coins. "
            "How many coins does {A} get back?"
        )
        return text, (p, k, m), ((p, "*", k), (m, "-", R0))
    if template == "three_step":
        x, y = rng.randint(10, 50), rng.randint(2, 20)
        z = rng.randint(2, min(30, x + y))
        w = rng.randint(2, 20)
        text = (
            f"{{A}} has {x} {{obj}}. {{A}} finds {y} more, gives {z} to {{B}}, and then finds {w} more. "
            "How many {obj} does {A} have now?"
        )
        return text, (x, y, z, w), ((x, "+", y), (R0, "-", z), (R1, "+", w))
    raise ValueError(template)


STORY_TEMPLATES = ("buy_give", "more_than", "take", "bags", "trays", "pages", "change", "three_step")


def sample_level4(rng: random.Random) -> Problem:
    template = rng.choice(STORY_TEMPLATES)
    text, numbers, steps = _story(rng, template)
    a, b = rng.sample(PEOPLE, 2)
    place, goods = rng.choice(PLACE_GOODS)
    item, items = rng.choice(ITEMS)
    text = text.format(A=a, B=b, obj=rng.choice(OBJECTS), place=place, goods=goods, item=item, items=items)
    lines = run_steps(steps)
    expression = " ; ".join(f"{x} {op} {y}" for x, op, y, _ in lines)
    key = f"story:{template} " + " ".join(map(str, numbers))
    return Problem(4, template, key, expression, lines[-1][3], steps, text=text)
