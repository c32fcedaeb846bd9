"""The demo's headline: the shared metrics table (percent) and links into the run folder."""

from ovdet.demo import demo_report, print_headline
from ovdet.runs import RunPaths

SUMMARY = {"AP50": {"base": 0.6502, "novel": 0.3977, "all": 0.5871, "hm": -1.0},
           "AP": {"base": 0.4125, "novel": 0.2031, "all": 0.3601, "hm": 0.2722},
           "seconds": {"synth": 1.5, "train": 12.0}}


def test_report_holds_the_table_in_percent_and_relative_links(tmp_path):
    report = demo_report(SUMMARY, RunPaths(tmp_path / "demo"))
    assert "| AP50 | 65.02 | 39.77 | 58.71 | - |" in report and "| AP | 41.25 | 20.31 | 36.01 | 27.22 |" in report
    assert "[eval report](eval/report.md)" in report and "`eval/metrics.json`" in report
    assert "`train/metrics.jsonl`" in report and "`shards/manifest.json`" in report
    assert "Stage times (s): synth 1.5, train 12.0" in report


def test_printed_headline_names_the_metrics_and_stage_times(capsys):
    print_headline(SUMMARY)
    printed = capsys.readouterr().out
    assert "AP50" in printed and "HM" in printed and "41.25" in printed
    assert "stage seconds: synth 1.5, train 12.0" in printed
