"""The model card of a trained student (`final/README.md`): what it is and how it was made.

Written by `omniopd.train.finish` in place of TRL's generic GRPO card (which names no base
model, says "trained with GRPO" and cites DeepSeekMath). It states the base model (a portable
id: a packaged model's hub id, never a local cache path), the method and its paper, the
teacher, the data, the steps and the teacher spend, in the hub's card format (YAML front
matter + Markdown), so the directory can be pushed to a hub as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PAPERS = {
    "omniopd": ("OmniOPD: Logit-Free On-Policy Distillation via Speculative Verification", "2606.01476"),
    "sft": ("Sequence-Level Knowledge Distillation (SFT on teacher solutions)", "1606.07947"),
    "opd": ("On-Policy Distillation (Thinking Machines; GKD with lambda = 1)", None),
    "sg-opd": ("Sign-Gated On-Policy Distillation", "2606.09304"),
    "tropd": ("Trust-Region On-Policy Distillation", "2606.01249"),
}


def model_card(cfg, *, base_model: str, steps: int, teacher_samples: int, teacher_usd: float,
               samples_by_teacher: dict[str, int], adapter: bool, prompts: int | None = None) -> str:
    """The card's text (see the module docstring)."""
    title, arxiv = PAPERS[cfg.method.name]
    data = cfg.data.path if cfg.data.path != "demo" else "omniopd's packaged demo prompts (24 GSM8K training problems)"
    hub_data = "/" in cfg.data.path and not Path(cfg.data.path).expanduser().exists()
    front: dict[str, Any] = {
        "base_model": base_model,
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["omniopd", "distillation", "on-policy-distillation", "trl", *(["lora"] if adapter else [])],
    }
    if hub_data:
        front["datasets"] = [cfg.data.path]
    by = ", ".join(f"{n} from `{t}`" for t, n in sorted(samples_by_teacher.items())) or "none"
    paper = f"[{title}](https://arxiv.org/abs/{arxiv})" if arxiv else title
    what = "a LoRA adapter for" if adapter else "a fine-tuned version of"
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {Path(cfg.output.dir).name}", "",
        f"This model is {what} [`{base_model}`]({_link(base_model)}), distilled from the teacher "
        f"`{cfg.teacher.spec}` with omniopd's `{cfg.method.name}` method ({paper}) on top of TRL.", "",
        "## Training", "",
        "| | |", "| --- | --- |",
        f"| base model | `{base_model}` |",
        f"| method | `{cfg.method.name}` — {paper} |",
        f"| teacher | `{cfg.teacher.spec}` |",
        f"| data | `{data}`" + (f" (config `{cfg.data.config}`)" if cfg.data.config else "")
        + f", split `{cfg.data.split}`, field `{cfg.data.prompt_field}`" + (f", {prompts} prompts" if prompts else "") + " |",
        f"| optimizer steps | {steps} (prompts per step {cfg.learner.prompts_per_step}, "
        f"{cfg.student.generations} completions each) |",
        f"| teacher samples | {teacher_samples} ({by}) |",
        f"| teacher spend | ${teacher_usd:.4f} |",
        f"| chunk C / chunks per completion M / samples N | {cfg.scheduler.chunk_tokens} / "
        f"{cfg.scheduler.chunks_per_completion} / {cfg.teacher.samples} |",
        f"| alpha / beta / learning rate | {cfg.scorer.alpha} / {cfg.learner.beta} / {cfg.learner.learning_rate} |",
        f"| similarity | `{cfg.scorer.similarity}` |",
        f"| seed | {cfg.learner.seed} |", "",
        "The full resolved configuration is `config.yaml` in the run directory; per-step figures are in "
        "`metrics.jsonl`.", "",
        "## Use", "", "```python",
        *(["from peft import AutoPeftModelForCausalLM", "",
           'model = AutoPeftModelForCausalLM.from_pretrained("PATH/TO/final")'] if adapter else
          ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
           'model = AutoModelForCausalLM.from_pretrained("PATH/TO/final")',
           'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/final")']),
        "```", "",
        "Or evaluate it: `omniopd eval --model PATH/TO/RUN --data openai/gsm8k --data-config main --split test`.", "",
        "## Citation", "",
        *([f"arXiv:{arxiv} — {title}."] if arxiv else [title + "."]), "",
    ]
    return "\n".join(lines)


def _link(base_model: str) -> str:
    return base_model if base_model.startswith("/") else f"https://huggingface.co/{base_model}"


def write_model_card(final_dir: Path, cfg, **facts: Any) -> Path:
    path = Path(final_dir) / "README.md"
    path.write_text(model_card(cfg, **facts), encoding="utf-8")
    return path
