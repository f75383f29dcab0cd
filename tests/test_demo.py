"""`minicnn demo --quick` from a clean directory: every artefact exists, is valid, and the report's
images all resolve; the report renders in headless Chromium where Chromium is installed."""

import json
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("clean")
    result = subprocess.run([sys.executable, "-m", "minicnn.programs", "demo", "--quick", "--out", "out"],
                            cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report.html" in result.stdout
    return cwd / "out"


def test_demo_writes_every_artefact(demo_dir):
    summary = json.loads((demo_dir / "summary.json").read_text())
    assert summary["quick"] is True
    assert any(w in summary["predictions"]["chelsea"][0][0].lower() for w in ("cat", "tabby", "lynx"))
    assert summary["predictions"]["coffee"][0][0] == "espresso"
    assert summary["gradcam_left_mass"]["cat"] > 0.5 > summary["gradcam_left_mass"]["espresso"]
    assert [r["recipe"].split()[0] for r in summary["comparison"]] == [
        "train_from_scratch", "feature_extraction", "feature_extraction_with_augmentation", "fine_tune"]
    for name in ("predictions_chelsea.png", "predictions_coffee.png", "gradcam_cat.png", "gradcam_espresso.png",
                 "activations.png", "filters.png", "augmentations.png", "curves_fine_tune_accuracy.png"):
        with Image.open(demo_dir / name) as image:
            image.verify()  # a valid PNG, fully readable
            assert image.format == "PNG"


def test_report_references_only_files_that_exist(demo_dir):
    page = (demo_dir / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) >= 15
    for src in sources:
        assert "://" not in src and (demo_dir / src).is_file(), src
    assert "test accuracy" in page


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian package `chromium`) is not installed")
def test_report_renders_in_headless_chromium(demo_dir, tmp_path):
    """Chromium loads the report; every <img> must have decoded (naturalWidth > 0)."""
    check = tmp_path / "check.html"
    check.write_text(
        "<!doctype html><html><body><script>"
        "window.onload = () => setTimeout(() => { const f = document.getElementById('r');"
        " const imgs = [...f.contentDocument.images];"
        " document.title = 'images ' + imgs.length + ' broken ' + imgs.filter(i => !i.naturalWidth).length; }, 500);"
        f"</script><iframe id='r' src='{(demo_dir / 'report.html').as_uri()}' width=1200 height=4000></iframe>"
        "</body></html>")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--allow-file-access-from-files",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", check.as_uri()],
                         capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>images (\d+) broken (\d+)</title>", dom.stdout)
    assert title, dom.stderr[-2000:]
    assert int(title.group(1)) >= 15 and title.group(2) == "0"
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,3000",
                    (demo_dir / "report.html").as_uri()], capture_output=True, timeout=120)
    with Image.open(shot) as image:
        assert image.size == (1200, 3000)
        assert len(set(image.convert("L").resize((60, 150)).getdata())) > 20  # not a blank page
