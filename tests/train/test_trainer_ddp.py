"""The trainer under a real ``torchrun --nproc-per-node 2`` (gloo), and killed by SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import torch
from safetensors.torch import load_file

from torchslim.train import read_metrics

# One script for every run: a tiny MLP on separable synthetic data; it writes its rank's final
# weights next to the run's metrics. No BatchNorm (its statistics are per rank under DDP) and, for
# the DDP comparison, no dropout (each rank draws its own masks); the kill test keeps dropout to
# show the RNG state is resumed too.
WORKER = textwrap.dedent(
    """
    import sys, time
    import torch
    from torch import nn
    from safetensors.torch import save_file
    from torchslim.train import TrainConfig, Trainer

    out, accum = sys.argv[1], int(sys.argv[2])
    sleep, dropout = float(sys.argv[3]), float(sys.argv[4])
    resume = sys.argv[5:] == ["resume"]
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (96,), generator=g)
    inputs = torch.randn(96, 16, generator=g) * 0.5 + labels[:, None].float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 3))
    config = TrainConfig(epochs=3, batch_size=20, lr=0.05, amp="off", augment=False,
                         checkpoint_every_steps=2, log_every_steps=1, grad_accum_steps=accum)

    def loss_fn(m, x, y):
        time.sleep(sleep)
        return nn.functional.cross_entropy(m(x), y)

    trainer = Trainer(model, config, (inputs, labels), out, loss_fn=loss_fn)
    trainer.fit(resume=resume)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              f"{out}/rank{trainer.dist.rank}.safetensors")
    """
)


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _worker(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return str(script)


def _run(args, timeout=120):
    done = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def _weights(path):
    return load_file(str(path))


def _assert_close(a, b, atol):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


# Not marked slow: the acceptance tests for DDP and resume (~10 s each, quiet CPU).
def test_torchrun_two_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    script = _worker(tmp_path)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _run([sys.executable, script, str(single), "1", "0", "0"])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    _run([*torchrun, "--nproc-per-node", "2", script, str(ddp), "1", "0", "0"], timeout=240)

    rank0, rank1 = _weights(ddp / "rank0.safetensors"), _weights(ddp / "rank1.safetensors")
    for name in rank0:  # DDP keeps the replicas bit-identical
        assert torch.equal(rank0[name], rank1[name]), name
    _assert_close(_weights(single / "rank0.safetensors"), rank0, atol=1e-5)
    single_curve = [r["loss"] for r in read_metrics(single / "metrics.jsonl")]
    ddp_curve = [r["loss"] for r in read_metrics(ddp / "metrics.jsonl")]
    assert len(ddp_curve) == len(single_curve) == 15  # 3 epochs x ceil(96 / 20) steps
    torch.testing.assert_close(torch.tensor(ddp_curve), torch.tensor(single_curve), atol=1e-5,
                               rtol=1e-5)  # fmt: skip
    assert single_curve[-1] < single_curve[0] * 0.7  # it learned, and both curves show it
    assert not (ddp / "rank1").exists()  # only rank 0 wrote the run's files
    assert sorted(p.name for p in ddp.iterdir()) == [
        "checkpoint", "metrics.jsonl", "rank0.safetensors", "rank1.safetensors",
    ]  # fmt: skip


def _position(run):
    for folder in (run / "checkpoint", run / "checkpoint.old"):
        try:
            return json.loads((folder / "position.json").read_text())
        except (OSError, ValueError):
            continue
    return None


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    script = _worker(tmp_path)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _run([sys.executable, script, str(reference), "1", "0", "0.1"])
    process = subprocess.Popen(
        [sys.executable, script, str(killed), "1", "0.15", "0.1"], env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        position = _position(killed)
        if position and position["global_step"] >= 6:  # epoch 2 of 3 (5 steps an epoch)
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    position = _position(killed)
    assert position is not None and 0 < position["global_step"] < 15, position
    assert not (killed / "rank0.safetensors").exists()  # it really died before the end
    _run([sys.executable, script, str(killed), "1", "0", "0.1", "resume"])
    _assert_close(
        _weights(reference / "rank0.safetensors"),
        _weights(killed / "rank0.safetensors"),
        atol=0,
    )
    curve = [r["loss"] for r in read_metrics(killed / "metrics.jsonl")]
    assert curve == [r["loss"] for r in read_metrics(reference / "metrics.jsonl")]
