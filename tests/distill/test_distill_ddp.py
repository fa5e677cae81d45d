"""A Distiller with a learned adapter under a real ``torchrun --nproc-per-node 2`` (gloo)."""

import os
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

WORKER = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    from safetensors.torch import save_file
    from torchslim.distill import DistillConfig, Distiller, LayerMatch
    from torchslim.train import TrainConfig, Trainer

    out = sys.argv[1]
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (64,), generator=g)
    inputs = torch.randn(64, 16, generator=g) * 0.5 + labels[:, None].float()
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    torch.manual_seed(2 + int(__import__("os").environ.get("RANK", "0")))  # ranks differ here
    student = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    config = DistillConfig(temperature=2.0, alpha=0.5,
                           matches=(LayerMatch("1", "1", "hidden", 0.5),))
    distiller = Distiller(student, teacher, config, inputs[:2])  # adapter 8 -> 32
    train = TrainConfig(epochs=2, batch_size=16, lr=0.05, amp="off", augment=False,
                        log_every_steps=1)
    trainer = Trainer(student, train, (inputs, labels), out, loss_fn=distiller)
    trainer.fit()
    tensors = {f"student.{k}": v for k, v in student.state_dict().items()}
    tensors.update({f"loss.{k}": v.detach() for k, v in trainer.loss_parameters.items()})
    save_file({k: v.contiguous() for k, v in tensors.items()},
              f"{out}/rank{trainer.dist.rank}.safetensors")
    """
)


def _run(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]


def test_distillation_under_torchrun_keeps_student_and_adapters_in_step(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
          str(script), str(tmp_path / "ddp")])  # fmt: skip
    _run([sys.executable, str(script), str(tmp_path / "single")])
    rank0 = load_file(str(tmp_path / "ddp" / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp" / "rank1.safetensors"))
    single = load_file(str(tmp_path / "single" / "rank0.safetensors"))
    assert any(name.startswith("loss.") for name in rank0)  # the adapter was trained
    for name in rank0:  # student (DDP) and adapter (all-reduced by the trainer) identical
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], single[name], atol=1e-5, rtol=1e-5, msg=name)
