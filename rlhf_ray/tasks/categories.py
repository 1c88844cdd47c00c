"""The categories task: "Which of these is a fruit: hammer, plum, egypt, violin? Answer with one word."
(the prompts carry their ``answer``; ``rewards.final_word`` checks a completion against it). ``tasks``
writes its files.

After SFT, SmolLM2-135M picks the right word about half the time (the rest: a distractor, or a word not
offered), while whether a word belongs to a category is what a small sentence encoder such as the
default reward model already represents: a learned reward model can rank the policy's answers here,
which it cannot for sums (docs/tiny-run.md).
"""
from __future__ import annotations

import math
import random

from rlhf_ray.tasks.base import Task

# Each word in one category only, so that a question has exactly one right answer.
WORDS = {
    "fruit": "apple banana cherry grape lemon mango peach pear plum melon kiwi apricot".split(),
    "animal": "horse tiger rabbit zebra camel wolf donkey goat lion monkey sheep deer".split(),
    "colour": "red blue green yellow purple pink brown violet grey black white crimson".split(),
    "vehicle": "car bus truck bicycle train tractor scooter taxi van motorcycle tram wagon".split(),
    "tool": "hammer saw drill wrench shovel chisel pliers axe rake screwdriver ladder spanner".split(),
    "musical instrument": "guitar piano violin drum flute trumpet harp cello banjo saxophone clarinet organ".split(),
    "body part": "arm leg knee elbow finger shoulder ankle wrist neck chin thumb toe".split(),
    "country": "france japan brazil canada egypt india mexico spain kenya norway peru chile".split(),
    "drink": "coffee tea juice milk water soda wine beer lemonade cocoa cider smoothie".split(),
    "piece of furniture": "chair table sofa bed desk shelf stool bench cabinet dresser couch wardrobe".split(),
}


def problem(rng: random.Random, options: int = 4) -> tuple[str, str]:
    """One word of a category among ``options - 1`` words of other categories, in random order."""
    category = rng.choice(list(WORDS))
    answer = rng.choice(WORDS[category])
    others = [w for c, words in WORDS.items() if c != category for w in words]
    choices = rng.sample(others, options - 1) + [answer]
    rng.shuffle(choices)
    article = "an" if category[0] in "aeiou" else "a"
    return f"Which of these is {article} {category}: {', '.join(choices)}? Answer with one word.", answer


def distinct(options: int) -> int:
    """How many different questions ``problem`` can draw (orderings of the same words count apart)."""
    per_category = [len(w) * math.perm(sum(map(len, WORDS.values())) - len(w), options - 1) * options
                    for w in WORDS.values()]
    return sum(per_category)


def solution(question: str, answer: str) -> str:
    return f"{answer.capitalize()}."


def wrong_solution(question: str, answer: str, rng: random.Random) -> str:
    """A rejected answer: one of the question's other words."""
    offered = question.split(": ", 1)[1].split("?")[0].split(", ")
    return solution(question, rng.choice([w for w in offered if w != answer]))


def _check(task) -> list[tuple[str, str]]:
    return [] if 2 <= task.options <= 10 else [("options", f"{task.options} must be between 2 and 10")]


TASK = Task(problem=lambda rng, task: problem(rng, task.options), solution=solution, wrong=wrong_solution,
            distinct=lambda task: distinct(task.options), checker="rlhf_ray.core.rewards:final_word", check=_check)
