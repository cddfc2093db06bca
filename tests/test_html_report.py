"""The HTML report (qcompile/html_report.py, `qcompile report`): every section is there, only a fixed set of
tags is produced (no script, nothing fetched), hostile node names are escaped, CLI errors are one line, and
the page renders in a real headless Chromium without console messages, as a non-blank screenshot."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qcompile import compile_model
from qcompile.cli import main
from qcompile.config import AccuracyBudget, CompileConfig
from qcompile.errors import ReportError
from qcompile.report.html import render_html
from tests._analysis_models import SENSITIVE_NODE, outlier_cnn, outlier_samples

ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "p", "div", "span", "i", "b",
                "code", "table", "thead", "tbody", "tr", "th", "td", "details", "summary", "ul", "li", "svg", "g",
                "rect", "line", "text"}
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
WINDOW = (1200, 2000)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attributes.update(name for name, _ in attrs)

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


@pytest.fixture(scope="module")
def fallback_report() -> dict:
    """A compile report with every section: per-layer analysis, sensitivity, a fallback, histograms."""
    result = compile_model(outlier_cnn(), outlier_samples(12, 1),
                           CompileConfig(accuracy_budget=AccuracyBudget(min_cosine=0.9999)),
                           eval_data=outlier_samples(12, 2))
    data = json.loads(result.report.to_json())
    assert data["fallback"]["nodes"]
    return data


def test_every_section_with_only_safe_tags(fallback_report):
    page = render_html(fallback_report)
    parsed = _parse(page)
    assert parsed.tags <= ALLOWED_TAGS, parsed.tags - ALLOWED_TAGS
    assert not any(a.startswith("on") for a in parsed.attributes)
    without_namespace = page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "http://" not in without_namespace and "https://" not in without_namespace   # nothing to fetch
    text = " ".join(parsed.text)
    for heading in ("Summary", "Accuracy fallback", "Per-layer output SQNR", "Most sensitive layers",
                    "Activation ranges of the worst layers", "Nodes", "Pass timeline", "Warnings"):
        assert heading in text
    assert SENSITIVE_NODE in text and "fell back to float" in text and "Search trials" in text
    # one bar per layer in the SQNR chart, one histogram per reported tensor
    layers = fallback_report["layers"]
    assert page.count("sensitivity rank") >= len(layers["nodes"])
    assert page.count('aria-label="code histogram"') == len(layers["histograms"])


def test_model_strings_are_escaped(fallback_report):
    data = json.loads(json.dumps(fallback_report).replace(SENSITIVE_NODE, HOSTILE.replace('"', "'")))
    data["warnings"] = [HOSTILE]
    data["input"]["path"] = HOSTILE
    page = render_html(data)
    parsed = _parse(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    assert HOSTILE in " ".join(parsed.text) or HOSTILE in "".join(parsed.text)


def test_a_report_without_analysis_or_fallback_renders(tiny_cnn_case):
    model_path, calib_dir = tiny_cnn_case
    from qcompile.config import AnalysisConfig, LayerAnalysis
    data = json.loads(compile_model(model_path, calib_dir, CompileConfig(
        analysis=AnalysisConfig(layers=LayerAnalysis.NONE))).report.to_json())
    text = " ".join(_parse(render_html(data)).text)
    assert "No accuracy budget was set" in text and "No per-layer analysis" in text


def test_not_a_report():
    with pytest.raises(ReportError):
        render_html({"nodes": []})


def test_cli_report(tmp_path, fallback_report):
    report = tmp_path / "m.qdq.report.json"
    report.write_text(json.dumps(fallback_report))
    runner = CliRunner()
    result = runner.invoke(main, ["report", str(report)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.qdq.report.html").read_text().startswith("<!DOCTYPE html>")
    result = runner.invoke(main, ["report", str(report), "-o", str(tmp_path / "other.html")])
    assert result.exit_code == 0 and (tmp_path / "other.html").is_file()

    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[]")
    for args, message in ((["report", str(tmp_path / "missing.json")], "cannot read report"),
                          (["report", str(tmp_path / "bad.json")], "not valid JSON"),
                          (["report", str(tmp_path / "list.json")], "not a qcompile compile report"),
                          (["report", str(report), "-o", str(report)], "refusing to overwrite")):
        failed = runner.invoke(main, args)
        assert failed.exit_code == 2, failed.output
        assert failed.output.startswith("error: ") and message in failed.output and failed.output.count("\n") == 1


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium_command(browser: str, profile: Path, *args: str) -> list[str]:
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]


def test_renders_in_headless_chromium(tmp_path, fallback_report):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the browser check needs it")
    page = tmp_path / "report.html"
    page.write_text(render_html(fallback_report), encoding="utf-8")
    screenshot = tmp_path / "report.png"
    run = subprocess.run(_chromium_command(browser, tmp_path / "profile", f"--screenshot={screenshot}",
                                           f"--window-size={WINDOW[0]},{WINDOW[1]}", page.as_uri()),
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console                      # no script errors, no blocked loads (the page has a CSP)

    from PIL import Image
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000
    with Image.open(screenshot) as image:
        assert image.size == WINDOW
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50 and pixels.std() > 10     # text, bars and tables, not a blank page
    blue = np.all(np.abs(pixels - np.array([0x4a, 0x78, 0xc2])) < 8, axis=-1)
    assert blue.sum() > 500                             # the SQNR bars are drawn

    dom = subprocess.run(_chromium_command(browser, tmp_path / "profile2", "--dump-dom", page.as_uri()),
                         capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0 and "qcompile report" in dom.stdout and SENSITIVE_NODE in dom.stdout
