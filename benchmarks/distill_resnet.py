"""Knowledge distillation fashion-resnet56 -> a ResNet-20-shaped student vs the same student
trained from scratch with the same budget (same subset, epochs, batch, schedule, seed).

Arms (each a resumable Trainer run under ``--runs``):
  scratch  resnet20, random init (seed), cross-entropy on the labels
  kd       the same init, KDLoss(T, alpha) from the trained fashion-resnet56 (Hinton et al.)
  kd-init  resnet56 with blocks 1-2, 4-5, 7-8 of each stage dropped (DistilBERT-style init from
           the teacher; exactly ResNet-20's shapes), then the same KD

Every arm is evaluated on the 10 000 Fashion-MNIST test images; the training subset is drawn
from the 60 000 training images only. Writes benchmarks/results/distill_resnet.json.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/distill_resnet.py --subset 20000 \
        --epochs 3 [--resume]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from torchslim._io import write_json
from torchslim._machine import machine_facts
from torchslim.distill import DistillConfig, Distiller, drop_layers
from torchslim.distill.data import training_data
from torchslim.distill.student import parse_indices
from torchslim.train import TrainConfig, Trainer
from torchslim.train._checkpoint import exists as checkpoint_exists
from torchslim.zoo import architectures, get

RESULTS = Path(__file__).parent / "results" / "distill_resnet.json"
ARMS = ("scratch", "kd", "kd-init")


def _student(arm: str, teacher: nn.Module, seed: int) -> nn.Module:
    if arm == "kd-init":
        student, _ = drop_layers(teacher, parse_indices("1-2,4-5,7-8"))
        return student.train()
    torch.manual_seed(seed)
    return architectures.resnet20().train()


def run_arm(arm: str, args: argparse.Namespace, teacher: nn.Module) -> dict[str, object]:
    entry = get("fashion-resnet56")
    data, _ = training_data(entry, args.subset, args.seed)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, amp=args.amp, log_every_steps=10)  # fmt: skip
    student = _student(arm, teacher, args.seed)
    loss_fn = None
    if arm != "scratch":
        distill = DistillConfig(temperature=args.temperature, alpha=args.alpha)
        loss_fn = Distiller(student, teacher, distill, data[0][:2])
    run_dir = Path(args.runs) / arm
    trainer = Trainer(student, config, data, run_dir, loss_fn=loss_fn)
    resume = args.resume and checkpoint_exists(trainer.checkpoint_dir)
    start = time.perf_counter()
    state = trainer.fit(resume=resume)
    seconds = time.perf_counter() - start
    student.eval()
    accuracy = entry.evaluate(student)["accuracy"]
    print(f"{arm}: accuracy {accuracy:.4f} after {state.global_step} steps ({seconds:.0f} s)")
    return {
        "accuracy": accuracy,
        "steps": state.global_step,
        "train_seconds_this_run": round(seconds, 1),
        "resumed": resume,
        "bf16_autocast": trainer.use_bf16,
        "params": sum(p.numel() for p in student.parameters()),
        "run_dir": str(run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=int, default=20000, help="training images used")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--runs", default="runs/distill_resnet", help="trainer run directories")
    parser.add_argument("--resume", action="store_true", help="continue killed arms")
    parser.add_argument("--results", default=str(RESULTS), help="where the JSON goes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    entry = get("fashion-resnet56")
    teacher = entry.load()
    teacher_accuracy = entry.evaluate(teacher)["accuracy"]
    print(f"teacher fashion-resnet56: accuracy {teacher_accuracy:.4f}")
    arms = {arm: run_arm(arm, args, teacher) for arm in args.arms.split(",")}
    accuracies = {arm: float(result["accuracy"]) for arm, result in arms.items()}
    gaps = {
        f"{arm}_minus_scratch_pt": round(100 * (accuracy - accuracies["scratch"]), 2)
        for arm, accuracy in accuracies.items()
        if arm != "scratch" and "scratch" in accuracies
    }
    payload = {
        "benchmark": "distill_resnet",
        "command": "python " + shlex.join(sys.argv),
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "teacher": {
            "model": "fashion-resnet56",
            "accuracy": teacher_accuracy,
            "params": sum(p.numel() for p in teacher.parameters()),
        },
        "student_shape": "resnet20",
        "budget": {
            "train_images": args.subset,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "schedule": "one-cycle SGD (TrainConfig defaults), augmentation on",
        },
        "kd": {"temperature": args.temperature, "alpha": args.alpha},
        "eval": "top-1 accuracy on the 10 000 Fashion-MNIST test images",
        "arms": arms,
        "gaps": gaps,
        "target": "kd >= scratch + 0.5 pt",
        "machine": machine_facts(),
    }
    write_json(args.results, payload)
    print(f"{gaps} -> {args.results}")


if __name__ == "__main__":
    main()
