"""Command line: ``python -m custom_nets <command>`` (also installed as ``segresmamba``).

Commands:
    summary   parameters and MACs per part for the paper's three settings
    overfit   fit a small SegResMamba to a crop of the shipped CT (a wiring sanity check)
    demo      the main job on the shipped CT
    predict   segment NIfTI, NRRD, DICOM series or BraTS case folders with a bundle (or --weights); --tta,
              --save_probabilities, --statistics, --preview (see `python -m custom_nets predict --help`)
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


def _positive(name: str, value, kind=int):
    """``value`` as a positive ``kind``: command line values become bundle config overrides, so they are parsed
    into their type and range first (a string would be evaluated by the config parser)."""
    from .bundle.options import Number, ValueRejected
    from .io import InputError

    try:
        return Number(kind, 0, low_open=True).parse(name, value)
    except ValueRejected as e:
        raise InputError(f"--{name} must be {e.expected}, not {e.value!r}") from None


def demo(
    output_dir: str = "outputs/demo",
    epochs: int = 80,
    crops_per_epoch: int = 2,
    patch: int | None = None,
    spacing: float | None = None,
) -> None:
    """Train the fast spleen bundle on the shipped CT, evaluate it, segment the CT, write the mask, Dice and a PNG
    under ``output_dir`` (below the current folder unless absolute). ``--patch`` and ``--spacing`` replace the
    bundle's 64^3 patches and 3 mm voxels; ``--epochs 1 --spacing 6`` is a quick check."""
    from .demo import sample_case
    from .demo.spleen import run_demo
    from .io import InputError

    try:
        sample_case()
    except FileNotFoundError as e:
        raise InputError(str(e)) from None
    run_demo(
        output_dir=str(output_dir),
        epochs=_positive("epochs", epochs),
        crops_per_epoch=_positive("crops_per_epoch", crops_per_epoch),
        patch=None if patch is None else _positive("patch", patch),
        spacing=None if spacing is None else _positive("spacing", spacing, float),
    )


def main() -> None:
    from .cli import predict_command, user_errors_as_exit

    fire.Fire({"summary": summary, "overfit": overfit, "demo": user_errors_as_exit(demo), "predict": predict_command})


if __name__ == "__main__":
    main()
