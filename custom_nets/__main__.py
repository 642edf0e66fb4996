"""Command line: ``python -m custom_nets <command>`` (also installed as ``segresmamba``).

Commands:
    summary   parameters and MACs per part for the paper's three settings
    overfit   fit a small SegResMamba to a crop of the shipped CT (a wiring sanity check)
    demo      the main job on the shipped CT
    predict   segment NIfTI, NRRD or DICOM series with a bundle's weights
"""

from __future__ import annotations

import fire


def summary(feature_size: int = 48) -> None:
    """Print parameters and GMACs per part for Spleen 1->2 at 96^3, BraTS 4->3 and BTCV 1->14 at 128^3."""
    from .summary import summary_table

    print(summary_table(feature_size=feature_size))


def overfit(steps: int = 150, crop: int = 64, feature_size: int = 8) -> None:
    """Fit a small SegResMamba to a crop around the spleen of the shipped CT and print the Dice reached."""
    from .demo.overfit import overfit as run

    result = run(steps=steps, crop=crop, feature_size=feature_size)
    print(
        f"Dice {result['dice']:.4f} on the {crop}^3 training crop after {result['steps']} steps "
        f"({result['seconds']:.0f} s): agreement with TotalSegmentator's spleen label on the data it was fit to."
    )


def demo(output_dir: str = "outputs/demo", epochs: int = 80) -> None:
    """Train the spleen bundle on the shipped CT, evaluate it, segment the CT, write the mask, Dice and a PNG."""
    from .demo.spleen import run_demo

    run_demo(output_dir=output_dir, epochs=epochs)


def main() -> None:
    from .cli import predict_command

    fire.Fire({"summary": summary, "overfit": overfit, "demo": demo, "predict": predict_command})


if __name__ == "__main__":
    main()
