"""docs/results.md generation: tables, gap-closed fractions and plots come from the JSON files."""

import json

from training.report import write_report


def probe_file(folder, name, top1):
    (folder / f"probe-{name}.json").write_text(
        json.dumps({"top1": dict(zip(["conv1", "conv2", "conv3", "conv4", "conv5"], top1))})
    )


def test_report_tables_gap_closed_and_plots(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    probe_file(results, "tiny64-random-tin", [0.10, 0.10, 0.10, 0.10, 0.10])
    probe_file(results, "tiny64-supervised-tin", [0.20, 0.30, 0.50, 0.50, 0.50])
    probe_file(results, "tiny64-ours-tin", [0.20, 0.20, 0.40, 0.30, 0.10])
    text = write_report(results, tmp_path / "results.md")
    # ours closes 1.0 / 0.5 / 0.75 / 0.5 / 0.0: mean over conv2..conv5 = 0.4375
    assert "| ours (shipped model) (`probe-tiny64-ours-tin.json`) | 20.00 (1.00) | 20.00 (0.50) | 40.00 (0.75)" in text
    assert "**0.438**" in text
    assert (results / "probe-tiny-imagenet.png").stat().st_size > 1000
    assert "![" in text and "(results/probe-tiny-imagenet.png)" in text
    # tables whose runs are missing say so instead of inventing rows
    assert "Not measured yet: `probe-tiny64-random-c10.json`" in text
    assert not (results / "probe-cifar10-transfer.png").exists()
