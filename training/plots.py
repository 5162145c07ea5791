"""The loss curve an admin gets at the end of a run (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from training.evaluate import EvalReport
from training.sft import StepLog


def loss_plot(log: list[StepLog], evals: list[tuple[int, EvalReport]], path: Path,
              title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")  # headless servers; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        steps = [s.step for s in log]
        ax.plot(steps, [s.loss for s in log], label="SFT loss (assistant tokens)", color="tab:blue")
        if any(s.kl for s in log):
            ax.plot(steps, [s.kl for s in log], label="KL to base on replay", color="tab:orange")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if evals:
            # Gate metrics share the x axis: the admin sees where identity and retention stood.
            right = ax.twinx()
            at = [step for step, _ in evals]
            right.plot(at, [r.persona_score for _, r in evals], "o--", color="tab:green",
                       label="persona score")
            right.plot(at, [r.retention for _, r in evals], "s--", color="tab:red",
                       label="retention")
            right.set_ylim(-0.05, 1.05)
            right.set_ylabel("evaluation")
            lines = ax.get_legend_handles_labels()
            more = right.get_legend_handles_labels()
            ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
        else:
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(title or "training")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
