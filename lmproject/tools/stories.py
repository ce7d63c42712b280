"""A procedural generator of simple children's stories: the offline stand-in for TinyStories.

`make demo` cannot download TinyStories, so it trains on text made here: short stories in the same spirit
(a child or an animal, a place, a favourite thing, a small problem, a little dialogue, a happy ending),
assembled from hand-written sentence templates by a seeded random generator. It is NOT TinyStories: the
vocabulary and plots are far narrower, so losses on it are not comparable with TinyStories results.
`make data` downloads the real data set.

Documents are separated by `<|endoftext|>` on its own line, as in the TinyStories text files.

    python -m lmproject.tools.stories --out demo/stories.txt --size-mb 4 --seed 0
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from lmproject.atomic import atomic_write
from lmproject.errors import ArgumentParser, UserError, run_cli

SEPARATOR = "<|endoftext|>"

GIRLS = ["Lily", "Mia", "Sue", "Anna", "Zoe", "Ella", "Rosa", "Kim", "Nora", "Ivy", "Lucy", "Maya", "Tess"]
BOYS = ["Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Finn", "Omar", "Theo", "Eli", "Noah", "Raj", "Hugo"]
KINDS = {
    "she": ["little girl", "girl", "small girl", "cat", "bunny", "duck", "mouse", "bird"],
    "he": ["little boy", "boy", "small boy", "dog", "bear", "frog", "puppy", "fox"],
}
TRAITS = ["kind", "curious", "brave", "shy", "happy", "silly", "gentle", "busy", "clever", "sleepy"]
PLACES = {
    "the park": ["a big tree", "a swing", "a bench", "the slide"],
    "the forest": ["a tall tree", "a mossy log", "a bush", "a little path"],
    "the beach": ["a sand castle", "a big rock", "the waves", "a shell"],
    "the garden": ["the flowers", "a watering can", "the fence", "a little pond"],
    "the farm": ["the barn", "a hay pile", "the gate", "the tractor"],
    "the school": ["the playground", "a red door", "the sandbox", "a window"],
    "the kitchen": ["the table", "a big pot", "the cupboard", "the oven"],
    "the hill": ["a flat stone", "the top", "some tall grass", "an old fence"],
    "the river": ["a wooden bridge", "the water", "a boat", "some reeds"],
    "the zoo": ["the lion cage", "a pond with ducks", "a snack stand", "the big gate"],
}
THINGS = [
    ("ball", "red"),
    ("kite", "blue"),
    ("hat", "yellow"),
    ("toy boat", "little"),
    ("book", "big"),
    ("stone", "shiny"),
    ("balloon", "green"),
    ("teddy bear", "soft"),
    ("drum", "loud"),
    ("cup", "pink"),
    ("car", "fast"),
    ("blanket", "warm"),
    ("crayon", "purple"),
    ("bell", "tiny"),
    ("shell", "pretty"),
]
HELPERS = ["mom", "dad", "grandma", "grandpa", "the teacher", "a wise owl", "a friendly dog", "a big bear"]
FEELINGS_BAD = ["sad", "scared", "upset", "worried", "lonely"]
FEELINGS_GOOD = ["happy", "proud", "glad", "excited", "thankful"]
COLORS = ["red", "blue", "yellow", "green", "orange", "purple"]
WEATHER = ["The sun was bright", "It was a windy day", "Little clouds moved in the sky", "It was a warm day"]

OPENINGS = [
    "Once upon a time, there was a {trait} {kind} named {name}.",
    "One day, a {trait} {kind} named {name} went to {place}.",
    "There was once a {kind} called {name}. {He} was very {trait}.",
    "{name} was a {trait} {kind} who lived near {place}.",
]
LIKES = [
    "{He} had a {adj} {thing} that {he} loved very much.",
    "{His} favorite toy was a {adj} {thing}.",
    "{name} liked to play with {his} {adj} {thing} every day.",
]
SCENES = [
    "{weather}, so {name} took the {thing} to {place}.",
    "{weather}. {name} and {his} friend {friend} went to {place} to play.",
    "At {place}, {name} played near {spot} with {his} {thing}.",
]
CLOSINGS = [
    "From that day on, {name} {lesson}.",
    "{name} learned that {moral}.",
    "And {name} was {good} for the rest of the day.",
    "That night, {name} went to sleep with a big smile.",
]
LESSONS = [
    ("always shared {his} toys", "sharing makes everyone happy"),
    ("was never afraid to ask for help", "it is good to ask for help"),
    ("took good care of {his} {thing}", "we should take care of the things we love"),
    ("was a good friend to {friend}", "friends help each other"),
    ("was a little braver", "being brave is not so hard when you try"),
]

# A plot is a list of sentences (a tuple holds alternatives); a sentence opening with a quote is dialogue.
PLOTS = [
    [
        "But then the wind blew, and the {thing} went far away.",
        "{name} looked near {spot}, but {he} could not find it.",
        ("{He} felt {bad} and started to cry.", "{He} sat down on the ground, very {bad}."),
        '"Why are you crying?" asked {friend}.',
        '"I lost my {thing}," said {name}.',
        '"Don\'t worry, I will help you look," said {friend}.',
        "They looked and looked. At last, {friend} saw the {thing} behind {spot}.",
        '"Here it is!" {friend} said. {name} hugged {friend} and said, "Thank you!"',
    ],
    [
        "{friend} saw the {thing} and wanted to play with it too.",
        '"Can I play with your {thing}?" asked {friend}.',
        '"No, it is mine," said {name}. {friend} felt {bad} and walked away.',
        "Soon {name} was alone, and playing alone was not fun.",
        '{name} ran to {friend} and said, "I am sorry. Let\'s play together."',
        (
            "They took turns with the {thing} and laughed all afternoon.",
            "They played with the {thing} together until the sun went down.",
        ),
    ],
    [
        "Near {spot}, {name} heard a strange noise. {He} felt {bad}.",
        '"What is that?" {name} said in a small voice.',
        "{He} wanted to run home, but {he} took a deep breath and looked.",
        ("It was only a little kitten stuck in a bush!", "It was just a small bird that could not fly out!"),
        '"Poor little thing," said {name}. "I will help you."',
        "{name} gently helped it out, and it was free again. {He} was not {bad} anymore.",
    ],
    [
        "{name} wanted to climb up to {spot}, but it was too high.",
        "{He} tried once, and {he} tried again, but {he} fell down.",
        '"I can\'t do it," {name} said. {He} was {bad}.',
        'Then {helper} came and said, "Try one more time. Go slowly."',
        "{name} went slowly, one step at a time, and this time {he} made it!",
        '"I did it!" {name} shouted. {Helper} clapped and smiled.',
    ],
    [
        "{name} wanted to make a gift for {helper}.",
        ("{He} found some paper, a {color} crayon and some glue.", "{He} got paper and {color} paint."),
        "{He} drew a picture of {place} and put the {thing} in it too.",
        'When {helper} saw the picture, {helper_he} said, "It is beautiful! Thank you, {name}."',
        "{name} felt warm inside. Making gifts was the best.",
    ],
    [
        "Suddenly, dark clouds came and it began to rain.",
        '"Oh no, my {thing} will get wet!" said {name}.',
        '{friend} had a big umbrella. "Come under here," {friend} said.',
        "They stood under the umbrella and watched the rain fall on {spot}.",
        "When the rain stopped, they saw a rainbow over {place}.",
        '"Look, a rainbow!" said {name}. "It is so pretty!"',
    ],
    [
        "{name} saw a {kind2} sitting alone near {spot}. It looked {bad}.",
        '"Hello, I am {name}. What is your name?" {he} asked.',
        '"I am {friend}," said the {kind2} quietly. "I am new here and I have no friends."',
        (
            '"You can be my friend!" said {name}, and {he} showed {friend} the {thing}.',
            '{name} smiled and said, "Do you want to play with my {thing}?"',
        ),
        "Soon they were running and laughing together all over {place}.",
    ],
    [
        "{name} and {helper} wanted to bake cookies.",
        "They got flour, sugar, eggs and a little butter.",
        "{name} mixed everything in a big bowl. Some flour fell on {his} nose!",
        '"You look like a snowman," laughed {helper}. {name} laughed too.',
        ("The cookies came out warm and sweet.", "Soon the whole house smelled sweet and warm."),
        "{name} took some cookies to share with {friend} at {place}.",
    ],
    [
        "{name} broke the {thing} by mistake. It made a loud noise.",
        "{He} was {bad}. {He} did not want anyone to know.",
        'But {name} went to {helper} and said, "I broke my {thing}. I am sorry."',
        '{Helper} smiled and said, "Thank you for telling me the truth. We can fix it together."',
        "They fixed the {thing}, and it was as good as new.",
    ],
]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def generate_story(rng: random.Random) -> str:
    """One story: opening, a favourite thing, a scene, one plot with dialogue, and a closing line."""
    he = rng.choice(["she", "he"])
    name = rng.choice(GIRLS if he == "she" else BOYS)
    friend = rng.choice([n for n in GIRLS + BOYS if n != name])
    place = rng.choice(list(PLACES))
    thing, adj = rng.choice(THINGS)
    lesson, moral = rng.choice(LESSONS)
    words = {
        "name": name,
        "friend": friend,
        "place": place,
        "spot": rng.choice(PLACES[place]),
        "kind": rng.choice(KINDS[he]),
        "trait": rng.choice(TRAITS),
        "thing": thing,
        "adj": adj,
        "helper": rng.choice(HELPERS),
        "bad": rng.choice(FEELINGS_BAD),
        "good": rng.choice(FEELINGS_GOOD),
        "weather": rng.choice(WEATHER),
        "he": he,
        "his": "her" if he == "she" else "his",
        "him": "her" if he == "she" else "him",
    }
    words.update(He=_cap(words["he"]), His=_cap(words["his"]))
    words.update(Helper=_cap(words["helper"]), color=rng.choice(COLORS), kind2=rng.choice(KINDS[he]))
    words["helper_he"] = "he" if words["helper"] in ("dad", "grandpa") else "she"
    words["lesson"] = lesson.format(**words)
    words["moral"] = moral
    plot = [line if isinstance(line, str) else rng.choice(line) for line in rng.choice(PLOTS)]
    sentences = [rng.choice(OPENINGS), rng.choice(LIKES), rng.choice(SCENES), *plot]
    sentences.append(rng.choice(CLOSINGS))
    paragraphs, current = [], []
    for sentence in sentences:
        text = _cap(sentence.format(**words))
        if text.startswith('"') and current:  # dialogue opens a new paragraph
            paragraphs.append(" ".join(current))
            current = []
        current.append(text)
    paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def generate_stories(seed: int) -> Iterator[str]:
    """An endless, reproducible stream of stories for `seed`."""
    rng = random.Random(seed)
    while True:
        yield generate_story(rng)


def write_corpus(out: Path, size_mb: float, seed: int, progress: bool = True) -> int:
    """Write stories until `size_mb` MB (1e6 bytes) of UTF-8, atomically; returns the bytes written."""
    if size_mb <= 0:
        raise UserError(f"--size-mb must be positive, got {size_mb}")
    target = int(size_mb * 1e6)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out {out}: {out.parent} is not a folder") from None
    written = 0
    with (
        atomic_write(out) as f,
        tqdm(total=target, unit="B", unit_scale=True, desc=f"stories -> {out}", disable=not progress) as bar,
    ):
        for story in generate_stories(seed):
            chunk = f"{story}\n{SEPARATOR}\n"
            f.write(chunk)
            size = len(chunk.encode("utf-8"))
            written += size
            bar.update(size)
            if written >= target:
                break
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m lmproject.tools.stories --out FILE --size-mb N --seed S`."""
    p = ArgumentParser(
        prog="python -m lmproject.tools.stories",
        description="Write procedurally generated children's stories (a stand-in for TinyStories).",
    )
    p.add_argument("--out", type=Path, required=True, help="output text file")
    p.add_argument("--size-mb", type=float, default=4.0, help="size of the corpus in MB (1e6 bytes)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same text")
    args = p.parse_args(argv)

    def run() -> int:
        n = write_corpus(args.out, args.size_mb, args.seed)
        print(f"wrote {n:,} bytes of generated stories to {args.out}")
        return 0

    return run_cli(run, "lmproject.tools.stories")


if __name__ == "__main__":
    raise SystemExit(main())
