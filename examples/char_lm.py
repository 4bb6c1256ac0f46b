"""A tiny character-level causal language model, trained as a resumable run: nothing is downloaded.

    python examples/char_lm.py --log lm.db --max-steps 200

The text is built here from a seeded toy grammar.  The model is a two-layer causal transformer (about 0.1M
parameters) whose outputs are (batch, time, vocabulary) logits, so the loss is ``cross_entropy`` over the
time axis and the metric is a per-character accuracy written for that shape.  Training runs in chunks of 10
optimizer steps, each a committed, resumable step, with a per-step warm-up + cosine learning-rate schedule
(``scheduler_interval="step"``), gradient clipping (``grad_clip``), and early stopping within a step budget
(``early_stopping(...) | max_steps(...)``).  At the end the best checkpoint is loaded and generates text from a
prompt, sampling with a seeded generator.

The run is deterministic: kill it at any moment and run the same command again, and it ends with the same last
line; run it on a finished log and it prints that line again.  The last line is one JSON object:
``{"run_id", "status", "steps", "best_val_loss", "sample", ...}``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from fsmtrain.stopping import early_stopping, max_steps, setting
from fsmtrain.train import Resources, Trainer, training_machine

BLOCK = 32  # characters of context
PROMPT = "the cat "


def corpus(seed: int = 7, sentences: int = 600) -> str:
    """Sentences from a toy grammar (a seeded RNG: the same text every time)."""
    rng = random.Random(seed)
    subjects = ["the cat", "the dog", "a bird", "my friend", "the old man", "a child"]
    verbs = ["sees", "likes", "follows", "finds", "draws", "calls"]
    objects = ["the moon", "a red ball", "the river", "some bread", "the garden", "a small boat"]
    ends = [".", " today.", " again.", " at night.", " in the rain."]
    return " ".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(ends)}"
                    for _ in range(sentences))


TEXT = corpus()
VOCAB = sorted(set(TEXT))
INDEX = {c: i for i, c in enumerate(VOCAB)}


def windows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every BLOCK-character window (stride BLOCK // 2): inputs, and the same shifted by one (the targets)."""
    starts = range(0, len(ids) - BLOCK - 1, BLOCK // 2)
    x = torch.stack([ids[s:s + BLOCK] for s in starts])
    y = torch.stack([ids[s + 1:s + BLOCK + 1] for s in starts])
    return x, y


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.position = torch.nn.Embedding(BLOCK, width)
        layer = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.1, batch_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(width, vocab)
        self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(BLOCK), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.embed(x) + self.position(torch.arange(t, device=x.device))
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(h)  # (batch, time, vocabulary)


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """cross_entropy over every position: (B, T, V) logits against (B, T) indices."""
    return F.cross_entropy(logits.transpose(1, 2), targets)


def char_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == targets).float().mean()


def build(state):
    ids = torch.tensor([INDEX[c] for c in TEXT])
    cut = int(len(ids) * 0.9)
    model = TinyLM(len(VOCAB))
    opt = torch.optim.AdamW(model.parameters(), lr=state["lr"], weight_decay=0.01)
    total, warmup = state["max_steps"], max(1, state["max_steps"] // 10)

    def warmup_cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine)
    return Resources(model=model, optimizer=opt, scheduler=sched, scheduler_interval="step", grad_clip=1.0,
                     loss_fn=sequence_loss, train_data=windows(ids[:cut]), val_data=windows(ids[cut:]),
                     batch_size=32)


def machine():
    stop = early_stopping("val_loss", patience=setting("patience")) | max_steps(setting("max_steps"))
    return training_machine(stop, name="char_lm", every=10, evaluate_every="20 steps",
                            metrics={"char_acc": char_accuracy},
                            initial={"lr": 3e-3, "max_steps": 200, "patience": 5, "seed": 0})


@torch.no_grad()
def generate(model: torch.nn.Module, prompt: str = PROMPT, length: int = 40, seed: int = 0) -> str:
    """Sample ``length`` characters after ``prompt`` (temperature 0.8, a seeded generator: the same text)."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ids = [INDEX[c] for c in prompt]
    for _ in range(length):
        logits = model(torch.tensor([ids[-BLOCK:]]))[0, -1] / 0.8
        ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g)))
    return "".join(VOCAB[i] for i in ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", default="lm.db", help="the event log (created if missing)")
    ap.add_argument("--max-steps", type=int, default=200, help="the step budget of a new run")
    ap.add_argument("--patience", type=int, default=5, help="evaluations without a better val_loss before stopping")
    args = ap.parse_args()
    if args.max_steps < 1 or args.patience < 1:
        ap.error("--max-steps and --patience must be >= 1")
    torch.set_num_threads(1)
    with Trainer(machine(), build, log=args.log) as trainer:
        runner = trainer.fit({"max_steps": args.max_steps, "patience": args.patience})
        state = runner.state
        best = state["best"]
        sample = generate(trainer.load(runner.run_id, "best").model)
    print(json.dumps({"run_id": runner.run_id, "status": runner.status, "steps": state["steps"],
                      "epochs": state["epoch"], "best_val_loss": best["value"], "best_epoch": best.get("epoch"),
                      "val_char_acc": state["val_char_acc"][-1], "sample": sample}))


if __name__ == "__main__":
    main()
