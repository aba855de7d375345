"""DistributedDataParallel under torchrun, on the CPU (gloo), two processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import torch
    from nucdata_models import CrossTrainer, TrainConfig
    from nucdata_models.study.synthetic import make_synthetic_data

    torch.set_num_threads(1)
    data = make_synthetic_data(per_dataset=50, size=16)
    trainer = CrossTrainer(TrainConfig(epochs={"A": 1, "B": 1, "C": 1}, batch_size=16))
    result = trainer.fit(data)
    # Every rank ends with the same weights: DDP averaged the gradients.
    weights = torch.cat([p.detach().flatten() for p in trainer.base.parameters()])
    gathered = [torch.zeros_like(weights) for _ in range(trainer.world)]
    torch.distributed.all_gather(gathered, weights)
    assert all(torch.allclose(gathered[0], w) for w in gathered)
    if trainer.rank == 0:
        print("DDP-OK", trainer.world)
""")


@pytest.mark.skipif(shutil.which("torchrun") is None and not hasattr(sys, "executable"), reason="no torchrun")
def test_two_processes_stay_in_step(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "DDP-OK 2" in run.stdout
