"""Why the paper's chunk loss collapses a student, measured on one batch (issue 9's diagnosis).

    python -m bench.signal_gradients [--teacher-steps 1500] [--student-steps 500] [--prompts 32]

On the lab's arithmetic task (bench/lab/tasks.py, word-level tokenizer): SFT a teacher and a
mid-level student of the lab student's size (cached under runs/signal-gradients/), sample G = 4
student completions per prompt at temperature 1, audit them (C = 8, M = 2, N = 4 teacher
samples through the provider interface), and compare, on that one batch:

1. the **constant-pi_hat term**: the gradient of c * sum log pi(own chunk) is a score function
   with expectation zero, so averaged over n samples its norm falls like 1/sqrt(n) — it is
   noise, which Adam scales to a full-size step;
2. how well pi_hat tells chunks of right completions from chunks of wrong ones, per phi;
3. each signal's gradient direction against two references: SFT on the reference solutions
   of the same prompts (known to help in the lab) and the verifier policy gradient
   sum (r - mean_group r) * grad log pi(completion) (the unbiased direction of accuracy).

4. (`--simulate`, seconds, no models) the same update on a 10-way categorical "student" whose
   right answer starts at p = 0.15: reward pi_hat = 0.45 + gap * [right] + N(0, 0.1) noise, G = 16
   samples a step, Adam: how p(right) and the entropy move with and without a group baseline,
   at the edit-phi gap (0.04) and the numbers-phi gap (0.33).

Prints markdown tables; figures are for one batch and one seed (cosines in a 10^5-dimensional
weight space: compare them with each other, not with 1).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from bench.lab import nets, tasks, tokenizer as labtok
from bench.lab.run import SCALES
from omniopd.answers import is_correct
from omniopd.evaluate import evaluate
from omniopd.methods.baseline import baselined_pihat_F
from omniopd.pipeline import Pipeline
from omniopd.rollouts import generate_rollouts
from omniopd.scoring import k_F, pibar_F, pihat_F
from omniopd.similarity import build_similarity
from providers.local import LocalTeacher
from providers.whitebox import position_ids_B_L
from scheduler import ForkScheduler


def _model(tok, size, steps, path: Path, train, seed):
    from transformers import LlamaForCausalLM

    if (path / "config.json").is_file():
        return LlamaForCausalLM.from_pretrained(str(path)).eval()
    m = nets.build_model(size, tok, seed)
    nets.sft(m, tok, [(p.question, p.solution) for p in train], steps=steps, batch_size=32, lr=3e-3, seed=seed)
    m.save_pretrained(str(path))
    return m.eval()


def _logp_B_T(model, prompt_ids, prompt_mask, ids, mask):
    """Per-token log pi of `ids` after the prompts, with gradients."""
    x = torch.cat([prompt_ids, ids], 1)
    m = torch.cat([prompt_mask, mask], 1)
    T = ids.size(1)
    logits = model(input_ids=x, attention_mask=m, position_ids=position_ids_B_L(m)).logits[:, -T - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask


def _grad(model, loss) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gs, params)])


def _cos(a, b) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-12))


def simulate(gap: float, baseline: bool, lr: float, steps: int = 300, seeds: int = 50, G: int = 16,
             V: int = 10) -> tuple[float, float]:
    """(mean p(right), mean entropy) after `steps` REINFORCE updates on a categorical, over seeds."""
    ps, hs = [], []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        z = torch.zeros(V)
        z[0] = math.log(0.15 * (V - 1) / 0.85)  # p(right = 0) = 0.15, the rest uniform
        z = z.requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            logp = torch.log_softmax(z, -1)
            y = torch.multinomial(logp.exp().detach(), G, replacement=True, generator=g)
            r = 0.45 + gap * (y == 0).float() + 0.1 * torch.randn(G, generator=g)
            a = r - r.mean() if baseline else r
            opt.zero_grad()
            (-(a * logp[y]).mean()).backward()
            opt.step()
        p = torch.softmax(z.detach(), -1)
        ps.append(float(p[0]))
        hs.append(float(-(p * p.clamp(min=1e-12).log()).sum()))
    return statistics.fmean(ps), statistics.fmean(hs)


def print_simulation() -> None:
    h0 = -(0.15 * math.log(0.15) + 0.85 * math.log(0.85 / 9))
    print(f"\ncategorical student, 10 answers, p(right) = 0.15 and entropy {h0:.2f} at the start; 300 steps of G = 16, "
          "Adam; 50 seeds\n\n| reward gap (right vs wrong) | baseline | lr | p(right) after | entropy after |\n"
          "| --- | --- | --- | --- | --- |")
    for gap in (0.04, 0.33):
        for baseline in (False, True):
            for lr in (0.01, 0.05):
                p, h = simulate(gap, baseline, lr)
                print(f"| {gap} | {'group mean' if baseline else 'none (the paper)'} | {lr} | {p:.3f} | {h:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher-steps", type=int, default=1500)
    ap.add_argument("--student-steps", type=int, default=500)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--workdir", default="runs/signal-gradients")
    ap.add_argument("--rollout-seed", type=int, default=0, help="seed of the student's rollouts (the batch)")
    ap.add_argument("--simulate", action="store_true", help="only the categorical simulation (part 4)")
    args = ap.parse_args()
    if args.simulate:
        print_simulation()
        return
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    s = SCALES["small"]
    train, test = tasks.make_splits(1234, s.n_train, s.n_test)
    tok = labtok.train_tokenizer(tasks.corpus(train))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    teacher = _model(tok, s.student, args.teacher_steps, work / f"teacher-{args.teacher_steps}", train, 1)
    student = _model(tok, s.student, args.student_steps, work / f"student-{args.student_steps}", train, 0)
    rows = [{"prompt": [{"role": "user", "content": p.question}], "answer": str(p.answer)} for p in test[:100]]
    acc = {n: evaluate(m, tok, rows, max_new_tokens=64, batch_size=50, progress=False, keep_texts=False).greedy_accuracy
           for n, m in (("teacher", teacher), ("student", student))}
    print(f"held-out greedy accuracy (100 problems): teacher {acc['teacher']:.3f}, student {acc['student']:.3f} "
          f"({time.perf_counter() - t0:.0f} s so far)")

    G = 4
    probs = train[args.rollout_seed * args.prompts:(args.rollout_seed + 1) * args.prompts]
    prompts = [[{"role": "user", "content": p.question}] for p in probs for _ in range(G)]
    torch.manual_seed(args.rollout_seed)
    ro = generate_rollouts(student, tok, prompts, max_new_tokens=64)
    r_B = torch.tensor([float(is_correct(t, str(p.answer))) for t, p in zip(ro.completions, (q for q in probs for _ in range(G)))])
    print(f"student rollouts at T=1: {float(r_B.mean()):.3f} correct ({len(prompts)} completions)")
    lt = LocalTeacher(teacher, tok)
    pipe = Pipeline(lt, tok, ForkScheduler(8, 2), build_similarity("edit"), samples=4, alpha=1.0)
    audit = pipe.audit(ro, step=0)
    pipe.close()
    chunks = [c for c in audit.chunks if c.phi]
    rows_F = torch.tensor([c.row for c in chunks])
    lp0 = ro.logprobs_B_T.double()
    pibar = pibar_F(torch.tensor([float(lp0[c.row, c.start:c.start + c.length].sum()) for c in chunks]),
                    torch.tensor([float(c.length) for c in chunks], dtype=torch.float64))
    right_F = r_B[rows_F].bool()
    eos = tok.eos_token_id
    ids = ro.completion_ids
    in_chunk = sum(int((ids[c.row, c.start:c.start + c.length] == eos).any()) for c in chunks)
    n_eos = int(((ids == eos) & ro.completion_mask.bool()).sum())
    audited = sum(c.length for c in chunks)
    print(f"{len(chunks)} audited chunks: end-of-turn is {in_chunk / audited:.1%} of audited tokens and "
          f"{n_eos / float(ro.completion_mask.sum()):.1%} of completion tokens (the chunk term's positive weight "
          "reaches stopping less often than continuing)")

    # --- 2. does pi_hat see which completions are right? ---------------------------------------------
    print("\n| phi | mean pi_hat, chunks of right completions | of wrong ones | gap | wrong-completion chunks "
          "pushed down (group baseline) |\n| --- | --- | --- | --- | --- |")
    pihats = {}
    for name in ("edit", "rouge1", "embedding", "numbers", "token_f1"):
        phi = build_similarity(name, tokenizer=tok)
        k, n = k_F(phi([c.student_text for c in chunks], [c.teacher_texts for c in chunks]))
        ph = pihat_F(k, n, pibar, 1.0)
        pihats[name] = ph
        a = baselined_pihat_F(ph, rows_F, G, "group")
        print(f"| {name} | {float(ph[right_F].mean()):.3f} | {float(ph[~right_F].mean()):.3f} | "
              f"{float(ph[right_F].mean() - ph[~right_F].mean()):.3f} | {float((a[~right_F] < 0).double().mean()):.2f} |")

    # --- 1. the constant-pi_hat term is noise ------------------------------------------------------------
    one = [[{"role": "user", "content": probs[0].question}]] * 256
    torch.manual_seed(1)
    many = generate_rollouts(student, tok, one, max_new_tokens=64)
    lp = _logp_B_T(student, many.prompt_ids, many.prompt_mask, many.completion_ids, many.completion_mask).sum(-1)
    norms = {}
    for n_s in (4, 16, 64, 256):
        norms[n_s] = float(_grad(student, 0.5 * lp[:n_s].mean()).norm())
    print("\nconstant reward c = 0.5 on the student's own completions of one prompt: |mean of c * grad log pi| over n "
          "samples: " + ", ".join(f"n={k}: {v:.3f}" for k, v in norms.items())
          + f"  (x sqrt(n): " + ", ".join(f"{v * math.sqrt(k):.2f}" for k, v in norms.items()) + ")")

    # --- 3. directions ------------------------------------------------------------------------------------
    lp_B_T = _logp_B_T(student, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask)
    n_tok = float(ro.completion_mask.sum())

    def chunk_grad(adv_F):
        loss = sum(float(a) * lp_B_T[c.row, c.start:c.start + c.length].sum() for c, a in zip(chunks, adv_F))
        return _grad(student, loss / n_tok)

    enc = nets.encode_pairs(tok, [(p.question, p.solution) for p in probs])
    batch = nets._collate(enc, tok.pad_token_id)
    g_sft = _grad(student, -student(**batch).loss)
    r_adv = r_B - r_B.view(-1, G).mean(1).repeat_interleave(G)
    g_rl = _grad(student, (r_adv.unsqueeze(1) * lp_B_T).sum() / n_tok)
    signals = {}
    for name in ("edit", "embedding", "numbers"):
        ph = pihats[name]
        signals[f"paper loss, phi={name}"] = chunk_grad(ph)
        signals[f"  its constant part (mean pi_hat on every chunk), phi={name}"] = chunk_grad(torch.full_like(ph, float(ph.mean())))
        signals[f"group baseline, phi={name}"] = chunk_grad(baselined_pihat_F(ph, rows_F, G, "group"))
    # fork imitation: the teacher's samples after the student's prefixes, weight 1/N each
    from omniopd.methods.imitation import imitation_rows
    from omniopd.methods.rows import append_rows

    comp = [ro.completion_ids[b, :n].tolist() for b, n in enumerate(ro.lengths)]
    im = imitation_rows(chunks, comp, tok, 1.0, 64)
    with torch.no_grad():
        ext = append_rows(ro, im.source_rows, im.contexts, im.completions, tok, student)
    B = ro.completion_ids.size(0)
    lp_im = _logp_B_T(student, ext.prompt_ids[B:], ext.prompt_mask[B:], ext.completion_ids[B:], ext.completion_mask[B:])
    signals["fork imitation (w = 1)"] = _grad(student, (torch.tensor(im.advantages).unsqueeze(1) * lp_im).sum() / n_tok)
    print("\n| signal (one batch) | cos with SFT on references | cos with verifier policy gradient | gradient norm |\n"
          "| --- | --- | --- | --- |")
    print(f"| verifier policy gradient (r - group mean) | {_cos(g_rl, g_sft):.3f} | 1 | {float(g_rl.norm()):.3f} |")
    for name, g in signals.items():
        print(f"| {name} | {_cos(g, g_sft):.3f} | {_cos(g, g_rl):.3f} | {float(g.norm()):.3f} |")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
