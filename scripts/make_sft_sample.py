"""Write data/sft_sample/{train,eval}.jsonl: a small, deterministic instruction set for offline SFT runs.

Four string tasks a tiny model can learn in minutes (reverse, uppercase, count, sort), so the demo's loss and
perplexity fall visibly; the numbers mean nothing about real instruction tuning.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("apple river stone cloud tiger lemon piano garden rocket candle silver forest window orange "
         "planet bridge coffee dragon marble pencil summer winter yellow castle").split()


def example(rng: random.Random) -> dict:
    words = rng.sample(WORDS, rng.randint(2, 4))
    kind = rng.choice(("reverse", "upper", "count", "sort"))
    if kind == "reverse":
        return {"prompt": f"Reverse the order of these words: {' '.join(words)}", "response": " ".join(words[::-1])}
    if kind == "upper":
        return {"prompt": f"Write in capital letters: {' '.join(words)}", "response": " ".join(words).upper()}
    if kind == "count":
        return {"prompt": f"How many words are there in: {' '.join(words)}", "response": str(len(words))}
    return {"prompt": f"Sort these words alphabetically: {' '.join(words)}", "response": " ".join(sorted(words))}


def main(out: Path = Path(__file__).resolve().parents[1] / "data" / "sft_sample") -> None:
    rng = random.Random(0)
    rows = [example(rng) for _ in range(320)]
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:256]), ("eval", rows[256:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))


if __name__ == "__main__":
    main()
