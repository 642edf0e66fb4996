"""Peak training memory against parameter count, one panel per task and patch size."""

from __future__ import annotations

from pathlib import Path

from custom_nets.io.atomic import atomic_output

__all__ = ["plot_memory_vs_parameters"]

GIB = 2**30


def plot_memory_vs_parameters(results: dict, path: str | Path) -> bool:
    """Scatter of the successful training records of ``results`` (ablations left out); False if none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [
        r for r in results["records"]
        if r["kind"] == "train" and r.get("status") == "ok"
        and (r["network"] == "segresmamba" or not r["network"].startswith("segresmamba_"))
    ]
    def key(record: dict) -> tuple:
        return record["task"], record["patch"], record.get("run", 0)

    # a group of SegResMamba alone is an ablation baseline, not a comparison
    groups = [k for k in dict.fromkeys(map(key, records)) if any(r["network"] != "segresmamba" for r in records if key(r) == k)]
    if not groups:
        return False
    measure = records[0].get("peak_measure", "peak memory")
    figure, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.5), squeeze=False)
    for axis, group in zip(axes[0], groups):
        task, patch, _ = group
        for r in (r for r in records if key(r) == group):
            label = r["network"] + (f" [{r['scan_backend']}]" if r.get("scan_backend") else "")
            highlight = r["network"] == "segresmamba"
            axis.scatter(r["parameters"] / 1e6, r["peak_bytes"] / GIB, s=60 if highlight else 30,
                         color="tab:red" if highlight else "tab:blue")
            axis.annotate(label, (r["parameters"] / 1e6, r["peak_bytes"] / GIB), fontsize=7,
                          xytext=(4, 3), textcoords="offset points")
        axis.set_title(f"{task} {patch}^3, batch 1")
        axis.set_xlabel("parameters (M)")
        axis.set_ylabel(f"{measure} (GiB)")
        axis.grid(alpha=0.3)
    environment = results.get("environment", {})
    figure.suptitle(
        f"One training step: memory vs parameters ({environment.get('gpu') or environment.get('cpu', '')}, "
        f"{environment.get('date', '')[:10]})", fontsize=9,
    )
    figure.tight_layout()
    with atomic_output(path, suffix=Path(path).suffix) as temporary:
        figure.savefig(temporary, dpi=110)
    plt.close(figure)
    return True
