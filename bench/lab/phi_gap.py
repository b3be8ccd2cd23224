"""Does phi separate a correct chunk from the same chunk with one wrong number?

    python -m bench.lab.phi_gap runs/lab/small/teacher-<key>

For 60 held-out problems: an 8-token chunk of the reference solution that holds one
result, and the same chunk with that number off by 1-2; the teacher continues the reference
prefix N=8 times (through the provider interface); prints mean phi for each and the gap.
"""
import asyncio, random, statistics, sys, torch
from pathlib import Path
from transformers import LlamaForCausalLM
from bench.lab import tasks, tokenizer as labtok
from bench.lab.run import SCALES
from omniopd.similarity import build_similarity
from omniopd.scoring import trim_to_chars
from providers.local import LocalTeacher
from providers.base import Message, TeacherRequest


def main() -> None:
    torch.set_num_threads(1)
    s = SCALES["small"]
    train, test = tasks.make_splits(1234, s.n_train, s.n_test)
    tok = labtok.train_tokenizer(tasks.corpus(train))
    teacher = LlamaForCausalLM.from_pretrained(sys.argv[1]).eval()
    lt = LocalTeacher(teacher, tok)
    rng = random.Random(0)
    phis = {n: build_similarity(n) for n in ("edit", "rouge1", "embedding")}
    C, N = 8, 8
    reqs, chunks = [], []
    for p in test[:60]:
        words = p.solution.split(" ")
        eqs = [i for i, w in enumerate(words) if w == "=" ]
        i = rng.choice(eqs)  # chunk starts 3 tokens before an '=' so it contains the result
        st = max(1, i - 3)
        good = words[st:st + C]
        j = i + 1 - st
        bad = list(good); bad[j] = str(int(bad[j]) + rng.choice([-2, -1, 1, 2]))
        prefix = " ".join(words[:st])
        reqs.append(TeacherRequest((Message("user", p.question),), prefix, N, 11, temperature=1.0))
        chunks.append((" ".join(good), " ".join(bad)))
    async def go():
        return await asyncio.gather(*(lt.sample(r) for r in reqs))
    torch.manual_seed(0)
    outs = asyncio.run(go())
    for name, phi in phis.items():
        g, b = [], []
        for (good, bad), ss in zip(chunks, outs):
            ts = [trim_to_chars(x.text.strip(), len(good), 0.2) for x in ss]
            g.append(statistics.fmean(phi([good], [ts])[0])); b.append(statistics.fmean(phi([bad], [ts])[0]))
        d = [x - y for x, y in zip(g, b)]
        print(f"{name:10s} k/N correct {statistics.fmean(g):.3f}  one-number-wrong {statistics.fmean(b):.3f}  "
              f"gap {statistics.fmean(d):.3f} (sd of per-chunk k/N {statistics.stdev(g):.3f})")
    print("example:", chunks[0], "| teacher:", [x.text for x in outs[0][:3]])



if __name__ == "__main__":
    main()
