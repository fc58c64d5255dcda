"""The learning-curve fit: recovers a known curve and the size where doubling stops paying."""

from pathlib import Path

import numpy as np
import pytest

from shipyard.training.curve import fit_curve, plot, power_law


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_recovers_a_known_curve_and_its_saturation_point(higher_is_better: bool) -> None:
    a, b, c, min_gain = 0.9, 0.8, 0.5, 0.002
    rows = [500, 1000, 2000, 4000, 8000, 16000]
    sign = 1 if higher_is_better else -1
    rng = np.random.default_rng(0)
    scores = [
        float(sign * power_law(np.array(float(n)), a, b, c) + rng.normal(0, 1e-4)) for n in rows
    ]
    out = fit_curve(rows, scores, higher_is_better, min_gain)
    truth = (b * (1 - 2**-c) / min_gain) ** (1 / c)  # b m^-c (1 - 2^-c) = min_gain
    assert out["saturation_rows"] == pytest.approx(truth, rel=0.1)
    assert out["fit"]["c"] == pytest.approx(c, rel=0.1)
    assert out["ceiling"] == pytest.approx(sign * a, abs=0.01)
    gain = b * (16000**-c - 32000**-c)
    assert out["gain_if_doubled"] == pytest.approx(gain, rel=0.1)


def test_a_flat_curve_has_already_stopped_paying() -> None:
    rows = [500, 1000, 2000, 4000]
    out = fit_curve(rows, [0.8, 0.8001, 0.8, 0.8001], True, 0.002)
    assert out["saturation_rows"] is None or out["saturation_rows"] <= 4000


def test_a_curve_that_keeps_climbing_has_no_saturation_point() -> None:
    """Gains that do not shrink (log-linear) fit a flat exponent: saturation is out of reach and
    says so (None), instead of overflowing."""
    rows = [500, 1000, 2000, 4000, 8000, 16000]
    out = fit_curve(rows, [0.5 + 0.05 * float(np.log2(n)) for n in rows], True, 0.002)
    assert out["saturation_rows"] is None
    assert out["gain_if_doubled"] is not None and out["gain_if_doubled"] > 0.002


@pytest.mark.parametrize("saturation", [None, 3000, 10**30])
def test_the_plot_is_drawn_wherever_the_fit_puts_saturation(
    tmp_path: Path, saturation: int | None
) -> None:
    """A nearly flat fit can put saturation at 10^30 rows (an int past int64): the plot is still
    drawn, up to 100x the data (a CI run of the learning-curve job failed in np.geomspace)."""
    report = {
        "model": "m", "metric": "auc", "higher_is_better": True,
        "points": [{"rows": r, "auc": 0.8 - 1 / r, "std": 0.01} for r in (100, 200, 400, 800)],
        "curve": {"fit": {"a": 0.8, "b": 1.0, "c": 1.0}, "saturation_rows": saturation},
    }  # fmt: skip
    plot(report, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


REPO = Path(__file__).resolve().parents[2]


def test_the_curve_section_has_defaults_and_a_tuning_config_is_accepted() -> None:
    from shipyard.config.jobs import TrainJobConfig, load_curve_config

    demo = load_curve_config(REPO / "jobs" / "configs" / "demo.yaml")
    assert demo.curve.fractions == [0.05, 0.1, 0.2, 0.4, 0.7, 1.0] and demo.curve.repeats == 2
    tuned = load_curve_config(REPO / "jobs" / "configs" / "tune.yaml", {"curve.repeats": 1})
    assert tuned.curve.repeats == 1
    # What trains is the training config within: no curve or tune section left in it.
    train = tuned.train_config()
    assert type(train) is TrainJobConfig and train.model == tuned.model


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--fractions", "0.1,1.5"], "curve.fractions"),
        (["--fractions", "0.1,half"], "--fractions"),
        (["--repeats", "0"], "curve.repeats"),
        (["--min-gain", "-1"], "curve.min_gain"),
        (["--set", "curve.fractions=[]"], "curve.fractions"),
        (["--set", "curve.unknown=1"], "curve.unknown"),
    ],
)
def test_a_bad_curve_setting_exits_2_naming_it_before_ray_starts(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.learning_curve import main
    from shipyard.contract import EXIT_INVALID

    config = str(REPO / "jobs" / "configs" / "demo.yaml")
    assert main(["--config", config, *flags, "--address", "nowhere:1"]) == EXIT_INVALID
    assert named in capsys.readouterr().err
