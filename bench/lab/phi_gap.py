"""Does phi separate a correct chunk from the same chunk with one wrong number?

    python -m bench.lab.phi_gap [runs/lab/small/teacher-<key> | reference] [--phis edit,numbers,...]

For 60 held-out problems: an 8-token chunk of the reference solution that holds one
result, and the same chunk with that number off by 1-2; N=8 teacher continuations of the
reference prefix; prints, per phi, the mean k/N for each chunk and the gap.

The teacher is a trained lab teacher directory (its samples go through the provider
interface, at temperature 1), or `reference` (the default, needs no trained model): every
"sample" is the reference solution's own continuation of the prefix — a teacher that always
writes the right text, so the gap is phi's own sensitivity to one wrong number, without the
teacher's sampling noise. Run 1 of RESULTS.md measured edit / ROUGE-1 / embedding with the
trained teacher (gaps 0.042 / 0.184 / 0.042).
"""
import argparse
import asyncio
import random
import statistics

import torch

from bench.lab import tasks, tokenizer as labtok
from bench.lab.run import SCALES
from omniopd.config import SIMILARITY_CHOICES
from omniopd.scoring import trim_to_chars
from omniopd.similarity import build_similarity
from providers.base import Message, TeacherRequest
from providers.local import LocalTeacher


def chunks_and_prefixes(test, rng, C):
    """(question, prefix, correct chunk, one-number-wrong chunk, reference continuation) per problem."""
    out = []
    for p in test:
        words = p.solution.split(" ")
        eqs = [i for i, w in enumerate(words) if w == "="]
        i = rng.choice(eqs)  # chunk starts 3 tokens before an '=' so it contains the result
        st = max(1, i - 3)
        good = words[st:st + C]
        j = i + 1 - st
        bad = list(good)
        bad[j] = str(int(bad[j]) + rng.choice([-2, -1, 1, 2]))
        out.append((p.question, " ".join(words[:st]), " ".join(good), " ".join(bad), " " + " ".join(words[st:])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("teacher", nargs="?", default="reference", help="trained lab teacher directory, or 'reference'")
    ap.add_argument("--phis", default=",".join(SIMILARITY_CHOICES), help="comma-separated phi names")
    args = ap.parse_args()
    torch.set_num_threads(1)
    s = SCALES["small"]
    train, test = tasks.make_splits(1234, s.n_train, s.n_test)
    tok = labtok.train_tokenizer(tasks.corpus(train))
    names = [x.strip() for x in args.phis.split(",") if x.strip()]
    phis = {n: build_similarity(n, tokenizer=tok) for n in names}
    C, N = 8, 8
    items = chunks_and_prefixes(test[:60], random.Random(0), C)
    if args.teacher == "reference":
        samples = [[ref] * N for *_, ref in items]
    else:
        from transformers import LlamaForCausalLM

        lt = LocalTeacher(LlamaForCausalLM.from_pretrained(args.teacher).eval(), tok)
        reqs = [TeacherRequest((Message("user", q),), prefix, N, 11, temperature=1.0) for q, prefix, *_ in items]

        async def go():
            return await asyncio.gather(*(lt.sample(r) for r in reqs))

        torch.manual_seed(0)
        samples = [[x.text for x in ss] for ss in asyncio.run(go())]
    print(f"teacher: {args.teacher}; {len(items)} chunks of {C} tokens, N = {N}")
    print("| phi | k/N, correct chunk | k/N, one number wrong | gap | sd of per-chunk gap |")
    print("| --- | --- | --- | --- | --- |")
    for name, phi in phis.items():
        g, b = [], []
        for (_, _, good, bad, _), ss in zip(items, samples):
            ts = [trim_to_chars(x.strip(), len(good), 0.2) for x in ss]
            g.append(statistics.fmean(phi([good], [ts])[0]))
            b.append(statistics.fmean(phi([bad], [ts])[0]))
        d = [x - y for x, y in zip(g, b)]
        print(f"| {name} | {statistics.fmean(g):.3f} | {statistics.fmean(b):.3f} | {statistics.fmean(d):.3f} | "
              f"{statistics.stdev(d):.3f} |")
    q, prefix, good, bad, _ = items[0]
    print("example: prefix", repr(prefix), "| correct", repr(good), "| wrong", repr(bad), "| teacher", samples[0][:2])


if __name__ == "__main__":
    main()
