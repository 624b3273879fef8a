"""report.html: one self-contained page with every section, loaded in a real headless Chromium with no network."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SECTIONS = ["coco", "pr-curves", "froc", "operating-point", "screening", "confusion", "errors", "gallery"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_opens_offline_with_every_section(trained_run, tiny_data, tmp_path, cli):
    res = cli(["val", "--weights", str(trained_run / "weights" / "best.pt"), "--data", str(tiny_data),
               "--operating-point", "f1", "--conf", "0.01", "--project", str(tmp_path), "--name", "r"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    report = tmp_path / "val" / "r" / "report.html"
    assert f"report: {report}" in res.output
    html = report.read_text()
    assert not re.search(r"""(src|href)=["']https?:""", html), "the page must not fetch anything"
    offline = ["--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
               "--host-resolver-rules=MAP * ~NOTFOUND", "--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([CHROMIUM, *offline, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom.stdout, section
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', dom.stdout)
    assert {"PR curves", "FROC curve", "ROC curve", "confusion matrix", "error gallery"} <= set(images)
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *offline, "--window-size=1200,2400", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
