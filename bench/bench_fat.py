"""Fault-aware training (seed 001) on the embedded default: does it help, and what does it cost?

1. Accuracy: the digits CNN (8-bit Brevitas) trained clean and trained with random activation
   faults (`qfault.train.train_fat`, the documented schedule) for several training seeds each,
   then evaluated under 0-20 % random activation faults (several fault draws per point): mean ±
   std over the training seeds, and the clean accuracies of both (goal: FAT higher under 5-20 %
   faults, clean accuracy within 1 point). Writes a table and `bench/out/fat_accuracy.png`.
2. Speed, side by side in one run (median of interleaved rounds):
   * one training step of the CNV model (w2a2, batch 64) with 5 % activation faults on every
     quant activation vs the clean QAT step (goal <= 1.15x);
   * evaluation with statistics tracking vs the clean evaluation (goal <= 1.2x).

Run: .venv/bin/python bench/bench_fat.py [--seeds 3] [--epochs 15] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from qfault.data import build_dataset, build_model
from qfault.injection import InjectSpec, inject
from qfault.train import FatConfig, evaluate_accuracy, train_fat


def _train(seed: int, faults: bool, epochs: int, probability: float):
    config = FatConfig.from_dict({
        "name": "bench", "seed": {"value": seed}, "training": {"epochs": epochs, "batch_size": 64},
        "optimizer": {"learning_rate": 0.01},
        "fault_injection": {"enabled": faults, "probability": probability, "apply_during": "train",
                            "step_interval": 1.0, "track_statistics": False}})
    torch.manual_seed(seed)
    model = build_model("digits_cnn")
    train_set, val_set = build_dataset({"name": "digits", "train": True}), build_dataset("digits")
    train_fat(model, train_set, val_set, config, progress=False)
    return model.eval(), val_set


def _faulty_accuracy(model, val_set, probability: float, draws: int) -> float:
    if probability == 0:
        return evaluate_accuracy(model, val_set)
    values = []
    for draw in range(draws):
        spec = InjectSpec(fault={"type": "random_value", "probability": probability}, site="output", seed=1000 + draw,
                          track_statistics=False)
        with inject(model, [spec]):
            values.append(evaluate_accuracy(model, val_set))
    return statistics.mean(values)


def accuracy_table(seeds: int, epochs: int, draws: int, train_probability: float, out: Path) -> None:
    probabilities = [0.0, 5.0, 10.0, 15.0, 20.0]
    results = {False: [], True: []}
    start = time.monotonic()
    for faults in (False, True):
        for seed in range(seeds):
            model, val_set = _train(seed, faults, epochs, train_probability)
            results[faults].append([_faulty_accuracy(model, val_set, p, draws) for p in probabilities])
    print(f"\n[1] digits CNN, {seeds} training seeds x {epochs} epochs each; FAT with {train_probability} % random "
          f"activation faults on every step; evaluated under random activation faults ({draws} draws per point); "
          f"{time.monotonic() - start:.0f} s")
    print(f"{'eval faults':>12} | {'trained clean':>16} | {'trained with faults':>20} | {'FAT - clean':>11}")
    print("-" * 70)
    rows = []
    for i, p in enumerate(probabilities):
        clean = [r[i] for r in results[False]]
        fat = [r[i] for r in results[True]]
        mc, sc = statistics.mean(clean), statistics.pstdev(clean)
        mf, sf = statistics.mean(fat), statistics.pstdev(fat)
        rows.append((p, mc, sc, mf, sf))
        print(f"{p:>11.0f}% | {mc:>8.2f} ± {sc:5.2f} | {mf:>11.2f} ± {sf:5.2f} | {mf - mc:>+10.2f}")
    gap = abs(rows[0][1] - rows[0][3])
    better = all(r[3] > r[1] for r in rows[1:])
    print(f"goal: FAT higher at every faulty point: {'PASS' if better else 'MISS'}; clean accuracies within "
          f"1 point: {gap:.2f} -> {'PASS' if gap <= 1.0 else 'MISS'}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for index, label in ((1, "trained clean"), (3, "trained with faults (FAT)")):
        means = [r[index] for r in rows]
        stds = [r[index + 1] for r in rows]
        ax.errorbar(probabilities, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.set_xlabel("activation fault probability at evaluation (%)")
    ax.set_ylabel(f"top-1 accuracy (%), mean ± std over {seeds} seeds")
    ax.set_title("digits CNN: fault-aware training")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "fat_accuracy.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'fat_accuracy.png'}")


def _median_ratio(clean, faulty, rounds: int) -> tuple[float, float, float]:
    ratios, clean_times, faulty_times = [], [], []
    clean()
    faulty()
    for _ in range(rounds):
        t0 = time.perf_counter()
        clean()
        t1 = time.perf_counter()
        faulty()
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
        clean_times.append(t1 - t0)
        faulty_times.append(t2 - t1)
    return statistics.median(ratios), statistics.median(clean_times), statistics.median(faulty_times)


def _faults(statistics: bool) -> InjectSpec:
    """5 % random-value faults on every quantized activation (seed 001's default probability)."""
    return InjectSpec(fault={"type": "random_value", "probability": 5.0}, site="output", seed=0,
                      track_statistics=statistics)


def _toggled(handle, work):
    """``enabled -> run``: a run of ``work`` with ``handle``'s faults on or off."""
    def make(enabled: bool):
        def run():
            handle.enable() if enabled else handle.disable()
            work()
        return run
    return make


def _line(what: str, ratio: float, clean: float, faulty: float, goal: float, faulty_label: str) -> str:
    return (f"{what}: clean {clean * 1e3:.1f} ms, {faulty_label} {faulty * 1e3:.1f} ms -> {ratio:.3f}x "
            f"(goal <= {goal}x: {'PASS' if ratio <= goal else 'MISS'})")


def speed(rounds: int) -> None:
    torch.manual_seed(0)
    model = build_model("quant_cnv", weight_bit_width=2, act_bit_width=2)
    x = torch.rand(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    handle = inject(model, [_faults(statistics=False)])

    def step():
        optimizer.zero_grad()
        out = model(x)
        torch.nn.functional.cross_entropy(getattr(out, "value", out), y).backward()
        optimizer.step()

    model.train()
    make = _toggled(handle, step)
    ratio, clean, faulty = _median_ratio(make(False), make(True), rounds)
    print("\n[2] " + _line(f"quant_cnv w2a2, batch 64, 3x32x32, {handle.num_sites} activation sites, Adam step",
                           ratio, clean, faulty, 1.15, "5 % faults"))
    handle.remove()

    model.eval()  # the same model evaluated (the seed's evaluate runs CNV on CIFAR-10), statistics on
    stats = inject(model, [_faults(statistics=True)])
    batches = [torch.rand(64, 3, 32, 32) for _ in range(4)]

    def cnv_evaluation():
        with torch.no_grad():
            for batch in batches:
                model(batch)

    make = _toggled(stats, cnv_evaluation)
    ratio, clean, faulty = _median_ratio(make(False), make(True), max(3, rounds // 3))
    print("    " + _line("quant_cnv w2a2 evaluation (4 batches of 64)", ratio, clean, faulty, 1.2,
                         "5 % faults with statistics"))
    stats.remove()

    val = build_dataset({"name": "digits"})
    digits = build_model("digits_cnn").eval()
    stats = inject(digits, [_faults(statistics=True)])
    make = _toggled(stats, lambda: evaluate_accuracy(digits, val))
    ratio, clean, faulty = _median_ratio(make(False), make(True), rounds)
    print("    " + _line("digits CNN evaluation (450 images)", ratio, clean, faulty, 1.2, "5 % faults with statistics"))
    stats.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--train-probability", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="2 seeds x 3 epochs, 5 rounds")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.epochs, args.draws, args.rounds = 2, 3, 1, 5
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    accuracy_table(args.seeds, args.epochs, args.draws, args.train_probability, Path(__file__).parent / "out")
    speed(args.rounds)


if __name__ == "__main__":
    main()
