"""benchmarks/restarts.py: the threshold sweep keeps each sample's lowest-energy run only above the threshold."""
from __future__ import annotations

import torch


def test_pick_keeps_the_lowest_energy_run_above_the_threshold_only(benchmark_script):
    pick = benchmark_script("restarts").pick
    energies = torch.tensor([[0.5, 0.01, 0.3], [0.2, 0.001, 0.4], [0.1, 0.002, 0.35]])  # (1 + K runs, B samples)
    metrics = {"err": torch.tensor([[5.0, 1.0, 3.0], [2.0, 0.5, 4.0], [1.0, 0.7, 3.5]])}
    chosen, redo = pick(energies, metrics, threshold=0.05)
    assert chosen["err"].tolist() == [1.0, 1.0, 3.0]  # sample 1 is below the threshold: its first run stays
    assert abs(redo - 200 / 3) < 1e-4
    everything, redo = pick(energies, metrics, threshold=0.0)
    assert everything["err"].tolist() == [1.0, 0.5, 3.0] and redo == 100.0
